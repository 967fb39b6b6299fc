"""Duplicate groups: exact duplicates by identity, near-duplicates as stars that never chain.

Two judgments, one table (COLUMNS), each group of one kind:

- 'exact' groups are identical frames, never merely close: identical decoded pixels (the decode
  stage's `pixel_hash`) and identical bytes (pack keeps one archive row per content hash, with
  every path: `copies`). A set of rows with one pixel_hash, or one row whose bytes sit at several
  paths, is an exact group; its representative is the set's lowest row (and, per path, its first
  path). Every member is pixel-identical to its representative. No similarity makes a frame exact.
- 'near' groups are leader (star) clusters over UNITS: one unit per distinct pixel_hash (a frame
  of unknown hash is a unit alone), its lowest row standing for the set. Candidates are the edges
  of two kNN graphs, the embeddings' and the content graph's (`content_graph`: the thumbnails'
  own neighbours, so a pair the embedder sets far apart is still offered). The content similarity
  is the cross-correlation of small thumbnails of the decoded frames, each standardised to zero
  mean and unit norm (`thumbnails`), which ignores brightness and contrast and tolerates JPEG,
  resizing, a few percent of crop and a few degrees of rotation. A pair of units is near when,
  between the two representatives, the content similarity >= `content_threshold` and the
  embeddings' exact cosine >= `threshold`, or the content similarity alone >= `content_alone`
  (thumbnails that agree this closely are the same picture, whatever the embedder says: a
  brightness shift can turn the embedding away). Repeatedly, the ungrouped unit with the most
  ungrouped near units (ties: the highest mean cosine to them, then the lowest row) becomes a
  representative, and its ungrouped near units join it. So every member is near its
  representative, whatever the chain a-b-c: a and c share a group only when a~c too.

A unit's representative row may thus be in two groups: the representative of its exact group and
a member (or the representative) of a near group; the other rows of its set are only in the exact
group. Every other row is in at most one group. A family (`duplicate_families`) is a near
group plus the exact groups of its members, or an exact group alone.

Columns: group_id (groups numbered by representative row, an exact group before a near one of the
same row), row, kind, similarity (the embeddings' exact cosine to the representative; 1 for it),
content_similarity (the thumbnails' cross-correlation to the representative; NaN when unknown),
is_representative, group_size (exact: frames counting each path of byte-identical copies; near:
units), pixel_hash.

Defaults (AnalysisConfig): near_duplicate_threshold 0.975 (embeddings' cosine),
near_duplicate_content_threshold 0.90 and near_duplicate_content_alone 0.99 (16x16 thumbnails),
chosen for the default embedder (the beta-VAE) on the planted truth; README's "Judgments on planted
truth" has the table of

    .venv/bin/python tests/benchmarks/bench_truth.py --base busi --embedders vae,pixels
    .venv/bin/python tests/benchmarks/bench_truth.py --base synthetic --n-base 400 --embedders vae,pixels

Choosing: BUSI holds frames of one sweep over a lesion, two scenes when the files are compared at
full resolution after registration (enrich_ray/truth/scene.py, tests/benchmarks/truth_same_scene.py),
whose thumbnails are as alike as a crop or a small rotation of one frame: the content check cannot
tell them apart, the beta-VAE's cosine partly can. The grid of
`.venv/bin/python tests/benchmarks/truth_threshold_sweep.py runs/bench_truth_seed0/busi --embedder vae
--set analysis.near_duplicate_threshold=0.965,0.97,0.975,0.98 --set
analysis.near_duplicate_content_threshold=0.88,0.9,0.92` on three BUSI seeds keeps 0.975 and 0.90;
pooled over five planted BUSI archives (tests/benchmarks/truth_pool.py) they group 92.6% of the
planted near-dups with 0.9% of pairs false (README, "Judgments on planted truth"). A lower cosine
groups more sweep frames (0.965: 1.5-2.5% false); content 0.85 pairs distinct synthetic bases. The
raw-pixel baseline's cosine runs lower on one picture, so under these defaults it groups fewer
(78% on BUSI).
What is missed (bench_truth prints the share by transform; `tests/benchmarks/truth_missed.py`
lists each with both similarities): on BUSI some 5% crops and 5-degree rotations; on the flat
synthetic frames burned-in text, the strongest structure on those dark frames, which dominates
the thumbnails and the embedding alike (and widens the region decode's border trim keeps). Thumbnails cost 512 bytes a frame (float16); the checks
O(edges), plus one kNN graph over the thumbnails.
"""
from __future__ import annotations

