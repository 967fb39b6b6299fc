"""The seed set ENRICH grows from: the frames already labeled, or a seeded random draw."""
from __future__ import annotations

import numpy as np

from enrich_ray.config import SelectionConfig


def seed_rows(n: int, cfg: SelectionConfig, labeled_mask: np.ndarray | None = None) -> np.ndarray:
    """Seed row indices (int64, ascending): the labeled rows when a mask is given, else a random draw.

    The draw takes `cfg.seed_count` frames when set, else `cfg.seed_fraction` of the n frames (at
    least one), seeded by `cfg.random_seed` so a rerun gives the same seeds.
    """
    if n < 1:
        raise ValueError("there are no frames to seed from")
    if labeled_mask is not None:
        mask = np.asarray(labeled_mask)
        if mask.shape != (n,) or mask.dtype != bool:
            raise ValueError(f"labeled_mask must be a boolean array of shape ({n},), got {mask.dtype} {mask.shape}")
        rows = np.flatnonzero(mask).astype(np.int64)
        if rows.size == 0:
            raise ValueError("labeled_mask marks no frame as labeled: the seed set would be empty")
        return rows
    if cfg.seed_count is not None:
        if not 1 <= cfg.seed_count <= n:
            raise ValueError(f"selection.seed_count must be between 1 and the {n} frames, got {cfg.seed_count}")
        count = cfg.seed_count
    elif cfg.seed_fraction is not None:
        if not 0.0 < cfg.seed_fraction <= 1.0:
            raise ValueError(f"selection.seed_fraction must be in (0, 1], got {cfg.seed_fraction}")
        count = max(1, round(cfg.seed_fraction * n))
    else:
        raise ValueError("set selection.seed_count, selection.seed_fraction or a seed manifest")
    rng = np.random.default_rng(cfg.random_seed)
    return np.sort(rng.choice(n, size=count, replace=False)).astype(np.int64)
