"""ENRICH ranking: greedy farthest-first traversal (greedy k-center) over cosine similarity.

Start from a seed set; then, one frame at a time, add the frame whose maximum similarity to
everything ranked so far is the smallest (ties: lowest row). Three exact paths:

- `plain`: the reference. A running vector m[x] = max similarity of x to the ranked set,
  one matrix-vector product per pick, O(N d) a pick.
- `clustered` (CPU, large N): the same m, kept exact, but a pick only touches the clusters
  it can change. The rows are grouped into clusters of small angular radius (farthest-first seeds,
  a few spherical k-means rounds, far rows given centres of their own: cover_clusters); a cluster
  with centre c and angular radius r holds no row closer to the pick p than angle(p, c) - r, so
  when cos(max(0, angle(p, c) - r)) is at most the cluster's smallest m, no m in it can grow (one
  comparison per cluster of p's similarity to c with a threshold, for all clusters at once), and
  inside a touched cluster no row whose m is at least that bound can. m only grows and the covering
  radius shrinks, so later picks touch a few clusters. Picks are simulated and added in batches.
- `torch`: the plain loop in torch, on any device (on a GPU it is memory-bound and fast).

Under quotas (selection.quota, selection/quota.py) every path stays the exact greedy among the
frames whose groups have room: the plain and torch loops pick from m with the closed frames at
+inf; the clustered path draws its batch from the open frames and closes a group's frames inside
the batch the moment a pick fills it. Coverage stays over every frame, closed ones included.
"""
from __future__ import annotations

import importlib.util
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator, Literal

import numpy as np
from threadpoolctl import threadpool_limits

from enrich_ray.progress import progress_bar
from enrich_ray.selection.quota import Quotas, QuotaState
from enrich_ray.selection.ranking import Ranking, check_embeddings, check_k, check_seed

if TYPE_CHECKING:
    from tqdm import tqdm

Method = Literal["auto", "plain", "clustered", "torch"]

# Below this many frames the plain loop is as fast as the clustered path on a CPU.
PLAIN_MAX_ROWS = 20_000
# Float32 dot products of unit 128-d vectors are within ~1e-6 of exact; the bounds allow 1e-5.
_DOT_SLACK = 1e-5
# When the pairs a batch of picks may change are more than this share of all, update every row in one product.
_FULL_UPDATE_SHARE = 0.5
# Frames per CoverageIndex cluster (coverage_clusters).
ROWS_PER_CLUSTER = 64
_FINE_ITERS = 4  # Lloyd rounds after the farthest-first seeds
_FAR_RATIO = 1.5  # rows farther than this times the median angle from their centre get centres of their own
_SEED_SAMPLE = 8  # sample rows per centre of the farthest-first traversal that seeds the clusters
# A float64 threshold compared in float32 moves by at most one float32 rounding (6e-8 near 1).
_ROUND_SLACK = 1e-6
_BLOCK_ELEMENTS = 1 << 22  # float32 elements per similarity block (16 MB)
_CURVE_BATCH = 1024  # rows a coverage curve adds to the index at a time
_TORCH_CHECK = 256  # under quotas the torch loop asks the device this often whether frames are left


