"""Duplicate groups: exact duplicates by identity, near-duplicates as stars that never chain.

Exact duplicates are identical, never merely close: identical bytes (pack keeps one archive row
per content hash, with every path: `copies`) or identical decoded pixels (the decode stage's
`pixel_hash`). No embedding threshold makes a frame 'exact'.

Near-duplicates are leader (star) clusters over the kNN graph's edges at or above the threshold,
by the exact cosine of the embeddings. Frames with one pixel_hash are one unit: they always land
in one group. Repeatedly, the ungrouped unit with the most ungrouped frames within the threshold
(its own copies count; ties: the highest mean similarity to them, then the lowest row) becomes a
representative, and the ungrouped units within the threshold of it join its group. So every
member is within the threshold of its representative, whatever the chain a-b-c: a and c in one
group only when a.c >= threshold too.

Each row's kind is its own: 'exact' when its pixels equal the representative's (same hash), else
'near'. The representative is 'exact' when it has an identical copy (another row with its hash,
or its bytes at another path), else 'near'; a group's kind is its representative's.

Default threshold (AnalysisConfig.near_duplicate_threshold, 0.98): chosen on BUSI raw-pixel
embeddings (64x64, centred, unit): see tests/unit/test_analysis.py and the report of issue 4.
"""
from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np
import pandas as pd

from enrich_ray.index.knn import KnnGraph, unit_rows

COLUMNS = {
    "group_id": np.int64,
    "row": np.int64,
    "kind": object,
    "similarity": np.float32,  # exact cosine to the representative (1 for the representative)
    "is_representative": bool,
    "group_size": np.int64,  # frames in the group, each byte-identical copy counted
    "pixel_hash": object,  # the decode stage's hash of the frame's pixels; None when not given
}
# Graph similarities are float32 (and may come from an approximate index): edges this far below
# the threshold are checked against the exact cosine too.
_CANDIDATE_SLACK = 1e-3
_CHUNK = 65_536  # edges per exact-similarity block


