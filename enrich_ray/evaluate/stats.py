"""The statistics of the paper's Fig. 3: Mann-Whitney comparisons of test AUCs between rankers
and against the full training set, the effect beside each p (difference in mean AUC with a Welch
t-interval), the smallest difference the run could detect, the smallest training fraction that
matches the full set, and the comparison with the seed set as the unit (the AUCs of a point are
clustered in their seed sets, which the tests over every model treat as independent).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import brentq
from scipy.stats import mannwhitneyu, nct, wilcoxon
from scipy.stats import t as student_t

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


def mean_difference_ci(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """mean(a) - mean(b) with its Welch t-interval (unequal variances, Welch-Satterthwaite degrees
    of freedom): (difference, low, high). Both samples need two values; with no spread at all the
    interval is the difference itself."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.size < 2 or y.size < 2:
        raise ValueError(f"a Welch interval needs at least two values per sample, got {x.size} and {y.size}")
    diff = float(x.mean() - y.mean())
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = float(np.sqrt(va + vb))
    if se == 0.0:
        return diff, diff, diff
    df = (va + vb) ** 2 / (va**2 / (x.size - 1) + vb**2 / (y.size - 1))
    half = float(student_t.ppf(0.5 + confidence / 2, df)) * se
    return diff, diff - half, diff + half


def seed_set_comparison(ranker_means: Sequence[float], random_means: Sequence[float],
                        confidence: float = 0.95) -> tuple[float, float, float, float]:
    """A ranker against random with the seed set as the unit: the replicates' differences of mean
    AUC (paired: entry i of both is replicate i), their mean with a one-sample t-interval, and the
    two-sided Wilcoxon signed-rank p (scipy; exact for small samples without ties or zeros):
    (difference, low, high, p). Needs two replicates; with r of them p is at least 2 / 2**r."""
    d = np.asarray(ranker_means, dtype=np.float64) - np.asarray(random_means, dtype=np.float64)
    if d.ndim != 1 or d.size < 2:
        raise ValueError(f"a comparison by seed set needs two or more paired replicates, got {d.size}")
    if not np.isfinite(d).all():
        raise ValueError("the replicates' mean AUCs contain NaN or infinite values")
    diff = float(d.mean())
    se = float(d.std(ddof=1) / np.sqrt(d.size))
    half = float(student_t.ppf(0.5 + confidence / 2, d.size - 1)) * se
    p = 1.0 if not d.any() else float(wilcoxon(d, alternative="two-sided").pvalue)
    return diff, diff - half, diff + half, p


def pooled_sd(a: Sequence[float], b: Sequence[float]) -> float:
    """The pooled standard deviation of two samples (n - 1 weights)."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.size + y.size < 3:
        raise ValueError("a pooled sd needs at least three values in all")
    ss = x.var(ddof=1) * (x.size - 1) if x.size > 1 else 0.0
    ss += y.var(ddof=1) * (y.size - 1) if y.size > 1 else 0.0
    return float(np.sqrt(ss / (x.size + y.size - 2)))


def minimum_detectable_difference(sd: float, n_a: int, n_b: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true difference in means that a two-sided two-sample t-test at level alpha
    detects with the given power, for samples of n_a and n_b with common sd (noncentral t, exact).
    Mann-Whitney's power on normal data is about 95% of the t-test's, so its detectable difference
    is about 2% larger: read this as the resolution of the run, not a guarantee."""
    if n_a < 2 or n_b < 2 or not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"need n >= 2 per sample and alpha, power in (0, 1), got {n_a}, {n_b}, {alpha}, {power}")
    if sd == 0:
        return 0.0
    df = n_a + n_b - 2
    crit = float(student_t.ppf(1 - alpha / 2, df))
    scale = np.sqrt(1 / n_a + 1 / n_b)

    def power_minus_target(ncp: float) -> float:
        upper = float(np.nan_to_num(nct.sf(crit, df, ncp), nan=1.0))  # scipy gives NaN far in the tail
        lower = float(np.nan_to_num(nct.cdf(-crit, df, ncp), nan=0.0))
        return upper + lower - power

    ncp = brentq(power_minus_target, 0.0, 10.0 + 2 * crit, xtol=1e-10)
    return float(ncp * scale * sd)


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