def enrich_greedy(
    embeddings: np.ndarray,
    seed: np.ndarray | list[int],
    k: int | None = None,
    *,
    method: Method = "auto",
    device: str | None = None,
    progress: bool = False,
    quotas: Quotas | None = None,
) -> Ranking:
    """Rank frames by ENRICH after the seed set; `order`, `score` and `coverage` per position.

    `score` of a pick is its maximum similarity to everything before it (NaN for seeds);
    `coverage[i]` is the smallest max-similarity of any unranked frame after pick i (without quotas:
    the next pick's score). `method="auto"` runs torch on a GPU when one is there (or on `device` if
    given), the plain loop below PLAIN_MAX_ROWS frames and the clustered path above. `quotas`
    (selection.quota) lets a pick come only from frames whose groups are below their caps; the
    ranking ends early, said in `info["quota"]`, when no such frame is left. `progress` shows a bar.
    """
    x = check_embeddings(embeddings)
    seed = check_seed(seed, x.shape[0])
    k = check_k(k, x.shape[0], seed.size)
    method = _choose_method(method, device, x.shape[0])
    if quotas is not None and quotas.groups.shape[1] != x.shape[0]:
        raise ValueError(f"quotas cover {quotas.groups.shape[1]} frames but there are {x.shape[0]} embeddings")
    state = QuotaState(quotas, seed) if quotas is not None else None
    with progress_bar(total=k, desc=f"rank: enrich ({method})", unit="frame", disable=not progress) as bar:
        if method == "torch":
            order, score, cover = _greedy_torch(x, seed, k, device or _default_device(), bar, quotas)
        elif method == "plain":
            order, score, cover = _greedy_plain(x, seed, k, bar, state)
        elif method == "clustered":
            with one_blas_thread():
                index = CoverageIndex(x, max_similarity(x, seed), ranked=seed)
                order, score, cover = _greedy_clustered(index, k, bar, state=state)
        else:
            raise ValueError(f"unknown method {method!r}: choose auto, plain, clustered or torch")
    n_seed = seed.size
    info = {}
    if quotas is not None:
        info["quota"] = {"columns": dict(quotas.columns), "frames_without_key": dict(quotas.without_key),
                         "reached": bool(order.size < k), "ranked": int(n_seed + order.size), "asked": int(n_seed + k),
                         "frames": int(x.shape[0])}
    return Ranking(
        ranker="enrich",
        order=np.concatenate([seed, order]).astype(np.int64),
        score=np.concatenate([np.full(n_seed, np.nan, dtype=np.float32), score]),
        n_seed=n_seed,
        coverage=np.concatenate([np.full(n_seed, np.nan, dtype=np.float32), cover]),
        info=info,
    )


