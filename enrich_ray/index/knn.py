"""The kNN graph: for every frame its k most similar other frames (cosine of unit embeddings).

Two ways to build it, both numpy in and numpy out:

- `exact_knn_graph`: blocked brute force (X_b · Xᵀ, top-k per row). The reference, and the
  right choice for small archives.
- `clustered_knn_graph`: the fast all-pairs join. k-means on a sample gives coarse clusters;
  every frame is stored in the lists of its `n_assign` nearest centroids (multi-assignment, so a
  neighbour across a cluster border is still found); the frames whose nearest centroid is c are
  then compared with everything in c's list by ONE matrix product, and the top-k taken per row.
  It costs about n_assign·N²/n_clusters·d multiply-adds, all in sgemm, instead of N independent
  index queries. Clusters are joined by one worker thread per core, each matrix product on one
  thread (torch), largest clusters first.

`knn_graph` picks: exact for IndexConfig.kind 'flat', or 'auto' up to EXACT_GRAPH_MAX_ROWS frames;
the clustered join otherwise. Self-matches are removed by index, never by similarity, so an exact
duplicate of a frame stays in its row with similarity 1.

Every graph `knn_graph` returns carries its measured recall (`graph_recall`: recall@k and the
underestimate of the 1-NN similarity against exact search on a seeded sample of frames). How well
the clustered join does depends on the data: high on clustered embeddings, far lower on isotropic
ones (`tests/benchmarks/bench_knn_recall.py` prints both, and what 'auto' ends at). So with
kind 'auto' a join below RECALL_TARGET is widened (more cluster lists per frame, then the exact
graph); with a fixed kind it is kept and a warning names the recall.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import faiss
import numpy as np
import pyarrow as pa
import torch

from enrich_ray.config import IndexConfig

log = logging.getLogger(__name__)

EXACT_MAX_ROWS = 100_000  # 'auto': a flat (exact) index up to this many frames
EXACT_GRAPH_MAX_ROWS = 20_000  # 'auto': the exact graph up to this many frames
QUERY_BLOCK_BYTES = 256 * 1024 * 1024  # similarity block size of the exact path and of each cluster in the join
ASSIGN_BLOCK = 8192  # frames per block when assigning frames to centroids
TOPK_GROUP = 32  # column groups of the top-k filter (see topk_rows)
GRAPH_ASSIGN = 12  # cluster lists each frame is stored in (bench_knn.py prints the recall it gives)
RECALL_TARGET = 0.95  # 'auto' widens the clustered join until its measured recall@k reaches this
RECALL_SAMPLE = 300  # frames whose exact neighbours the recall is measured against
WIDEN_FACTOR = 2  # 'auto': each widening stores every frame in twice as many cluster lists
EXACT_SHARE = 0.25  # 'auto': a join that would scan this share of the clusters per frame runs exact
KMEANS_POINTS_PER_CENTROID = 64  # k-means trains on at most this many frames per centroid
MIN_POINTS_PER_CENTROID = 39  # faiss warns when k-means has fewer training frames per centroid


@dataclass
class KnnGraph:
    """Row i holds the k most similar other frames of frame i, most similar first.

    neighbors: int64 (N, k), -1 where a frame has fewer than k others.
    similarities: float32 (N, k), -inf at those padded places.
    """

    neighbors: np.ndarray
    similarities: np.ndarray
    recall: dict | None = field(default=None, compare=False)  # graph_recall's figures, when measured

    def __post_init__(self) -> None:
        if self.neighbors.shape != self.similarities.shape or self.neighbors.ndim != 2:
            raise ValueError(
                f"neighbors {self.neighbors.shape} and similarities {self.similarities.shape} must be equal (N, k) arrays"
            )
        self.neighbors = np.ascontiguousarray(self.neighbors, dtype=np.int64)
        self.similarities = np.ascontiguousarray(self.similarities, dtype=np.float32)

    def __len__(self) -> int:
        return self.neighbors.shape[0]

    @property
    def k(self) -> int:
        return self.neighbors.shape[1]

    @property
    def nn_similarity(self) -> np.ndarray:
        """Each frame's maximum similarity to any other frame (its redundancy); -inf if alone."""
        if self.k == 0:
            return np.full(len(self), -np.inf, dtype=np.float32)
        return self.similarities[:, 0]

    def to_arrow(self, rows: np.ndarray | None = None) -> pa.Table:
        """The graph as a table: row int64, neighbors fixed_size_list<int64>[k], similarities
        fixed_size_list<float32>[k] (plain empty lists when k is 0, which Arrow cannot size).
        rows: the frame row of each graph row, for a part of a graph (default 0..N-1)."""
        return pa.table(
            {
                "row": pa.array(np.arange(len(self), dtype=np.int64) if rows is None else np.asarray(rows, np.int64)),
                "neighbors": _list_column(self.neighbors),
                "similarities": _list_column(self.similarities),
            }
        )

    @classmethod
    def from_arrow(cls, table: pa.Table) -> KnnGraph:
        """Read back `to_arrow` output (in any row order; list or fixed-size list columns)."""
        missing = {"row", "neighbors", "similarities"} - set(table.column_names)
        if missing:
            raise ValueError(f"kNN graph table lacks columns {sorted(missing)}")
        rows = table.column("row").to_numpy()
        n = len(rows)
        if not np.array_equal(np.sort(rows), np.arange(n)):
            raise ValueError("kNN graph table: 'row' must hold each of 0..N-1 exactly once")
        order = np.argsort(rows, kind="stable")
        neighbors = _list_column_matrix(table.column("neighbors"), n)[order]
        similarities = _list_column_matrix(table.column("similarities"), n)[order]
        return cls(neighbors.astype(np.int64), similarities.astype(np.float32))


