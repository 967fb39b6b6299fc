"""Outliers: the frames least similar to anything else, ranked, with a robust cut-off.

Typicality of a frame = the mean of its 1-NN similarity and its mean similarity to its k nearest
neighbours (the first catches a frame with no close match, the second one that sits in a thin
region); score = 1 - typicality, so rank 1 has the highest score. A frame is flagged when its
typicality lies more than mad_k robust standard deviations below the median (MAD scaled by 1.4826,
which equals the standard deviation for normal data; the mean absolute deviation scaled by 1.2533
stands in when more than half the frames share one value and the MAD is 0).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from enrich_ray.index.knn import KnnGraph

MAD_TO_SD = 1.4826
MEAN_AD_TO_SD = 1.2533
NO_NEIGHBOUR = -1.0  # the similarity counted for a frame whose row holds no neighbour at all


def outlier_scores(graph: KnnGraph) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: the outlier score (1 - typicality) and the 1-NN similarity."""
    sims = graph.similarities.astype(np.float64)
    finite = np.isfinite(sims)
    count = finite.sum(axis=1)
    first = sims[:, 0] if graph.k else np.full(len(graph), NO_NEIGHBOUR)
    nn = np.where(count > 0, first, NO_NEIGHBOUR)  # rows are sorted, -inf padding last
    mean = np.where(count > 0, np.where(finite, sims, 0.0).sum(axis=1) / np.maximum(count, 1), NO_NEIGHBOUR)
    return 1.0 - (nn + mean) / 2.0, nn


def robust_cutoff(score: np.ndarray, mad_k: float) -> float:
    """The score above which a frame is flagged: median + mad_k robust standard deviations."""
    if score.size == 0:
        return np.inf
    median = float(np.median(score))
    spread = MAD_TO_SD * float(np.median(np.abs(score - median)))
    if spread == 0:
        spread = MEAN_AD_TO_SD * float(np.mean(np.abs(score - median)))
    return median + mad_k * spread if spread > 0 else np.inf


def outliers(graph: KnnGraph, mad_k: float) -> pd.DataFrame:
    """Every frame ranked by outlier score (rank 1 = least like anything else): rank, row, score,
    nn_similarity, flagged (score above the robust cut-off)."""
    if mad_k < 0:
        raise ValueError(f"outlier_mad_k must be non-negative, got {mad_k}")
    score, nn = outlier_scores(graph)
    rows = np.arange(len(graph), dtype=np.int64)
    order = np.lexsort((rows, -score))
    cutoff = robust_cutoff(score, mad_k)
    return pd.DataFrame(
        {
            "rank": np.arange(1, len(graph) + 1, dtype=np.int64),
            "row": rows[order],
            "score": score[order].astype(np.float32),
            "nn_similarity": nn[order].astype(np.float32),
            "flagged": score[order] > cutoff,
        }
    )
