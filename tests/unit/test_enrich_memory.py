"""The ENRICH greedy's memory (issue 15): at most 1.5 GB per million 128-d frames beyond what it reads,
measured (tracemalloc: every numpy allocation) on 100k rows."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from enrich_ray.selection.enrich import enrich_greedy

BUDGET_PER_MILLION = 1.5e9  # bytes beyond the embeddings, per million frames of 128-d


def clustered_rows(n: int, d: int = 128, centres: int = 500, seed: int = 0) -> np.ndarray:
    """Unit rows around random directions (the clustered path's usual case), float32."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d), dtype=np.float32)
    x = c[rng.integers(centres, size=n)]
    x += rng.standard_normal((n, d), dtype=np.float32) * 0.08
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


@pytest.mark.slow
def test_clustered_greedy_memory_on_100k_rows():
    n = 100_000
    x = clustered_rows(n)
    budget = BUDGET_PER_MILLION * n / 1e6  # 150 MB
    tracemalloc.start()
    try:
        ranking = enrich_greedy(x, [0], 3_000, method="clustered")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ranking.order.size == 3_001
    assert peak <= budget, f"the greedy allocated {peak / 1e6:.0f} MB beyond the {x.nbytes / 1e6:.0f} MB it reads"
    # the measurement sees the greedy's own copies: the checked rows and the index's reordered rows
    assert peak >= 2 * x.nbytes