def max_similarity(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Each frame's maximum similarity to the frames `rows` (float32, blocked: no N x |rows| matrix)."""
    n = x.shape[0]
    out = np.full(n, -np.inf, dtype=np.float32)
    step_r = max(1, min(rows.size, _BLOCK_ELEMENTS // 4096))
    step_n = max(1, _BLOCK_ELEMENTS // step_r)
    for a in range(0, rows.size, step_r):
        ref = x[rows[a : a + step_r]]
        for b in range(0, n, step_n):
            block = x[b : b + step_n] @ ref.T
            np.maximum(out[b : b + step_n], block.max(axis=1), out=out[b : b + step_n])
    return out


def coverage_curve(embeddings: np.ndarray, order: np.ndarray, n_seed: int) -> np.ndarray:
    """Coverage after each position of any ranking (NaN on seed rows), by an exact running max.

    The smallest max-similarity of any frame to the rows ranked so far (1 once all are ranked).
    Cluster-pruned above PLAIN_MAX_ROWS frames (rows added _CURVE_BATCH at a time), yet up to O(N d)
    a row while coverage is low.
    """
    x = check_embeddings(embeddings)
    order = np.asarray(order, dtype=np.int64)
    seeds = check_seed(order[:n_seed], x.shape[0])
    out = np.full(order.size, np.nan, dtype=np.float32)
    if x.shape[0] <= PLAIN_MAX_ROWS:
        m = max_similarity(x, seeds)
        m[seeds] = np.inf
        for i in range(n_seed, order.size):
            m[order[i]] = np.inf
            np.maximum(m, x @ x[order[i]], out=m)
            out[i] = _rest(m)
        return out
    with one_blas_thread():
        index = CoverageIndex(x, max_similarity(x, seeds), ranked=seeds)
        for a in range(n_seed, order.size, _CURVE_BATCH):
            out[a : a + _CURVE_BATCH] = index.add(order[a : a + _CURVE_BATCH], curve=True)
    out[np.isinf(out)] = 1.0
    return out


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """numpy's BLAS on one thread inside (threadpoolctl), its setting restored after.

    The clustered path runs many small products, on which OpenBLAS's extra threads wait on each
    other (compare bench_selection.py --n 20000 --no-real --threads 2 with this guard removed)."""
    with threadpool_limits(1, user_api="blas"):
        yield


def _choose_method(method: Method, device: str | None, n: int) -> Method:
    """The path `auto` stands for: torch on a GPU or a named device, else plain or clustered by size."""
    if method != "auto":
        return method
    if device is not None or _default_device() != "cpu":
        return "torch"
    return "plain" if n <= PLAIN_MAX_ROWS else "clustered"


def _default_device() -> str:
    """'cuda' when torch is installed and sees a GPU, else 'cpu'."""
    if importlib.util.find_spec("torch") is None:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _rest(m: np.ndarray) -> np.float32:
    """The smallest max-similarity among unranked frames (ranked frames hold +inf); 1 when none is left."""
    low = m.min()
    return np.float32(1.0) if np.isinf(low) else low


def _next_scores(score: np.ndarray, rest: np.float32) -> np.ndarray:
    """Coverage after each pick without quotas: the next pick's score, then what is left after the last."""
    return np.append(score[1:], np.float32(rest)).astype(np.float32) if score.size else np.zeros(0, np.float32)


def _greedy_plain(
    x: np.ndarray, seed: np.ndarray, k: int, bar: tqdm | None = None, state: QuotaState | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference loop: picks, their scores and the coverage after each.

    Under quotas, `open_m` is m with every frame the quotas close at +inf: picks come from it,
    coverage from m over all frames; the loop ends when no open frame is left.
    """
    m = max_similarity(x, seed)
    m[seed] = np.inf
    open_m = m if state is None else np.where(state.open, m, np.inf).astype(np.float32)
    order = np.empty(k, dtype=np.int64)
    score = np.empty(k, dtype=np.float32)
    cover = np.empty(k, dtype=np.float32)
    sims = np.empty(x.shape[0], dtype=np.float32)
    done = 0
    while done < k:
        p = int(np.argmin(open_m))  # first minimum: ties go to the lowest row
        if np.isinf(open_m[p]):
            break
        order[done], score[done] = p, m[p]
        m[p] = open_m[p] = np.inf
        np.dot(x, x[p], out=sims)
        np.maximum(m, sims, out=m)
        if state is not None:
            np.maximum(open_m, sims, out=open_m)
            open_m[state.take(p)] = np.inf
            cover[done] = _rest(m)
        done += 1
        if bar is not None:
            bar.update()
    if state is None:
        return order, score, _next_scores(score, _rest(m))
    return order[:done], score[:done], cover[:done]


def _greedy_torch(
    x: np.ndarray, seed: np.ndarray, k: int, device: str, bar: tqdm | None = None, quotas: Quotas | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The plain loop in torch on `device`; no host synchronisation inside the loop.

    Quotas as in the plain loop, on the device: ranked frames per group, and an open mask that loses
    a group's frames when a pick fills it. The host looks every _TORCH_CHECK picks whether any open
    frame is left, and cuts the picks made after the last open frame went.
    """
    import torch

    dev = torch.device(device)
    xt = torch.from_numpy(x).to(dev)
    m = torch.from_numpy(max_similarity(x, seed)).to(dev)
    seed_t = torch.from_numpy(seed).to(dev)
    m[seed_t] = float("inf")
    order = torch.empty(k, dtype=torch.int64, device=dev)
    score = torch.empty(k, dtype=torch.float32, device=dev)
    if quotas is not None:
        state = QuotaState(quotas, seed)
        groups = torch.from_numpy(quotas.groups).to(dev)
        caps = torch.from_numpy(quotas.caps).to(dev)
        count = torch.from_numpy(state.count).to(dev)
        is_open = torch.from_numpy(state.open).to(dev)
        cover = torch.empty(k, dtype=torch.float32, device=dev)
        ones = torch.ones(groups.shape[0], dtype=torch.int64, device=dev)
    done = 0
    for i in range(k):
        p = torch.argmin(m if quotas is None else torch.where(is_open, m, float("inf")))  # the first minimal index
        order[i] = p
        score[i] = m[p]
        m.index_fill_(0, p.view(1), float("inf"))
        torch.maximum(m, torch.mv(xt, xt[p]), out=m)
        if quotas is not None:
            score[i] = torch.where(is_open[p], score[i], float("inf"))  # no open frame was left: cut below
            is_open.index_fill_(0, p.view(1), False)
            mine = groups[:, p]
            count.index_add_(0, mine, ones)
            filled = count[mine] >= caps[mine]
            is_open &= ~((groups == mine[:, None]) & filled[:, None]).any(dim=0)
            cover[i] = m.min()
            if i % _TORCH_CHECK == _TORCH_CHECK - 1 and bool(torch.isinf(score[i])):
                break
        done = i + 1
        if bar is not None:
            bar.update()
    order_h, score_h = order[:done].cpu().numpy(), score[:done].cpu().numpy()
    if quotas is None:
        return order_h, score_h, _next_scores(score_h, _rest(m.cpu().numpy()))
    kept = int(np.argmax(np.isinf(score_h))) if np.isinf(score_h).any() else done
    cover_h = cover[:kept].cpu().numpy()
    return order_h[:kept], score_h[:kept], np.where(np.isinf(cover_h), 1.0, cover_h).astype(np.float32)


def _nearest_centre(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the most similar centre for every row (blocked)."""
    step = max(1, _BLOCK_ELEMENTS // max(1, centres.shape[0]))
    return np.concatenate([np.argmax(x[a : a + step] @ centres.T, axis=1) for a in range(0, x.shape[0], step)])


def spherical_kmeans(
    x: np.ndarray, n_clusters: int, rng: np.random.Generator, iters: int = 8, centres: np.ndarray | None = None
) -> np.ndarray:
    """Unit centres from a few Lloyd rounds on a sample (at most 40 rows per centre), started from
    random sample rows or from `centres`."""
    n = x.shape[0]
    sample = x[np.sort(rng.choice(n, size=min(n, 40 * n_clusters), replace=False))]
    if centres is None:
        centres = sample[rng.choice(sample.shape[0], size=n_clusters, replace=False)].copy()
    for _ in range(iters):
        labels = _nearest_centre(sample, centres)
        by_label = np.argsort(labels, kind="stable")
        sorted_labels = labels[by_label]
        starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
        sums = np.zeros_like(centres)
        sums[sorted_labels[starts]] = np.add.reduceat(sample[by_label], starts, axis=0)
        norms = np.linalg.norm(sums, axis=1)
        filled = norms > 0
        centres[filled] = sums[filled] / norms[filled, None]
    return centres


def coverage_clusters(n: int) -> int:
    """Clusters of the CoverageIndex of n frames: n / ROWS_PER_CLUSTER within [2 sqrt(n), 4 sqrt(n)].

    A pick pays a product with every centre and one with the rows of each cluster it may change:
    small clusters bound tighter, many cost more per pick (and to build: N x C products).
    """
    root = np.sqrt(n)
    return max(1, min(n, int(max(2 * root, min(n / ROWS_PER_CLUSTER, 4 * root)))))


def farthest_first(x: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A farthest-first traversal of k rows of x (the greedy k-centre, from a random row): the rows,
    and after each the covering similarity, the least similarity of any row to those so far."""
    pick = np.empty(k, dtype=np.int64)
    cover = np.empty(k, dtype=np.float32)
    pick[0] = rng.integers(x.shape[0])
    near = x @ x[pick[0]]
    for i in range(1, k + 1):
        j = int(np.argmin(near))
        cover[i - 1] = near[j]
        if i == k:
            break
        pick[i] = j
        np.maximum(near, x @ x[j], out=near)
    return pick, cover


def cover_clusters(x: np.ndarray, n_clusters: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """About n_clusters clusters of small angular radius (the CoverageIndex's bounds).

    Centres from a farthest-first traversal of a sample (_SEED_SAMPLE rows a centre), which gives a
    group of rows far from the others a centre of its own however few its rows, then _FINE_ITERS
    Lloyd rounds on the sample; each row in its nearest centre's cluster. Then the rows farther from
    their centre than _FAR_RATIO times the median row's angle (a group the sample missed, which would
    widen the radius of the cluster it joined) get centres of their own: a farthest-first traversal
    of them until each is within that angle of one (at most n_clusters / 4 more). Returns the rows'
    clusters and the unit centres; a cluster may be empty.
    """
    n = x.shape[0]
    sample = x[np.sort(rng.choice(n, size=min(n, _SEED_SAMPLE * n_clusters), replace=False))]
    pick, _ = farthest_first(sample, n_clusters, rng)
    centres = spherical_kmeans(sample, n_clusters, rng, iters=_FINE_ITERS, centres=sample[pick].copy())
    labels = _nearest_centre(x, centres)
    angle = np.empty(n, dtype=np.float32)
    step = max(1, _BLOCK_ELEMENTS // x.shape[1])
    for a in range(0, n, step):
        angle[a : a + step] = np.einsum("ij,ij->i", x[a : a + step], centres[labels[a : a + step]])
    np.arccos(np.clip(angle, -1.0, 1.0), out=angle)
    far_angle = _FAR_RATIO * float(np.median(angle))
    far = np.flatnonzero(angle > far_angle)
    if far.size == 0 or far_angle >= np.pi:
        return labels, centres
    rows = x[far]
    pick, cover = farthest_first(rows, min(far.size, max(1, n_clusters // 4)), rng)
    k = 1 + int(np.count_nonzero(cover[:-1] < np.cos(far_angle)))
    labels[far] = centres.shape[0] + _nearest_centre(rows, rows[pick[:k]])
    return labels, np.concatenate([centres, rows[pick[:k]]])


class CoverageIndex:
    """Exact running max-similarity m of every frame to a growing ranked set, pruned by clusters.

    `add(rows)` ranks frames and raises every m they can raise: a cluster is skipped when its
    bound shows no row in it is closer to a new frame than its current m, and inside a cluster
    the rows whose m is at least the bound are skipped. Ranked rows hold +inf.
    Memory: one reordered copy of the embeddings plus O(N) vectors.
    """

    def __init__(
        self,
        x: np.ndarray,
        initial: np.ndarray,
        ranked: np.ndarray | None = None,
        n_clusters: int | None = None,
        random_seed: int = 0,
    ) -> None:
        n = x.shape[0]
        n_clusters = max(1, min(n, n_clusters or coverage_clusters(n)))
        labels, centres = cover_clusters(x, n_clusters, np.random.default_rng(random_seed))
        self.perm = np.argsort(labels, kind="stable")  # clusters contiguous, rows ascending inside
        self.pos = np.empty(n, dtype=np.int64)
        self.pos[self.perm] = np.arange(n)
        counts = np.bincount(labels, minlength=centres.shape[0])
        self.centres = np.ascontiguousarray(centres[counts > 0])
        self.offsets = np.concatenate([[0], np.cumsum(counts[counts > 0])]).astype(np.int64)
        self.cluster_of = np.repeat(np.arange(self.centres.shape[0]), np.diff(self.offsets))
        del labels
        self.x = x[self.perm]
        own = np.empty(n, dtype=np.float64)
        step = max(1, (1 << 18) // x.shape[1])  # float64 blocks of 2 MB
        for a in range(0, n, step):
            rows = self.x[a : a + step].astype(np.float64)
            centre = self.centres[self.cluster_of[a : a + step]].astype(np.float64)
            own[a : a + step] = np.einsum("ij,ij->i", rows, centre)
        # angular radius of each cluster, widened by the float32 error of the products
        cos_radius = np.minimum.reduceat(own, self.offsets[:-1]) - _DOT_SLACK
        self.radius = np.arccos(np.clip(cos_radius, -1.0, 1.0))
        self.m = np.asarray(initial, dtype=np.float32)[self.perm].copy()
        if ranked is not None:
            self.m[self.pos[ranked]] = np.inf
        self.cmin = np.minimum.reduceat(self.m, self.offsets[:-1])

    def _thresholds(self) -> np.ndarray:
        """Per cluster, the similarity to its centre above which a frame may raise an m in it.

        A frame at angle a from the centre is at least a - radius from every row, so it can raise
        none when cos(max(0, a - radius)) <= the cluster's smallest m; solved for cos(a), with the
        float32 slack of the products (and of this float32 threshold) on the side of touching.
        """
        low = self.cmin.astype(np.float64) - _DOT_SLACK
        reach = self.radius + np.arccos(np.clip(low, -1.0, 1.0))
        thr = np.cos(np.minimum(reach, np.pi)) - _DOT_SLACK - _ROUND_SLACK
        thr[reach >= np.pi] = -np.inf
        thr[low >= 1.0] = np.inf  # every row ranked, or m already at 1
        return thr.astype(np.float32)

    def _hits(self, q: np.ndarray, picked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which new frames may change each cluster (C, B), and the centres' similarities to the frames."""
        near = self.centres @ picked.T
        hit = near > self._thresholds()[:, None]
        hit[self.cluster_of[q], np.arange(q.size)] = True  # a row's own cluster: it leaves the unranked there
        return hit, near

    def add(self, rows: np.ndarray, curve: bool = False) -> np.ndarray | None:
        """Rank `rows` (original row indices, in this order) and raise every m they can raise.

        With `curve`, returns the smallest m of the unranked frames after each of the rows (+inf when
        none is left): per touched cluster, the running max over the rows that reach it, each row
        ranked from its own step on; an untouched cluster keeps its smallest m throughout.
        """
        q = self.pos[np.asarray(rows, dtype=np.int64)]
        picked = self.x[q]
        hit, near = self._hits(q, picked)
        if not curve:
            self.m[q] = np.inf
            self._raise(q, picked, hit, near)
            return None
        touched = np.flatnonzero(hit.any(axis=1))
        untouched = np.ones(self.cmin.size, dtype=bool)
        untouched[touched] = False
        out = np.full(q.size, self.cmin[untouched].min() if untouched.any() else np.inf, dtype=np.float32)
        for c in touched:
            a, b = self.offsets[c], self.offsets[c + 1]
            seg = self.m[a:b]
            steps = np.flatnonzero(hit[c])
            sims = self.x[a:b] @ picked[steps].T
            running = np.maximum.accumulate(np.column_stack([seg, sims]), axis=1)  # column t: after steps[t-1]
            mine = np.flatnonzero(self.cluster_of[q[steps]] == c)  # the rows ranked here, at steps[mine]
            for t in mine:
                running[q[steps[t]] - a, t + 1 :] = np.inf
            lows = running.min(axis=0)
            np.minimum(out, lows[np.searchsorted(steps, np.arange(q.size), side="right")], out=out)
            seg[:] = running[:, -1]
            self.cmin[c] = seg.min()
        return out

    def _raise(self, q: np.ndarray, picked: np.ndarray, hit: np.ndarray, near: np.ndarray) -> None:
        """Raise m by the new frames `picked` (positions q, already at +inf) in the clusters they hit.

        Per hit pair, the bound cos(max(0, a - radius)) on the frame's similarity to any row of the
        cluster: rows whose m is at least the largest bound over the frames hitting the cluster are
        left out (all rows of a frame's own cluster are updated). Above _FULL_UPDATE_SHARE of all
        pairs, one blocked product over every row instead.
        """
        cs, ss = np.nonzero(hit)  # pairs by cluster, then frame
        sizes = np.diff(self.offsets)
        if sizes[cs].sum() > _FULL_UPDATE_SHARE * self.m.size * q.size:
            step = max(1, _BLOCK_ELEMENTS // max(1, q.size))
            for a in range(0, self.m.size, step):
                seg = self.m[a : a + step]
                np.maximum(seg, (self.x[a : a + step] @ picked.T).max(axis=1), out=seg)
            self.cmin = np.minimum.reduceat(self.m, self.offsets[:-1])
            return
        angle = np.arccos(np.minimum(near[cs, ss].astype(np.float64) + _DOT_SLACK, 1.0))
        bound = np.cos(np.maximum(angle - self.radius[cs], 0.0)) + _DOT_SLACK
        bound[self.cluster_of[q[ss]] == cs] = np.inf
        first = np.flatnonzero(np.r_[True, cs[1:] != cs[:-1]]) if cs.size else np.zeros(0, np.int64)
        reach = np.maximum.reduceat(bound, first) if cs.size else bound
        ends = np.r_[first[1:], cs.size]
        for c, i, j, top in zip(cs[first].tolist(), first.tolist(), ends.tolist(), reach.tolist()):
            a, b = self.offsets[c], self.offsets[c + 1]
            seg = self.m[a:b]
            steps = picked[ss[i:j]]
            if top == np.inf:
                np.maximum(seg, (self.x[a:b] @ steps.T).max(axis=1), out=seg)
            else:
                low = np.flatnonzero(seg < top)
                if low.size == 0:
                    continue
                if 2 * low.size > b - a:
                    np.maximum(seg, (self.x[a:b] @ steps.T).max(axis=1), out=seg)
                else:
                    seg[low] = np.maximum(seg[low], (self.x[a + low] @ steps.T).max(axis=1))
            self.cmin[c] = seg.min()

    def least_covered(self) -> tuple[int, np.float32]:
        """The unranked row with the smallest m (ties: lowest row) and m; (-1, inf) when all are ranked."""
        low = self.cmin.min()
        if np.isinf(low):
            return -1, low
        at = np.flatnonzero(self.m == low)
        return int(self.perm[at].min()), low


def _greedy_clustered(
    index: CoverageIndex, k: int, bar: tqdm | None = None, batch: int = 1024, state: QuotaState | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The greedy in batches: simulate it exactly on the `batch` least-covered rows, then update all.

    Rows outside the batch have m at least `ceiling` (the next smallest), and m only grows, so
    every simulated pick whose m is below `ceiling` is the true greedy pick. The picks of a batch
    then raise m for all rows in one pass of blocked matrix products. Under quotas the batch is
    drawn from the open frames (m of the closed ones held at +inf), a pick that fills a group
    closes that group's frames in the batch at once, and the index's curve gives the coverage.
    """
    order = np.empty(k, dtype=np.int64)
    score = np.empty(k, dtype=np.float32)
    cover = np.empty(k, dtype=np.float32)
    slot = np.full(index.m.size, -1, dtype=np.int64)  # a row's place in the batch, -1 outside it
    done = 0
    while done < k:
        m = index.m if state is None else np.where(state.open[index.perm], index.m, np.inf)
        n_open = int(np.count_nonzero(m < np.inf))
        if n_open == 0:
            break
        if n_open <= batch:
            cand, ceiling = np.flatnonzero(m < np.inf), np.float32(np.inf)
        else:
            part = np.argpartition(m, batch)
            cand, ceiling = part[:batch], m[part[batch]]
        cand = cand[np.argsort(index.perm[cand])]  # ascending rows: argmin breaks ties low
        rows_c = index.perm[cand]
        vals = m[cand].copy()
        sims = index.x[cand] @ index.x[cand].T
        slot[rows_c] = np.arange(cand.size)
        chosen = []
        while done + len(chosen) < k:
            j = int(np.argmin(vals))
            if not vals[j] < ceiling:
                break
            score[done + len(chosen)] = vals[j]
            chosen.append(j)
            vals[j] = np.inf
            np.maximum(vals, sims[j], out=vals)
            if state is not None:
                closed = slot[state.take(int(rows_c[j]))]
                vals[closed[closed >= 0]] = np.inf
        slot[rows_c] = -1
        if chosen:
            rows = rows_c[chosen]
        else:  # the batch is one block of exact ties with the rows outside: one plain step
            low = m.min()
            p = int(index.perm[np.flatnonzero(m == low)].min())
            score[done], rows = low, np.array([p])
            if state is not None:
                state.take(p)
        order[done : done + rows.size] = rows
        if state is None:
            index.add(rows)
        else:
            cover[done : done + rows.size] = index.add(rows, curve=True)
        done += rows.size
        if bar is not None:
            bar.update(rows.size)
    if state is None:
        p, value = index.least_covered()
        return order, score, _next_scores(score, np.float32(1.0) if p < 0 else value)
    return order[:done], score[:done], np.where(np.isinf(cover[:done]), 1.0, cover[:done]).astype(np.float32)
