"""Random ranking: the paper's negative control, seeded so a rerun gives the same order."""
from __future__ import annotations

import numpy as np

from enrich_ray.selection.ranking import Ranking, check_k, check_seed


def random_ranking(n: int, seed: np.ndarray | list[int], k: int | None = None, random_seed: int = 0) -> Ranking:
    """Seeds first, then k frames in a seeded random order; a pick's score is its random key in [0, 1)."""
    seed = check_seed(seed, n)
    k = check_k(k, n, seed.size)
    rest = np.setdiff1d(np.arange(n, dtype=np.int64), seed)
    keys = np.random.default_rng(random_seed).random(rest.size).astype(np.float32)
    by_key = np.argsort(keys, kind="stable")[:k]
    return Ranking(
        ranker="random",
        order=np.concatenate([seed, rest[by_key]]),
        score=np.concatenate([np.full(seed.size, np.nan, dtype=np.float32), keys[by_key]]),
        n_seed=seed.size,
    )
