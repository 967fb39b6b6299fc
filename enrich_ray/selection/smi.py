"""Targeted selection (CLINICAL): submodular mutual information with a query set of exemplars.

Kernel s = (cos + 1) / 2 in [0, 1]. A is the set chosen so far (it starts empty; the seed
rows are ranked first and never picked), Q the query rows:
- FLVMI:    Σ_q max_a s(q,a) + η Σ_a max_q s(a,q)                    (needs N x |Q| only)
- GCMI:     2λ Σ_a Σ_q s(a,q)                              (modular: top k by Σ_q s(a,q))
- FLQMI:    Σ_{i∈P} min(max_a s(i,a), η max_q s(i,q))          (P: the pool, see below)
- LogDetMI: log det(S_A + λI) − log det(S_A + λI − η² S_AQ (S_Q + λI)⁻¹ S_AQᵀ)
FLQMI and LogDetMI need the data kernel, so they rank a pool P of the `pool` frames most
similar to any query frame. FLVMI and FLQMI are maximised by lazy greedy (their gains only
shrink); LogDetMI is not submodular, so its gains are all kept exact by incremental Cholesky
updates (as cheap as lazy greedy on the pool). Ties go to the lowest row.
"""
from __future__ import annotations

import heapq
import logging
from collections.abc import Callable
from typing import Literal

import numpy as np

from enrich_ray.selection.enrich import max_similarity
from enrich_ray.selection.ranking import Ranking, check_embeddings, check_k, check_seed

log = logging.getLogger(__name__)

Function = Literal["flvmi", "gcmi", "flqmi", "logdetmi"]


def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """s = (cos + 1) / 2 between the unit rows of a and of b, float64."""
    return (a.astype(np.float64) @ b.astype(np.float64).T + 1.0) / 2.0


def smi_ranking(
    embeddings: np.ndarray,
    seed: np.ndarray | list[int],
    query: np.ndarray | list[int],
    k: int | None = None,
    *,
    function: Function = "flvmi",
    eta: float = 1.0,
    lam: float = 1.0,
    pool: int = 2000,
) -> Ranking:
    """Seeds first, then frames by greedy SMI gain with the query rows; score = the pick's gain.

    `eta` is selection.smi_eta for FLVMI and FLQMI (>= 0) and selection.logdet_eta for LogDetMI
    (in [0, 1]: above 1 its second kernel is indefinite). FLQMI and LogDetMI rank only the `pool`
    frames nearest the query; when that leaves frames unranked, a warning and `info` say so.
    """
    x = check_embeddings(embeddings)
    n = x.shape[0]
    seed = check_seed(seed, n)
    query = _check_query(query, n)
    if eta < 0 or lam <= 0:
        raise ValueError(f"smi needs eta >= 0 and lambda > 0, got eta={eta}, lambda={lam}")
    if function == "logdetmi" and eta > 1:
        raise ValueError(f"LogDetMI needs 0 <= eta <= 1 (selection.logdet_eta), got {eta}: above 1 its kernel is indefinite")
    candidates = np.setdiff1d(np.arange(n, dtype=np.int64), seed)
    wanted = check_k(k, n, seed.size)
    info: dict = {}
    if function in ("flqmi", "logdetmi"):
        if pool < 1:
            raise ValueError(f"selection.smi_pool must be at least 1, got {pool}")
        candidates = query_pool(x, query, candidates, pool)
        if wanted > candidates.size:
            info = {"pool": int(pool), "unranked": int(wanted - candidates.size)}
            log.warning(
                "smi:%s ranks only the pool of the %d frames nearest the query (selection.smi_pool): %d of the %d "
                "frames asked for are left unranked; raise selection.smi_pool to rank more",
                function, candidates.size, info["unranked"], wanted,
            )
    k = min(wanted, candidates.size)
    if function == "flvmi":
        picks, gains = lazy_greedy(FLVMI(x[candidates], x[query], eta).gains, candidates.size, k)
    elif function == "gcmi":
        total = 2.0 * lam * kernel(x[candidates], x[query]).sum(axis=1)
        picks = np.argsort(-total, kind="stable")[:k]
        gains = total[picks]
    elif function == "flqmi":
        picks, gains = lazy_greedy(FLQMI(x[candidates], x[query], eta).gains, candidates.size, k)
    elif function == "logdetmi":
        picks, gains = logdet_greedy(x[candidates], x[query], eta, lam, k)
    else:
        raise ValueError(f"unknown smi function {function!r}: choose flvmi, gcmi, flqmi or logdetmi")
    return Ranking(
        ranker=f"smi:{function}",
        order=np.concatenate([seed, candidates[picks]]),
        score=np.concatenate([np.full(seed.size, np.nan), gains]).astype(np.float32),
        n_seed=seed.size,
        info=info,
    )