def near_duplicates(
    graph: KnnGraph,
    threshold: float,
    embeddings: np.ndarray,
    pixel_hash: Sequence[str | None] | None = None,
    copies: np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per frame in a duplicate group: group_id, row, kind ('exact'|'near'), similarity (to
    the representative, exact cosine), is_representative, group_size, pixel_hash; groups numbered by
    their representative's row, representative first.

    pixel_hash: per row, the hash of its decoded pixels (None: unknown). copies: per row, how many
    files hold its bytes (>= 1); a frame with copies is a group even with no other member.
    """
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"near-duplicate threshold must be a cosine similarity in [-1, 1], got {threshold}")
    n = len(graph)
    x = unit_rows(embeddings) if n else np.zeros((0, 1), np.float32)
    if len(x) != n:
        raise ValueError(f"embeddings have {len(x)} rows, the graph {n}")
    hashes = _per_row(pixel_hash, n, "pixel_hash")
    weight = np.ones(n, np.int64) if copies is None else np.asarray(_per_row(copies, n, "copies"), np.int64)
    if (weight < 1).any():
        raise ValueError("copies must be at least 1 for every row")
    unit = _exact_units(hashes)
    unit_weight = np.bincount(unit, weights=weight, minlength=n).astype(np.int64)
    u, v, sim = _unit_edges(graph, unit, x, threshold)
    leaders = _leader_groups(n, u, v, sim, unit_weight)
    return _table(leaders, unit, x, hashes, weight, unit_weight)


def _per_row(values, n: int, name: str) -> np.ndarray:
    if values is None:
        return np.full(n, None, dtype=object)
    arr = np.asarray(values, dtype=object if name == "pixel_hash" else None)
    if arr.shape != (n,):
        raise ValueError(f"{name} must hold one value per graph row ({n}), got shape {arr.shape}")
    return arr


def _exact_units(hashes: np.ndarray) -> np.ndarray:
    """Each row's unit: the lowest row with its pixel_hash (itself when the hash is unknown)."""
    n = hashes.size
    unit = np.arange(n, dtype=np.int64)
    codes, _ = pd.factorize(pd.Series(hashes, dtype=object), use_na_sentinel=True)
    known = codes >= 0
    if known.any():
        first = np.full(codes.max() + 1, n, dtype=np.int64)
        np.minimum.at(first, codes[known], unit[known])
        unit[known] = first[codes[known]]
    return unit


def _unit_edges(graph: KnnGraph, unit: np.ndarray, x: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Undirected edges between units (lower unit first, each once) whose exact cosine is >= threshold."""
    n = len(graph)
    if n == 0 or graph.k == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    nb, sims = graph.neighbors, graph.similarities
    keep = (nb >= 0) & (sims >= threshold - _CANDIDATE_SLACK)
    if (nb[keep] >= n).any():
        raise ValueError(f"kNN graph has neighbour ids beyond its {n} rows")
    src = unit[np.broadcast_to(np.arange(n)[:, None], nb.shape)[keep]]
    dst = unit[nb[keep]]
    lo, hi = np.minimum(src, dst), np.maximum(src, dst)
    key = np.sort((lo * n + hi)[lo != hi])
    key = key[np.r_[True, key[1:] != key[:-1]]] if key.size else key  # each undirected pair once, sorted
    pairs = np.stack([key // n, key % n], axis=1)
    exact = np.concatenate(
        [_cosine(x, pairs[i : i + _CHUNK, 0], pairs[i : i + _CHUNK, 1]) for i in range(0, len(pairs), _CHUNK)]
    ) if len(pairs) else np.zeros(0)
    ok = exact >= threshold
    return pairs[ok, 0], pairs[ok, 1], exact[ok]


def _cosine(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact cosine (float64) of unit rows a[i] and b[i]."""
    return np.einsum("ij,ij->i", x[a].astype(np.float64), x[b].astype(np.float64))


def _leader_groups(n: int, u: np.ndarray, v: np.ndarray, sim: np.ndarray, weight: np.ndarray) -> dict[int, list[int]]:
    """Representative unit -> member units (itself first), by the leader rule of the module docstring.

    A lazy max-heap: a unit's key (frames it would take, their mean similarity) only falls as others
    are grouped, so a popped key that is still current is the largest.
    """
    both_src, both_dst = np.concatenate([u, v]), np.concatenate([v, u])
    order = np.argsort(both_src, kind="stable")
    indptr = np.searchsorted(both_src[order], np.arange(n + 1))
    nbrs = both_dst[order].tolist()
    nsims = np.concatenate([sim, sim])[order].tolist()
    w = weight.tolist()
    grouped = [False] * n
    ptr = indptr.tolist()

    def key(a: int) -> tuple[int, float]:
        count, total = w[a] - 1, float(w[a] - 1)
        for j in range(ptr[a], ptr[a + 1]):
            b = nbrs[j]
            if not grouped[b]:
                count += w[b]
                total += w[b] * nsims[j]
        return count, (total / count if count else 0.0)

    heap = []
    for a in np.flatnonzero((weight >= 2) | (np.diff(indptr) > 0)).tolist():
        count, mean = key(a)
        heap.append((-count, -mean, a))
    heapq.heapify(heap)
    groups: dict[int, list[int]] = {}
    while heap:
        neg_count, neg_mean, a = heapq.heappop(heap)
        if grouped[a]:
            continue
        count, mean = key(a)
        if count == 0:
            continue
        if (-count, -mean) != (neg_count, neg_mean):
            heapq.heappush(heap, (-count, -mean, a))
            continue
        members = [a] + [nbrs[j] for j in range(ptr[a], ptr[a + 1]) if not grouped[nbrs[j]]]
        for b in members:
            grouped[b] = True
        groups[a] = members
    return groups


def _table(
    groups: dict[int, list[int]], unit: np.ndarray, x: np.ndarray, hashes: np.ndarray, weight: np.ndarray, unit_weight: np.ndarray
) -> pd.DataFrame:
    if not groups:
        return pd.DataFrame({c: np.asarray([], dtype=t) for c, t in COLUMNS.items()})
    n = unit.size
    group_of_unit = np.full(n, -1, np.int64)
    rep_of_unit = np.full(n, -1, np.int64)
    reps = np.array(sorted(groups), dtype=np.int64)
    for g, rep in enumerate(reps.tolist()):
        members = groups[rep]
        group_of_unit[members] = g
        rep_of_unit[members] = rep
    rows = np.flatnonzero(group_of_unit[unit] >= 0)
    group_id = group_of_unit[unit[rows]]
    rep = rep_of_unit[unit[rows]]
    is_rep = rows == rep
    same_pixels = unit[rows] == rep  # the representative's exact set (rows with its pixel_hash)
    kind = np.where(same_pixels & (~is_rep | (unit_weight[rep] >= 2)), "exact", "near")
    similarity = _cosine(x, rows, rep).astype(np.float32)
    similarity[is_rep] = 1.0
    size = np.bincount(group_id, weights=weight[rows]).astype(np.int64)[group_id]
    table = pd.DataFrame(
        {
            "group_id": group_id,
            "row": rows,
            "kind": kind.astype(object),
            "similarity": similarity,
            "is_representative": is_rep,
            "group_size": size,
            "pixel_hash": hashes[rows],
        }
    ).astype(COLUMNS)
    return table.sort_values(["group_id", "is_representative", "similarity", "row"], ascending=[True, False, False, True]).reset_index(drop=True)