def _list_column(matrix: np.ndarray) -> pa.Array:
    """An (n, k) matrix as an Arrow list column, one list per row."""
    n, k = matrix.shape
    if k == 0:
        return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), pa.array(matrix.ravel()))
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), k)


def _list_column_matrix(column: pa.ChunkedArray, n: int) -> np.ndarray:
    """A (fixed-size) list column whose lists all have the same length, as an (n, k) array."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    lengths = arr.value_lengths().to_numpy(zero_copy_only=False) if n else np.zeros(0, np.int64)
    if n and (lengths != lengths[0]).any():
        raise ValueError(f"kNN graph column '{column}' has lists of different lengths")
    k = int(lengths[0]) if n else 0
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(n, k)


def unit_rows(embeddings: np.ndarray) -> np.ndarray:
    """Embeddings as a C-contiguous float32 matrix of unit rows; a clear error for bad input."""
    x = np.asarray(embeddings)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"embeddings must be a 2-D (N, d) array with d > 0, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"embeddings must be numeric, got dtype {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if bad.size:
        raise ValueError(f"embeddings rows {bad[:10].tolist()} are zero or not finite: cosine similarity is undefined")
    if np.abs(norms - 1).max(initial=0) > 1e-6:
        x = x / norms[:, None]
    return x


def topk_rows(similarities: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k largest similarities and their column ids, sorted descending (ties: lower id first).

    similarities: (n, m), -inf where excluded; ids: (m,). Pads with -inf / -1 where a row has fewer
    than k finite entries. Fast because it never partitions whole rows: when m is a multiple of
    TOPK_GROUP, the columns fall into groups (column j in group j mod m/TOPK_GROUP), the k-th
    largest group maximum t is a lower bound of the k-th largest value, and only groups reaching t
    are read again; every value >= t is kept, so the result (ties included) is exact.
    """
    n, m = similarities.shape
    groups = m // TOPK_GROUP if m % TOPK_GROUP == 0 else 0
    if groups >= k:
        by_group = similarities.reshape(n, TOPK_GROUP, groups)
        group_max = by_group.max(axis=1)
        bound = np.partition(group_max, groups - k, axis=1)[:, groups - k]
        rows, group = np.nonzero(group_max >= bound[:, None])
        values = by_group[rows, :, group]
        cols = group[:, None] + groups * np.arange(TOPK_GROUP)
        keep = values >= bound[rows][:, None]
        rows = np.broadcast_to(rows[:, None], keep.shape)[keep]
        values, cols = values[keep], cols[keep]
    else:
        rows = np.repeat(np.arange(n), m)
        values = similarities.ravel()
        cols = np.tile(np.arange(m), n)
    cand = ids[cols].astype(np.int64)
    order = np.lexsort((cand, -values, rows))
    rows, values, cand = rows[order], values[order], cand[order]
    first = np.searchsorted(rows, np.arange(n))
    rank = np.arange(len(rows)) - first[rows]
    take = rank < k
    out_s = np.full((n, k), -np.inf, dtype=np.float32)
    out_i = np.full((n, k), -1, dtype=np.int64)
    out_s[rows[take], rank[take]] = values[take]
    out_i[rows[take], rank[take]] = cand[take]
    out_i[~np.isfinite(out_s)] = -1
    return out_s, out_i