def _check_query(query: np.ndarray | list[int], n: int) -> np.ndarray:
    """Query rows as int64: at least one, in range, no repeats."""
    q = np.asarray(query)
    if q.ndim != 1 or q.size == 0 or not np.issubdtype(q.dtype, np.integer):
        raise ValueError("targeted selection needs the query set as a non-empty list of row indices")
    if q.min() < 0 or q.max() >= n:
        raise ValueError(f"query rows must lie in [0, {n}), got {int(q.min())}..{int(q.max())}")
    if np.unique(q).size != q.size:
        raise ValueError("query rows repeat a row")
    return q.astype(np.int64)


def query_pool(x: np.ndarray, query: np.ndarray, candidates: np.ndarray, size: int) -> np.ndarray:
    """The `size` candidates most similar to any query row (ascending rows; ties: lowest row)."""
    near = max_similarity(x, query)[candidates]
    keep = np.argsort(-near, kind="stable")[:size]
    return np.sort(candidates[keep])


class FLVMI:
    """Facility-location variant MI: gains from the running max similarity of each query row."""

    def __init__(self, data: np.ndarray, query: np.ndarray, eta: float) -> None:
        self.sim = kernel(data, query)  # (n, |Q|)
        self.modular = eta * self.sim.max(axis=1)
        self.best = np.zeros(query.shape[0])  # max_a s(q, a); 0 for the empty set

    def gains(self, rows: np.ndarray, chosen: int | None = None) -> np.ndarray:
        """Gains of adding each of `rows`; with `chosen`, first add that row to A."""
        if chosen is not None:
            np.maximum(self.best, self.sim[chosen], out=self.best)
        return np.maximum(self.sim[rows] - self.best, 0.0).sum(axis=1) + self.modular[rows]


class FLQMI:
    """Facility-location query MI over the pool: each pool row counts up to η times its query similarity."""

    def __init__(self, data: np.ndarray, query: np.ndarray, eta: float) -> None:
        self.sim = kernel(data, data)  # (p, p)
        self.cap = eta * kernel(data, query).max(axis=1)
        self.best = np.zeros(data.shape[0])

    def gains(self, rows: np.ndarray, chosen: int | None = None) -> np.ndarray:
        """Gains of adding each of `rows`; with `chosen`, first add that row to A."""
        if chosen is not None:
            np.maximum(self.best, self.sim[chosen], out=self.best)
        now = np.minimum(self.best, self.cap)
        after = np.minimum(np.maximum(self.best, self.sim[rows]), self.cap)
        return (after - now).sum(axis=1)


def lazy_greedy(
    gains: Callable[[np.ndarray, int | None], np.ndarray], n: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Lazy greedy for a submodular function: stale gains are upper bounds; ties go to the lowest row.

    `gains(rows, chosen)` first adds `chosen` (when not None) to the set, then returns the
    gains of `rows`. A popped row whose fresh gain still beats the next bound is the true best.
    """
    first = gains(np.arange(n), None)
    heap = [(-g, i) for i, g in enumerate(first)]
    heapq.heapify(heap)
    picks = np.empty(k, dtype=np.int64)
    values = np.empty(k)
    fresh_at = np.zeros(n, dtype=np.int64)  # the step at which a row's gain was last computed
    step, chosen = 0, None
    while step < k:
        bound, i = heapq.heappop(heap)
        if fresh_at[i] != step:
            g = gains(np.array([i]), chosen)[0]
            chosen = None  # the set is updated once per step
            fresh_at[i] = step
            if heap and (-g, i) > heap[0]:
                heapq.heappush(heap, (-g, i))
                continue
            bound = -g
        picks[step], values[step] = i, -bound
        step += 1
        chosen = i
    return picks, values


def logdet_greedy(
    data: np.ndarray, query: np.ndarray, eta: float, lam: float, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy LogDetMI: each gain is log(Schur complement in K1) − log(Schur complement in K2)."""
    k1 = kernel(data, data) + lam * np.eye(data.shape[0])
    cross = kernel(data, query)
    kq = kernel(query, query) + lam * np.eye(query.shape[0])
    k2 = k1 - eta**2 * cross @ np.linalg.solve(kq, cross.T)
    picks = np.empty(k, dtype=np.int64)
    values = np.empty(k)
    schur1, schur2 = np.diag(k1).copy(), np.diag(k2).copy()
    chol1 = np.zeros((k, data.shape[0]))
    chol2 = np.zeros((k, data.shape[0]))
    free = np.ones(data.shape[0], dtype=bool)
    for step in range(k):
        with np.errstate(divide="ignore", invalid="ignore"):
            gain = np.log(np.maximum(schur1, 1e-300)) - np.log(np.maximum(schur2, 1e-300))
        gain[~free] = -np.inf
        j = int(np.argmax(gain))
        picks[step], values[step] = j, gain[j]
        free[j] = False
        for kern, schur, chol in ((k1, schur1, chol1), (k2, schur2, chol2)):
            e = (kern[j] - chol[:step, j] @ chol[:step]) / np.sqrt(schur[j])
            chol[step] = e
            schur -= e**2
    return picks, values