import heapq
from collections.abc import Sequence

import cv2
import numpy as np
import pandas as pd

from enrich_ray.config import AnalysisConfig, IndexConfig
from enrich_ray.index.knn import KnnGraph, exact_rows_graph, knn_graph, unit_rows

COLUMNS = {
    "group_id": np.int64,
    "row": np.int64,
    "kind": object,
    "similarity": np.float32,  # exact cosine to the representative (1 for the representative)
    "content_similarity": np.float32,  # thumbnails' cross-correlation to the representative (NaN: unknown)
    "is_representative": bool,
    "group_size": np.int64,
    "pixel_hash": object,  # the decode stage's hash of the frame's pixels; None when not given
}
THUMBNAIL_SIDE = 16  # pixels a side of the content check's thumbnails (block means of the decoded frame)
# Graph similarities are float32 (and may come from an approximate index): edges this far below
# the threshold are checked against the exact cosine too.
_CANDIDATE_SLACK = 1e-3
_CHUNK = 65_536  # edges per exact-similarity block


def thumbnails(pixels: np.ndarray, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """(n, side*side) float16 rows: each decoded frame ((n, h, w), or (n, h*w) square) averaged down
    to side x side and standardised to zero mean and unit norm (a constant frame: zeros). The dot of
    two rows is their normalised cross-correlation."""
    x = np.asarray(pixels, dtype=np.float32)
    if x.ndim == 2:
        h = int(round(np.sqrt(x.shape[1])))
        if h * h != x.shape[1]:
            raise ValueError(f"flat frames must be square, got {x.shape[1]} pixels")
        x = x.reshape(len(x), h, h)
    if x.ndim != 3:
        raise ValueError(f"frames must be (n, h, w), got shape {x.shape}")
    n, h, w = x.shape
    if h % side == 0 and w % side == 0:
        t = x.reshape(n, side, h // side, side, w // side).mean(axis=(2, 4))
    else:
        t = np.stack([cv2.resize(f, (side, side), interpolation=cv2.INTER_AREA) for f in x]) if n else np.zeros((0, side, side), np.float32)
    t = t.reshape(n, side * side)
    t -= t.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(t, axis=1, keepdims=True)
    t = np.divide(t, norm, out=np.zeros_like(t), where=norm > 1e-6)
    return t.astype(np.float16)


def near_duplicates(
    graph: KnnGraph,
    threshold: float,
    embeddings: np.ndarray,
    pixel_hash: Sequence[str | None] | None = None,
    copies: np.ndarray | None = None,
    thumbs: np.ndarray | None = None,
    content_threshold: float = -1.0,
    content_alone: float | None = None,
    content_neighbours: KnnGraph | None = None,
) -> pd.DataFrame:
    """The exact and near-duplicate groups of the module docstring, one table row per (group, frame),
    representative first.

    pixel_hash: per row, the hash of its decoded pixels (None: unknown). copies: per row, how many
    files hold its bytes (>= 1). thumbs: per row, `thumbnails` of its frame (None: no content check; a
    NaN row: unknown, its pairs judged by the embeddings alone). content_alone: the content similarity
    that makes a pair near by itself (None: never). content_neighbours: the content graph, whose edges
    are candidates too (None: the embeddings' graph alone offers pairs).
    """
    checks = [("threshold", threshold), ("content_threshold", content_threshold)]
    for name, value in checks + ([("content_alone", content_alone)] if content_alone is not None else []):
        if not -1.0 <= value <= 1.0:
            raise ValueError(f"near-duplicate {name} must be a similarity in [-1, 1], got {value}")
    n = len(graph)
    x = unit_rows(embeddings) if n else np.zeros((0, 1), np.float32)
    if len(x) != n:
        raise ValueError(f"embeddings have {len(x)} rows, the graph {n}")
    hashes = _per_row(pixel_hash, n, "pixel_hash")
    weight = np.ones(n, np.int64) if copies is None else np.asarray(_per_row(copies, n, "copies"), np.int64)
    if (weight < 1).any():
        raise ValueError("copies must be at least 1 for every row")
    if thumbs is not None and (np.ndim(thumbs) != 2 or len(thumbs) != n):
        raise ValueError(f"thumbs must be an (n, d) array with one row per graph row ({n}), got shape {np.shape(thumbs)}")
    if content_neighbours is not None and len(content_neighbours) != n:
        raise ValueError(f"content_neighbours has {len(content_neighbours)} rows, the graph {n}")
    unit = _exact_units(hashes)
    u, v, sim = _unit_edges(graph, unit, x, threshold, thumbs, content_threshold, content_alone, content_neighbours)
    return _table(_leader_groups(n, u, v, sim), unit, x, hashes, weight, thumbs)


def content_rows(thumbs: np.ndarray) -> np.ndarray:
    """Unit rows of standardised thumbnails whose dot is their cross-correlation; a blank frame (a zero
    thumbnail) stands at one fixed direction, like every other blank frame."""
    x = np.asarray(thumbs, dtype=np.float32).copy()
    blank = ~(np.linalg.norm(x, axis=1) > 0)
    x[blank] = 0.0
    x[blank, 0] = 1.0
    return unit_rows(x)


def content_graph(thumbs: np.ndarray, k: int, index: IndexConfig, rows: np.ndarray | None = None) -> KnnGraph:
    """The kNN graph of the frames' thumbnails (content_rows), built as the embeddings' graph is; a frame
    whose thumbnail is unknown (NaN) has no neighbours (-1) and is no one's. rows: only these frames get
    their neighbours, by exact search against every known thumbnail (the nightly increment: tonight's
    frames among everything seen); the others keep none."""
    t = np.asarray(thumbs, dtype=np.float32)
    known = np.flatnonzero(np.isfinite(t).all(axis=1))
    n = len(t)
    k = min(k, max(len(known) - 1, 0))
    neighbors, sims = np.full((n, k), -1, np.int64), np.full((n, k), -np.inf, np.float32)
    if k > 0:
        x = content_rows(t[known])
        query = np.arange(len(known)) if rows is None else np.flatnonzero(np.isin(known, rows))
        sub = knn_graph(x, k, index) if rows is None else exact_rows_graph(x, query, k)
        neighbors[known[query]] = np.where(sub.neighbors >= 0, known[np.maximum(sub.neighbors, 0)], -1)
        sims[known[query]] = sub.similarities
    return KnnGraph(neighbors, sims)


def archive_duplicates(graph: KnnGraph, embeddings: np.ndarray, analysis: AnalysisConfig, index: IndexConfig,
                       pixel_hash: Sequence[str | None] | None = None, copies: np.ndarray | None = None,
                       thumbs: np.ndarray | None = None, rows: np.ndarray | None = None) -> pd.DataFrame:
    """near_duplicates with the analysis settings, its content graph built from thumbs (k as the
    embeddings' graph; rows: only these frames query it, as content_graph): the one call curate,
    nightly and the evaluation's junk filter make."""
    neighbours = content_graph(thumbs, graph.k, index, rows) if thumbs is not None and graph.k else None
    return near_duplicates(graph, analysis.near_duplicate_threshold, embeddings, pixel_hash, copies, thumbs,
                           analysis.near_duplicate_content_threshold, analysis.near_duplicate_content_alone, neighbours)


def content_similarity(thumbs: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Normalised cross-correlation of the thumbnails of rows a[i] and b[i] (float32)."""
    return np.einsum("ij,ij->i", thumbs[a].astype(np.float32), thumbs[b].astype(np.float32))


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


def _unit_edges(graph: KnnGraph, unit: np.ndarray, x: np.ndarray, threshold: float, thumbs: np.ndarray | None,
                content_threshold: float, content_alone: float | None = None,
                content_neighbours: KnnGraph | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Undirected edges between units (lower unit first, each once) that pass the checks; their exact cosine."""
    n = len(graph)
    if n == 0 or graph.k == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    candidates = [_graph_pairs(graph, unit, threshold if content_alone is None else min(threshold, -1.0))]
    if content_neighbours is not None and content_neighbours.k:
        candidates.append(_graph_pairs(content_neighbours, unit, content_threshold))
    key = np.concatenate(candidates)
    key = np.unique(key)  # each undirected pair once, sorted
    pairs = np.stack([key // n, key % n], axis=1)
    blocks = [pairs[i : i + _CHUNK] for i in range(0, len(pairs), _CHUNK)]
    exact = np.concatenate([_cosine(x, p[:, 0], p[:, 1]) for p in blocks]) if blocks else np.zeros(0)
    ok = exact >= threshold
    if thumbs is not None and blocks:
        content = np.concatenate([content_similarity(thumbs, p[:, 0], p[:, 1]) for p in blocks])
        unknown = np.isnan(content)  # a thumbnail unknown: the embeddings judge alone
        ok = (ok & ((content >= content_threshold) | unknown)) | (~unknown & (content >= (2.0 if content_alone is None else content_alone)))
    return pairs[ok, 0], pairs[ok, 1], exact[ok]


def _graph_pairs(graph: KnnGraph, unit: np.ndarray, floor: float) -> np.ndarray:
    """Keys (lo * n + hi) of the graph's edges between distinct units whose graph similarity reaches floor."""
    n = len(graph)
    nb, sims = graph.neighbors, graph.similarities
    keep = (nb >= 0) & (sims >= floor - _CANDIDATE_SLACK)
    if (nb[keep] >= n).any():
        raise ValueError(f"kNN graph has neighbour ids beyond its {n} rows")
    src = unit[np.broadcast_to(np.arange(n)[:, None], nb.shape)[keep]]
    dst = unit[nb[keep]]
    lo, hi = np.minimum(src, dst), np.maximum(src, dst)
    return (lo * n + hi)[lo != hi]


def _cosine(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact cosine (float64) of unit rows a[i] and b[i]."""
    return np.einsum("ij,ij->i", x[a].astype(np.float64), x[b].astype(np.float64))


def _leader_groups(n: int, u: np.ndarray, v: np.ndarray, sim: np.ndarray) -> dict[int, list[int]]:
    """Representative unit -> member units (itself first), by the leader rule of the module docstring.

    A lazy max-heap: a unit's key (ungrouped near units, their mean cosine) only falls as others are
    grouped, so a popped key that is still current is the largest.
    """
    both_src, both_dst = np.concatenate([u, v]), np.concatenate([v, u])
    order = np.argsort(both_src, kind="stable")
    indptr = np.searchsorted(both_src[order], np.arange(n + 1))
    nbrs = both_dst[order].tolist()
    nsims = np.concatenate([sim, sim])[order].tolist()
    grouped = [False] * n
    ptr = indptr.tolist()

    def key(a: int) -> tuple[int, float]:
        count, total = 0, 0.0
        for j in range(ptr[a], ptr[a + 1]):
            if not grouped[nbrs[j]]:
                count += 1
                total += nsims[j]
        return count, (total / count if count else 0.0)

    heap = []
    for a in np.flatnonzero(np.diff(indptr) > 0).tolist():
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


def _table(near: dict[int, list[int]], unit: np.ndarray, x: np.ndarray, hashes: np.ndarray, weight: np.ndarray,
           thumbs: np.ndarray | None) -> pd.DataFrame:
    n = unit.size
    unit_weight = np.bincount(unit, weights=weight, minlength=n).astype(np.int64)
    exact_reps = np.flatnonzero(unit_weight >= 2)
    exact_rows = np.flatnonzero(np.isin(unit, exact_reps))
    near_reps = np.array(sorted(near), dtype=np.int64)
    near_rows = np.array([m for r in near_reps.tolist() for m in near[r]], dtype=np.int64)
    near_rep = np.repeat(near_reps, [len(near[r]) for r in near_reps.tolist()])
    rows = np.concatenate([exact_rows, near_rows])
    rep = np.concatenate([unit[exact_rows], near_rep])
    is_near = np.r_[np.zeros(len(exact_rows), bool), np.ones(len(near_rows), bool)]
    if not len(rows):
        return pd.DataFrame({c: np.asarray([], dtype=t) for c, t in COLUMNS.items()})
    group_key = rep * 2 + is_near  # by representative row, exact before near
    _, group_id = np.unique(group_key, return_inverse=True)
    size = np.where(is_near, np.bincount(group_id)[group_id], unit_weight[rep])
    similarity = _cosine(x, rows, rep).astype(np.float32)
    content = content_similarity(thumbs, rows, rep) if thumbs is not None else np.full(len(rows), np.nan, np.float32)
    is_rep = rows == rep
    similarity[is_rep] = 1.0
    content[is_rep & ~np.isnan(content)] = 1.0
    table = pd.DataFrame(
        {
            "group_id": group_id,
            "row": rows,
            "kind": np.where(is_near, "near", "exact").astype(object),
            "similarity": similarity,
            "content_similarity": content,
            "is_representative": is_rep,
            "group_size": size,
            "pixel_hash": hashes[rows],
        }
    ).astype(COLUMNS)
    return table.sort_values(["group_id", "is_representative", "similarity", "row"], ascending=[True, False, False, True]).reset_index(drop=True)


def duplicate_families(dups: pd.DataFrame, n: int) -> np.ndarray:
    """The duplicate family of each frame row, -1 outside every group: a near group with the exact
    groups of its members (their identical frames), or an exact group alone; numbered by the near
    group's id, else the exact group's. The outlier table flags a family whole or not at all."""
    group = np.full(n, -1, np.int64)
    if not len(dups):
        return group
    rows, gids = dups["row"].to_numpy(np.int64), dups["group_id"].to_numpy(np.int64)
    near = (dups["kind"] == "near").to_numpy()
    near_of_row = np.full(n, -1, np.int64)
    near_of_row[rows[near]] = gids[near]
    reps = dups["is_representative"].to_numpy(bool)
    family = dict(zip(gids[reps].tolist(), np.where(near_of_row[rows[reps]] >= 0, near_of_row[rows[reps]], gids[reps]).tolist()))
    family.update(zip(gids[near].tolist(), gids[near].tolist()))
    group[rows] = [family[g] for g in gids.tolist()]
    return group


def rows_per_path(dups: pd.DataFrame, uris: list[list[str]]) -> pd.DataFrame:
    """A row per path of each exact member: a file at several paths (identical bytes, one archive row)
    is its frame at each, the representative at its first path; a near member speaks for its first path.
    uris: every path of each frame row's file."""
    paths = [uris[r] if kind == "exact" else uris[r][:1] for r, kind in zip(dups["row"], dups["kind"])]
    out = dups.loc[dups.index.repeat([len(p) for p in paths])].reset_index(drop=True)
    out["source_uri"] = [uri for p in paths for uri in p]
    first = np.concatenate([[True] + [False] * (len(p) - 1) for p in paths]) if paths else np.zeros(0, bool)
    out["is_representative"] = out["is_representative"].to_numpy() & first
    return out


def later_duplicates(groups: pd.DataFrame, first_row: int, resent: Sequence[str], earlier_ids: Sequence[str]) -> pd.DataFrame:
    """The groups that hold a row of first_row or later (a night's frames after the history's), then one
    `resent` group per image sent again, whose members are its earlier rows (earlier_ids: the image id of
    each row before first_row)."""
    dups = groups[groups.groupby("group_id")["row"].transform("max") >= first_row] if len(groups) else groups
    first = int(dups["group_id"].max()) + 1 if len(dups) else 0
    ids = np.asarray(earlier_ids, dtype=object)
    rows = [{"group_id": first + g, "row": int(r), "kind": "resent", "similarity": 1.0, "is_representative": True}
            for g, image_id in enumerate(resent) for r in np.flatnonzero(ids == image_id)]
    return pd.concat([dups, pd.DataFrame(rows)], ignore_index=True) if rows else dups.reset_index(drop=True)


def later_rows_with_earlier(groups: pd.DataFrame, first_row: int, kind: str) -> int:
    """How many rows of first_row on (a night's frames) share a group of this kind with a row before it."""
    if not len(groups):
        return 0
    g = groups[groups["kind"] == kind].drop_duplicates(["group_id", "row"])
    mixed = g.groupby("group_id")["row"].transform("min") < first_row
    return int((mixed & (g["row"] >= first_row)).sum())