def _gather_padded(x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x[rows] padded with zero rows (id -1) to a multiple of TOPK_GROUP, for topk_rows's fast path."""
    m = len(rows)
    m_pad = -(-m // TOPK_GROUP) * TOPK_GROUP
    block = np.zeros((m_pad, x.shape[1]), dtype=np.float32)
    np.take(x, rows, axis=0, out=block[:m])
    ids = np.full(m_pad, -1, dtype=np.int64)
    ids[:m] = rows
    return block, ids


def exact_knn_graph(embeddings: np.ndarray, k: int) -> KnnGraph:
    """The exact graph by blocked brute force: the reference every faster path is checked against."""
    x = unit_rows(embeddings)
    _check_k(k)
    return exact_rows_graph(x, np.arange(len(x), dtype=np.int64), k)


def exact_rows_graph(x: np.ndarray, rows: np.ndarray, k: int) -> KnnGraph:
    """The exact top-k of the given rows of x against all of x, self excluded by index."""
    rows = np.asarray(rows, np.int64)
    similarities, neighbors = exact_topk(x, rows, rows, x, np.arange(len(x), dtype=np.int64), k)
    return KnnGraph(neighbors, similarities)


def exact_topk(
    queries: np.ndarray, query_rows: np.ndarray, query_ids: np.ndarray, x: np.ndarray, ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The exact top-k of the unit rows queries[query_rows] (frames query_ids) among the unit rows of
    x (frames `ids`), each query's own frame left out by id: similarities descending and frame ids,
    as topk_rows. One file of a scan when x is a file's rows: merge with index.shards.merge_topk."""
    ids = np.asarray(ids, np.int64)
    query_ids = np.asarray(query_ids, np.int64)
    m = len(x)
    everything, pos = _gather_padded(x, np.arange(m, dtype=np.int64))
    col_ids = np.where(pos >= 0, ids[np.maximum(pos, 0)] if m else -1, -1)
    by_id = np.argsort(ids, kind="stable")
    block = max(1, QUERY_BLOCK_BYTES // (4 * len(everything)))
    similarities = np.empty((len(query_rows), k), dtype=np.float32)
    neighbors = np.empty((len(query_rows), k), dtype=np.int64)
    for start in range(0, len(query_rows), block):
        q_ids = query_ids[start : start + block]
        sims = queries[query_rows[start : start + block]] @ everything.T
        sims[:, m:] = -np.inf
        if m:
            col = by_id[np.minimum(np.searchsorted(ids, q_ids, sorter=by_id), m - 1)]
            own = np.flatnonzero(ids[col] == q_ids)
            sims[own, col[own]] = -np.inf
        similarities[start : start + block], neighbors[start : start + block] = topk_rows(sims, col_ids, k)
    return similarities, neighbors


def graph_clusters(n: int) -> int:
    """Coarse clusters of the fast graph: about sqrt(8·N) (354 frames a cluster at 1M), at least 39
    frames each. Cost per frame: C dot products to assign it, n_assign·N/C in the join."""
    return max(1, min(n // MIN_POINTS_PER_CENTROID, round(math.sqrt(8 * n))))


def clustered_knn_graph(
    embeddings: np.ndarray,
    k: int,
    n_clusters: int | None = None,
    n_assign: int = GRAPH_ASSIGN,
    train_sample: int = 100_000,
    seed: int = 0,
) -> KnnGraph:
    """Approximate kNN graph by a blocked join over coarse clusters (see the module docstring).

    Frames left with fewer than min(k, N-1) candidates are completed exactly, so no row is padded.
    """
    x = unit_rows(embeddings)
    _check_k(k)
    n = len(x)
    n_clusters = n_clusters or graph_clusters(n)
    centroids = train_centroids(x, n_clusters, train_sample, seed)
    assign = assign_clusters(x, centroids, n_assign)
    neighbors, similarities = join_clusters(x, assign, k)
    # A frame whose cluster lists hold fewer than min(k, N-1) others gets its exact row instead.
    short = short_rows(neighbors, n)
    if short.size:
        exact = exact_rows_graph(x, short, k)
        neighbors[short], similarities[short] = exact.neighbors, exact.similarities
    return KnnGraph(neighbors, similarities)


def short_rows(neighbors: np.ndarray, n: int) -> np.ndarray:
    """Rows of a join's result holding fewer than min(k, n-1) neighbours (n: frames in the whole graph)."""
    need = min(neighbors.shape[1], n - 1)
    return np.flatnonzero(neighbors[:, need - 1] < 0) if need > 0 else np.zeros(0, np.int64)


def assign_clusters(x: np.ndarray, centroids: np.ndarray, n_assign: int, workers: int | None = None) -> np.ndarray:
    """Each row's min(n_assign, C) most similar centroids, nearest first: (N, n_assign) int64, the
    first column its primary cluster. Blocks of ASSIGN_BLOCK rows on `workers` threads (all cores)."""
    c = torch.from_numpy(np.array(centroids, dtype=np.float32))  # a copy: an object-store array is read-only
    n_assign = min(n_assign, len(c))
    assign = np.empty((len(x), n_assign), dtype=np.int64)

    def assign_rows(start: int) -> None:
        sims = torch.from_numpy(x[start : start + ASSIGN_BLOCK]) @ c.T
        assign[start : start + ASSIGN_BLOCK] = torch.topk(sims, n_assign, dim=1).indices.numpy()

    with _one_blas_thread_per_worker(), ThreadPoolExecutor(workers or _workers()) as pool:
        list(pool.map(assign_rows, range(0, len(x), ASSIGN_BLOCK)))
    return assign


def join_clusters(
    x: np.ndarray, assign: np.ndarray, k: int, clusters: np.ndarray | None = None, workers: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The clustered join (module docstring) of the rows of x whose primary cluster (assign[:, 0]) is
    one of `clusters` (None: every cluster), each against every row of x whose assign holds that
    cluster. Returns neighbors (row ids of x) and similarities, (N, k), -1 / -inf in rows not joined
    and where a cluster list holds fewer than k others. Clusters on `workers` threads, largest first."""
    n, n_assign = assign.shape
    neighbors = np.full((n, k), -1, dtype=np.int64)
    similarities = np.full((n, k), -np.inf, dtype=np.float32)
    if n == 0:
        return neighbors, similarities
    # Every (cluster, frame) pair, grouped by cluster; a stable sort keeps each cluster's primary
    # members (assign[:, 0] == c) first, in row order, so the query block is the list's head.
    pair_cluster = assign.T.ravel()
    pair_row = np.tile(np.arange(n, dtype=np.int64), n_assign)
    n_lists = int(pair_cluster.max()) + 1
    members = pair_row[np.argsort(pair_cluster, kind="stable")]
    list_size = np.bincount(pair_cluster, minlength=n_lists)
    list_end = np.cumsum(list_size)
    list_start = list_end - list_size
    n_primary = np.bincount(assign[:, 0], minlength=n_lists)
    busy = np.flatnonzero(n_primary)
    if clusters is not None:
        busy = np.intersect1d(busy, clusters)

    def join_cluster(c: int) -> None:
        nq = n_primary[c]
        cand = members[list_start[c] : list_end[c]]
        block, ids = _gather_padded(x, cand)
        t = torch.from_numpy(block)
        step = max(1, QUERY_BLOCK_BYTES // (4 * len(block)))  # a cluster holding most frames stays in bounded blocks
        for q in range(0, nq, step):
            sims = (t[q : min(q + step, nq)] @ t.T).numpy()
            sims[:, len(cand) :] = -np.inf
            sims[np.arange(len(sims)), np.arange(q, q + len(sims))] = -np.inf
            similarities[cand[q : q + len(sims)]], neighbors[cand[q : q + len(sims)]] = topk_rows(sims, ids, k)

    with _one_blas_thread_per_worker(), ThreadPoolExecutor(workers or _workers()) as pool:
        list(pool.map(join_cluster, busy[np.argsort(-(n_primary * list_size)[busy], kind="stable")]))
    return neighbors, similarities


def train_centroids(x: np.ndarray, n_clusters: int, train_sample: int, seed: int = 0) -> np.ndarray:
    """Spherical k-means centroids (unit rows) from a seeded random sample of the frames (at least
    MIN_POINTS_PER_CENTROID a centroid; k-means itself uses at most KMEANS_POINTS_PER_CENTROID)."""
    n, d = x.shape
    rows = train_rows(n, n_clusters, train_sample, seed)
    sample = x if len(rows) == n else x[rows]
    if n_clusters == 1:
        return unit_rows(sample.mean(axis=0, keepdims=True) + 1e-12)
    kmeans = faiss.Kmeans(
        d, n_clusters, niter=10, spherical=True, seed=seed, max_points_per_centroid=KMEANS_POINTS_PER_CENTROID
    )
    kmeans.train(np.ascontiguousarray(sample))
    return np.ascontiguousarray(kmeans.centroids, dtype=np.float32)


def train_rows(n: int, n_clusters: int, train_sample: int, seed: int = 0) -> np.ndarray:
    """The seeded, sorted rows train_centroids trains on: all n, or a sample of max(train_sample,
    MIN_POINTS_PER_CENTROID x n_clusters)."""
    size = min(n, max(train_sample, MIN_POINTS_PER_CENTROID * n_clusters))
    if size == n:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


@contextmanager
def _one_blas_thread_per_worker() -> Iterator[None]:
    """torch matrix products on one thread each while the join runs its own worker threads
    (on a busy machine one BLAS call spread over every core waits for the slowest core)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _workers() -> int:
    """Cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_kind(kind: str, n: int) -> str:
    """'auto' picks exact 'flat' up to EXACT_MAX_ROWS frames and 'ivf' beyond; other kinds stay."""
    if kind == "auto":
        return "flat" if n <= EXACT_MAX_ROWS else "ivf"
    if kind not in ("flat", "ivf", "hnsw"):
        raise ValueError(f"unknown index kind {kind!r} (expected auto, flat, ivf or hnsw)")
    return kind


def knn_graph(
    embeddings: np.ndarray,
    k: int,
    cfg: IndexConfig,
    exact_max_rows: int = EXACT_GRAPH_MAX_ROWS,
    recall_sample: int = RECALL_SAMPLE,
) -> KnnGraph:
    """The kNN graph the pipeline uses, with its recall measured (`graph.recall`).

    Exact when cfg.kind is 'flat', or 'auto' with at most `exact_max_rows` frames (the exact join
    costs N²·d); the clustered join otherwise. With 'auto' a join whose recall@k is below
    RECALL_TARGET is redone with WIDEN_FACTOR times more cluster lists per frame, and once that
    would scan EXACT_SHARE of the clusters, the exact graph is built instead (so it ends at or
    above the target). A fixed kind keeps its graph and logs a warning below the target.
    """
    x = unit_rows(embeddings)
    n = len(x)
    kind = resolve_kind(cfg.kind, n)
    if kind == "flat" and (cfg.kind == "flat" or n <= exact_max_rows):
        graph = exact_knn_graph(x, k)
        graph.recall = {**graph_recall(x, graph, recall_sample), "method": "exact"}
        return graph
    n_clusters = graph_clusters(n)
    n_assign = GRAPH_ASSIGN
    tried = []
    while True:
        graph = clustered_knn_graph(x, k, n_clusters=n_clusters, n_assign=n_assign, train_sample=cfg.train_sample)
        measured = graph_recall(x, graph, recall_sample)
        tried.append({"n_assign": min(n_assign, n_clusters), "recall_at_k": measured["recall_at_k"]})
        if measured["recall_at_k"] >= RECALL_TARGET or cfg.kind != "auto":
            break
        n_assign *= WIDEN_FACTOR
        if n_assign >= EXACT_SHARE * n_clusters:
            log.info("index: clustered kNN graph recall@%d %.3f < %.2f; building the exact graph", k, measured["recall_at_k"], RECALL_TARGET)
            graph = exact_knn_graph(x, k)
            graph.recall = {**graph_recall(x, graph, recall_sample), "method": "exact", "clusters": n_clusters, "tried": tried}
            return graph
        log.info("index: clustered kNN graph recall@%d %.3f < %.2f; widening to %d cluster lists per frame", k, measured["recall_at_k"], RECALL_TARGET, n_assign)
    if measured["recall_at_k"] < RECALL_TARGET:
        log.warning(
            "index: the kNN graph's recall@%d is %.3f (< %.2f) on %d sampled frames; its 1-NN similarity is "
            "underestimated by up to %.3f. index.kind=auto widens the search until it reaches %.2f",
            k, measured["recall_at_k"], RECALL_TARGET, measured["sample"], measured["nn_underestimate_max"], RECALL_TARGET,
        )
    graph.recall = {**measured, "method": "clustered", "clusters": n_clusters, "n_assign": tried[-1]["n_assign"], "tried": tried}
    return graph


def graph_recall(embeddings: np.ndarray, graph: KnnGraph, sample: int = RECALL_SAMPLE, seed: int = 0) -> dict:
    """Recall@k of `graph` against exact search on a seeded sample of `sample` frames.

    A found neighbour counts when its similarity reaches the k-th exact similarity of its row (so
    ties at the boundary count); recall_at_k is the mean share of each row's exact neighbours found.
    nn_underestimate_max / _mean: how far the graph's 1-NN similarity falls below the exact one.
    """
    x = unit_rows(embeddings)
    n, k = graph.neighbors.shape
    if n != len(x):
        raise ValueError(f"graph has {n} rows but embeddings {len(x)}")
    m = min(sample, n)
    if k == 0 or m == 0 or n < 2:
        return {"recall_at_k": 1.0, "k": int(k), "sample": int(m), "seed": seed, "nn_underestimate_max": 0.0, "nn_underestimate_mean": 0.0}
    rows = recall_rows(n, m, seed)
    found = KnnGraph(graph.neighbors[rows], graph.similarities[rows])
    return sampled_recall(exact_rows_graph(x, rows, k), found, seed)


def recall_rows(n: int, sample: int, seed: int = 0) -> np.ndarray:
    """The seeded, sorted sample of rows whose exact neighbours a graph's recall is measured against."""
    return np.sort(np.random.default_rng(seed).choice(n, min(sample, n), replace=False))


def sampled_recall(exact: KnnGraph, found: KnnGraph, seed: int = 0) -> dict:
    """graph_recall's figures from the exact rows of the sampled frames and the graph's rows of them."""
    k = found.k
    valid = exact.neighbors >= 0
    kth = np.where(valid, exact.similarities, np.inf).min(axis=1)
    hit = (found.neighbors >= 0) & (found.similarities >= kth[:, None] - 1e-6)
    share = np.minimum(hit.sum(axis=1), valid.sum(axis=1)) / np.maximum(valid.sum(axis=1), 1)
    gap = (exact.similarities[:, 0] - found.similarities[:, 0]).astype(np.float64)
    gap = np.where(np.isfinite(gap), gap, 2.0)  # a row the graph left empty misses by the whole range
    return {
        "recall_at_k": round(float(share.mean()), 4),
        "k": int(k),
        "sample": int(len(found)),
        "seed": seed,
        "nn_underestimate_max": round(float(max(gap.max(), 0.0)), 4),
        "nn_underestimate_mean": round(float(max(gap.mean(), 0.0)), 4),
    }


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
