"""EXAMINE: the marginal change of the largest singular value when a frame is left out.

score_i = σ1(X) − σ1(X without row i). With XᵀX = V Λ Vᵀ (λ1 ≥ λ2 ≥ ...), removing row x
leaves XᵀX − x xᵀ, whose largest eigenvalue μ is the root in [λ2, λ1] of the secular equation
1 = Σ_j z_j² / (λ_j − μ), z = Vᵀx. We solve for δ = λ1 − μ by bisection (vectorised over rows,
monotone, no cancellation), and score = δ / (σ1 + sqrt(λ1 − δ)). The first-order form takes
δ ≈ (v1·x)².
"""
from __future__ import annotations

import numpy as np

from enrich_ray.selection.ranking import Ranking, check_embeddings, check_k, check_seed

_BISECTION_STEPS = 64
_ROWS_PER_BLOCK = 8192


def examine_scores(embeddings: np.ndarray, exact: bool = True) -> np.ndarray:
    """σ1(X) − σ1(X without row i) for every row (float64); `exact=False` uses the first-order form."""
    x = check_embeddings(embeddings)
    gram = x.T.astype(np.float64) @ x.astype(np.float64)
    lam, vec = np.linalg.eigh(gram)
    lam, vec = lam[::-1].clip(min=0.0), vec[:, ::-1]
    sigma1 = np.sqrt(lam[0])
    gap = lam[0] - lam[1] if lam.size > 1 else lam[0]
    scores = np.empty(x.shape[0], dtype=np.float64)
    for a in range(0, x.shape[0], _ROWS_PER_BLOCK):
        z2 = (x[a : a + _ROWS_PER_BLOCK].astype(np.float64) @ vec) ** 2
        delta = _downdate(z2, lam, gap) if exact else np.minimum(z2[:, 0], lam[0])
        scores[a : a + _ROWS_PER_BLOCK] = delta / (sigma1 + np.sqrt(np.maximum(lam[0] - delta, 0.0)))
    return scores


def _downdate(z2: np.ndarray, lam: np.ndarray, gap: float) -> np.ndarray:
    """δ = λ1 − μ per row, μ the largest root of 1 = Σ z_j²/(λ_j − μ), by bisection on [0, gap]."""
    lo = np.zeros(z2.shape[0])
    hi = np.full(z2.shape[0], gap)
    offsets = lam[0] - lam  # λ1 − λ_j ≥ 0, so λ_j − μ = δ − offsets_j
    with np.errstate(divide="ignore", invalid="ignore"):
        for _ in range(_BISECTION_STEPS):
            mid = 0.5 * (lo + hi)
            terms = z2 / (mid[:, None] - offsets[None, :])
            # f(δ) = 1 − Σ z_j²/(δ − o_j) rises with δ on (0, gap): the root lies where f changes sign
            f = 1.0 - np.nansum(terms, axis=1)
            below = f < 0
            lo = np.where(below, mid, lo)
            hi = np.where(below, hi, mid)
    return 0.5 * (lo + hi)


def examine_ranking(
    embeddings: np.ndarray,
    seed: np.ndarray | list[int],
    k: int | None = None,
    *,
    exact: bool = True,
    most_valuable_first: bool = True,
    exponential: bool = False,
) -> Ranking:
    """Seeds first, then frames by EXAMINE score (largest first by default; ties: lowest row).

    `exponential` reports exp(score), the paper's 'exponential' form; it leaves the order as is.
    """
    x = check_embeddings(embeddings)
    seed = check_seed(seed, x.shape[0])
    k = check_k(k, x.shape[0], seed.size)
    scores = examine_scores(x, exact=exact)
    rest = np.setdiff1d(np.arange(x.shape[0], dtype=np.int64), seed)
    key = -scores[rest] if most_valuable_first else scores[rest]
    picks = rest[np.argsort(key, kind="stable")[:k]]
    shown = np.exp(scores[picks]) if exponential else scores[picks]
    return Ranking(
        ranker="examine",
        order=np.concatenate([seed, picks]),
        score=np.concatenate([np.full(seed.size, np.nan), shown]).astype(np.float32),
        n_seed=seed.size,
    )
