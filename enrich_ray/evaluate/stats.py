"""The statistics of the paper's Fig. 3: Mann-Whitney comparisons of test AUCs between rankers
and against the full training set, and the smallest training fraction that matches the full set.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import mannwhitneyu

# The paper's convention: ns p > 0.05, * p <= 0.05, ** <= 0.01, *** <= 0.001, **** <= 0.0001.
SIGNIFICANCE_LEVELS = ((1e-4, "****"), (1e-3, "***"), (1e-2, "**"), (5e-2, "*"))


def mann_whitney_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Mann-Whitney U p-value of two samples of AUCs (scipy); 1.0 when every value is equal."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.size == 0 or y.size == 0:
        raise ValueError(f"Mann-Whitney needs two non-empty samples, got sizes {x.size} and {y.size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("Mann-Whitney samples contain NaN or infinite values")
    if np.ptp(np.concatenate([x, y])) == 0:
        return 1.0  # no evidence of any difference; scipy's normal approximation would give NaN
    return float(mannwhitneyu(x, y, alternative="two-sided").pvalue)


def significance_mark(p: float) -> str:
    """The paper's asterisks for a p-value: 'ns', '*', '**', '***' or '****'."""
    for level, mark in SIGNIFICANCE_LEVELS:
        if p <= level:
            return mark
    return "ns"


def smallest_matching_fraction(fractions: Sequence[float], p_vs_full: Sequence[float], alpha: float = 0.05) -> float | None:
    """The smallest fraction from which this and every larger fraction is indistinguishable from the
    full training set (p > alpha); None when even the largest fraction differs.

    Requiring every larger fraction too keeps a lucky small fraction, followed by significant
    shortfalls, from being reported as the labeling budget.
    """
    f = np.asarray(fractions, dtype=np.float64)
    p = np.asarray(p_vs_full, dtype=np.float64)
    if f.shape != p.shape or f.ndim != 1:
        raise ValueError(f"fractions and p-values must be 1-D of equal length, got {f.shape} and {p.shape}")
    if f.size and np.unique(f).size != f.size:
        raise ValueError("fractions repeat a value")
    order = np.argsort(f)
    best: float | None = None
    for i in order[::-1]:
        if not p[i] > alpha:
            break
        best = float(f[i])
    return best
