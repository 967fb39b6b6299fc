"""The result every ranker returns, and the input checks they share.

A ranking is a permutation prefix of the embedding rows: the seed set first, in the order
given, then the ranker's picks. Scores are per position and NaN for the seed rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Ranking:
    """Rows in ranked order (seeds first), a score per row, and optionally the coverage curve.

    `coverage[i]`: after ranking positions 0..i, the smallest maximum similarity of any frame
    to the ranked set (ranked frames count as 1); NaN on seed rows. None when not computed.
    """

    ranker: str
    order: np.ndarray  # int64
    score: np.ndarray  # float32, NaN on seed rows
    n_seed: int
    coverage: np.ndarray | None = None  # float32
    info: dict = field(default_factory=dict)  # what a person should know, e.g. a pool that cut the ranking short


def check_embeddings(embeddings: np.ndarray) -> np.ndarray:
    """The embeddings as a C-contiguous float32 (N, d) array of unit rows, or a clear ValueError.

    Rows must have norm 1 ± 1e-3; they are renormalised, so every ranker sees exact unit rows."""
    x = np.asarray(embeddings)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"embeddings must be a non-empty (N, d) array, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"embeddings must be floating point, got {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or infinite values")
    norms = np.linalg.norm(x, axis=1)
    if np.abs(norms - 1.0).max() > 1e-3:
        worst = int(np.abs(norms - 1.0).argmax())
        raise ValueError(f"embeddings must have unit rows (L2-normalised); row {worst} has norm {norms[worst]:.4f}")
    # Rows within the tolerance are renormalised: the clustered ENRICH bounds assume |x| = 1 to 1e-5.
    return np.ascontiguousarray(x / norms[:, None], dtype=np.float32)


def check_seed(seed: np.ndarray | list[int], n: int) -> np.ndarray:
    """Seed row indices as int64, checked: at least one, in range, no repeats."""
    s = np.asarray(seed)
    if s.ndim != 1 or s.size == 0:
        raise ValueError("the seed set needs at least one row index (a 1-D list)")
    if not np.issubdtype(s.dtype, np.integer):
        raise ValueError(f"seed rows must be integers, got {s.dtype}")
    s = s.astype(np.int64)
    if s.min() < 0 or s.max() >= n:
        raise ValueError(f"seed rows must lie in [0, {n}), got {int(s.min())}..{int(s.max())}")
    if np.unique(s).size != s.size:
        raise ValueError("seed rows repeat a row")
    return s


def check_k(k: int | None, n: int, n_seed: int) -> int:
    """How many picks follow the seed set: k, capped by the frames left; None means all."""
    left = n - n_seed
    if k is None:
        return left
    if isinstance(k, bool) or int(k) != k or k < 0:
        raise ValueError(f"k must be a non-negative integer or None, got {k!r}")
    return min(int(k), left)
