"""TypiClust (Hacohen, Dekel and Weinshall, ICML 2022, "Active learning on a budget"): typical
frames of the largest clusters the labeled set does not yet cover.

ENRICH covers the embedding from its edge inwards: its first picks are the frames farthest from
everything ranked, which at small budgets are the archive's odd ones. TypiClust picks from the
dense middle first. Each round clusters the frames (k-means) into as many clusters as the ranked
set will hold at the round's end; the clusters holding no ranked frame, largest first, each give
their most typical frame: the one with the smallest mean distance to its `neighbours` nearest
frames (the paper's typicality, measured over the whole archive). The ranked set doubles each
round, so every prefix of the ranking is one round's selection or a prefix of the next.
"""
from __future__ import annotations

import faiss
import numpy as np

from enrich_ray.selection.ranking import Ranking, check_embeddings, check_k, check_seed


def typicality(x: np.ndarray, neighbours: int = 20) -> np.ndarray:
    """1 / mean Euclidean distance to the `neighbours` nearest other rows of unit rows x (float64)."""
    n = x.shape[0]
    k = min(neighbours, n - 1)
    if k < 1:
        return np.ones(n)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    sims, ids = index.search(x, k + 1)
    # Drop each row itself (its own best match; with exact copies it may come second, so drop by id).
    own = ids == np.arange(n)[:, None]
    keep = np.where(own.any(axis=1)[:, None], ~own, np.arange(k + 1)[None, :] < k)
    dist = np.sqrt(np.maximum(2.0 - 2.0 * sims[keep].reshape(n, k).astype(np.float64), 0.0))
    return 1.0 / np.maximum(dist.mean(axis=1), 1e-12)


def kmeans_labels(x: np.ndarray, clusters: int, seed: int) -> np.ndarray:
    """Cluster of each row under k-means with `clusters` centres (faiss, seeded, 20 iterations)."""
    if clusters >= x.shape[0]:
        return np.arange(x.shape[0])
    km = faiss.Kmeans(x.shape[1], clusters, niter=20, seed=seed, min_points_per_centroid=1, max_points_per_centroid=10**6)
    km.train(x)
    return km.index.search(x, 1)[1][:, 0].astype(np.int64)


def typiclust_ranking(embeddings: np.ndarray, seed: np.ndarray | list[int], k: int | None,
                      neighbours: int = 20, random_seed: int = 0) -> Ranking:
    """The seed rows, then k TypiClust picks in rounds that double the ranked set.

    Score of a pick: its typicality. Deterministic for a given random_seed (k-means' start)."""
    x = check_embeddings(embeddings)
    n = x.shape[0]
    s = check_seed(seed, n)
    k = check_k(k, n, s.size)
    typ = typicality(x, neighbours)
    order = list(s.tolist())
    ranked = np.zeros(n, dtype=bool)
    ranked[s] = True
    goal = s.size + k
    round_ = 0
    while len(order) < goal:
        target = min(n, max(2 * len(order), len(order) + 1))
        labels = kmeans_labels(x, target, random_seed + round_)
        covered = np.unique(labels[ranked])
        sizes = np.bincount(labels, minlength=target)
        free = np.setdiff1d(np.flatnonzero(sizes), covered)
        if free.size == 0:  # k-means merged every unranked frame into ranked clusters (many copies)
            labels, sizes = np.arange(n), typ  # each frame its own cluster, the most typical first
            free = np.flatnonzero(~ranked)
        free = free[np.argsort(-sizes[free], kind="stable")]
        for c in free[: target - len(order)]:
            members = np.flatnonzero(labels == c)
            pick = int(members[np.argmax(typ[members])])
            order.append(pick)
            ranked[pick] = True
            if len(order) == goal:
                break
        round_ += 1
    out = np.asarray(order, dtype=np.int64)
    score = np.full(out.size, np.nan, dtype=np.float32)
    score[s.size:] = typ[out[s.size:]]
    return Ranking(ranker="typiclust", order=out, score=score, n_seed=int(s.size),
                   info={"rounds": round_, "neighbours": neighbours})
