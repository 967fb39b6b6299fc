"""Near-duplicate groups: connected components of the kNN graph's edges at or above a similarity.

Byte-identical files are already one archive row (pack keys images by content hash), so what is
left are frames with identical pixels under different bytes (a lossless re-encoding, a copied
frame) and frames that are nearly the same. One group per connected component (scipy csgraph)
of the edges with similarity >= threshold; a frame is an 'exact' member when it is identical to
the group's representative (similarity >= 1 - EXACT_TOLERANCE: float32 rounding leaves identical
unit vectors up to ~1e-6 from 1; distinct frames that close are 0.25° apart), 'near' otherwise.

Representative: the member with the highest mean similarity over its in-group graph edges, ties to
the lowest row: the most typical member, the same on every run. A member's similarity to the
representative is exact when the embeddings are passed; without them it is the graph edge between
the two when the graph holds one, else (a member reached through others) cos(θ1 + θ2 + ...) over
the path of smallest total angle: a lower bound, by the triangle inequality for angles.

Default threshold (AnalysisConfig.near_duplicate_threshold, 0.98): chosen on BUSI raw-pixel
embeddings (64x64, centred, unit): see tests/unit/test_analysis.py and the report of issue 4.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, dijkstra

from enrich_ray.index.knn import KnnGraph, unit_rows

EXACT_TOLERANCE = 1e-5  # float32 dot products of identical unit vectors land within ~1e-6 of 1 (d=4096)
COLUMNS = {
    "group_id": np.int64,
    "row": np.int64,
    "kind": object,
    "similarity": np.float32,
    "is_representative": bool,
    "group_size": np.int64,
}


def near_duplicates(graph: KnnGraph, threshold: float, embeddings: np.ndarray | None = None) -> pd.DataFrame:
    """One row per frame in a near-duplicate group: group_id, row, kind ('exact'|'near'),
    similarity (to the representative), is_representative, group_size; groups numbered by their
    representative's row. With the embeddings, every similarity to the representative is exact."""
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"near-duplicate threshold must be a cosine similarity in [-1, 1], got {threshold}")
    n = len(graph)
    src, dst, sim = _edges(graph, threshold)
    if src.size == 0:
        return _frame({c: [] for c in COLUMNS})
    # Undirected edges, each once (the larger similarity if the two rows disagree by rounding).
    lo, hi = np.minimum(src, dst), np.maximum(src, dst)
    order = np.lexsort((-sim, hi, lo))
    lo, hi, sim = lo[order], hi[order], sim[order]
    first = np.ones(lo.size, bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    lo, hi, sim = lo[first], hi[first], sim[first]

    adjacency = coo_matrix((np.ones(lo.size), (lo, hi)), shape=(n, n)).tocsr()
    _, label = connected_components(adjacency, directed=False)
    members = np.unique(np.concatenate([lo, hi]))
    rep = _representatives(members, label, lo, hi, sim)

    # Angles along the path of smallest total angle from each representative; +1e-9 a hop keeps
    # identical frames (angle 0) as explicit edges.
    group_rep = rep[label[members]]
    reps = np.unique(group_rep)
    if embeddings is not None:
        x = unit_rows(embeddings)
        if len(x) != n:
            raise ValueError(f"embeddings have {len(x)} rows, the graph {n}")
        to_rep = np.einsum("ij,ij->i", x[members].astype(np.float64), x[group_rep].astype(np.float64))
    else:
        angle = np.arccos(np.clip(sim, -1.0, 1.0)) + 1e-9
        weights = coo_matrix((angle, (lo, hi)), shape=(n, n)).tocsr()
        dist = dijkstra(weights, directed=False, indices=reps, min_only=True)
        direct = _direct_similarity(members, group_rep, lo, hi, sim, n)
        to_rep = np.where(np.isfinite(direct), direct, np.cos(np.minimum(dist[members], np.pi)))
    to_rep = to_rep.astype(np.float32)
    is_rep = members == group_rep
    to_rep[is_rep] = 1.0

    group_id = np.searchsorted(reps, group_rep)
    size = np.bincount(group_id)[group_id]
    exact = to_rep >= 1.0 - EXACT_TOLERANCE
    has_exact = np.bincount(group_id, weights=(exact & ~is_rep)) > 0
    exact[is_rep] = has_exact[group_id[is_rep]]
    table = _frame(
        {
            "group_id": group_id,
            "row": members,
            "kind": np.where(exact, "exact", "near"),
            "similarity": to_rep,
            "is_representative": is_rep,
            "group_size": size,
        }
    )
    return table.sort_values(["group_id", "is_representative", "similarity", "row"], ascending=[True, False, False, True]).reset_index(drop=True)


def _edges(graph: KnnGraph, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Directed graph edges (row, neighbour, similarity) at or above threshold."""
    n = len(graph)
    nb, sims = graph.neighbors, graph.similarities
    keep = (nb >= 0) & (sims >= threshold)
    if (nb[keep] >= n).any():
        raise ValueError(f"kNN graph has neighbour ids beyond its {n} rows")
    src = np.broadcast_to(np.arange(n)[:, None], nb.shape)[keep]
    return src.astype(np.int64), nb[keep], sims[keep].astype(np.float64)


def _representatives(members: np.ndarray, label: np.ndarray, lo: np.ndarray, hi: np.ndarray, sim: np.ndarray) -> np.ndarray:
    """Per component label, the member with the highest mean in-group edge similarity (ties: lowest row)."""
    n = label.size
    total = np.bincount(lo, weights=sim, minlength=n) + np.bincount(hi, weights=sim, minlength=n)
    degree = np.bincount(lo, minlength=n) + np.bincount(hi, minlength=n)
    mean = total[members] / degree[members]
    order = np.lexsort((members, -mean, label[members]))
    lab = label[members][order]
    first = np.ones(lab.size, bool)
    first[1:] = lab[1:] != lab[:-1]
    rep = np.full(label.max() + 1, -1, dtype=np.int64)
    rep[lab[first]] = members[order][first]
    return rep


def _direct_similarity(
    members: np.ndarray, reps: np.ndarray, lo: np.ndarray, hi: np.ndarray, sim: np.ndarray, n: int
) -> np.ndarray:
    """The similarity of the graph edge between each member and its representative; -inf if none."""
    edge_key = lo * n + hi
    query_key = np.minimum(members, reps) * n + np.maximum(members, reps)
    order = np.argsort(edge_key)
    pos = np.minimum(np.searchsorted(edge_key[order], query_key), edge_key.size - 1)
    found = edge_key[order][pos] == query_key
    return np.where(found, sim[order][pos], -np.inf)


def _frame(data: dict) -> pd.DataFrame:
    return pd.DataFrame({c: np.asarray(data[c], dtype=t) for c, t in COLUMNS.items()})
