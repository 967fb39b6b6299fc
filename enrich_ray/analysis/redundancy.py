"""Redundancy (paper, Fig. 1): each frame's maximum similarity to any other frame, and its distribution.

The shares above 0.5, 0.7 and 0.9, quantiles and the cumulative distribution, for the whole archive
and per group (modality, patient, study: any columns of a DataFrame aligned with the frames).
The empirical CDF and the share helper live with the report's plots; this module adds the
statistics and the several-datasets plot the evaluation job reuses.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from enrich_ray.report.plots import MAX_CURVE_POINTS, REDUNDANCY_THRESHOLDS, redundancy_cdf, share_above

QUANTILES = {"q10": 0.1, "q25": 0.25, "median": 0.5, "q75": 0.75, "q90": 0.9}
CDF_POINTS = 101  # points of the CDF kept in the statistics


def cdf_points(nn_similarity: np.ndarray, n_points: int) -> tuple[np.ndarray, np.ndarray]:
    """At most n_points evenly spaced points of the empirical CDF (first and last kept)."""
    x, y = redundancy_cdf(np.asarray(nn_similarity, dtype=np.float64))
    if x.size > n_points:
        keep = np.unique(np.linspace(0, x.size - 1, n_points).round().astype(np.int64))
        x, y = x[keep], y[keep]
    return x, y


def _summary(values: np.ndarray) -> dict:
    """Scalar statistics of one set of 1-NN similarities (frames without any other are counted apart)."""
    finite = values[np.isfinite(values)]
    out: dict = {"n": int(values.size), "n_alone": int(values.size - finite.size)}
    out.update({f"share_above_{t}": share for t, share in share_above(values, REDUNDANCY_THRESHOLDS).items()})
    if finite.size:
        out["mean"] = float(finite.mean())
        out.update({name: float(np.quantile(finite, q)) for name, q in QUANTILES.items()})
    return out


def _per_value(values: np.ndarray, keys: pd.Series) -> dict:
    """_summary of the frames sharing each known value of one group column."""
    keys = keys.reset_index(drop=True)
    return {str(key): _summary(values[rows]) for key, rows in keys.groupby(keys, dropna=True).indices.items()}


def redundancy_stats(nn_similarity: np.ndarray, groups: pd.DataFrame | None = None) -> dict:
    """Shares above 0.5/0.7/0.9, mean, quantiles and CDF points of the 1-NN similarities; with `groups`
    (one row per frame), the same scalars per value of each column, unknown (null) values skipped."""
    values = np.asarray(nn_similarity, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"nn_similarity must be 1-D (one value per frame), got shape {values.shape}")
    stats = _summary(values)
    x, y = cdf_points(values, CDF_POINTS)
    stats["cdf"] = {"similarity": x.tolist(), "fraction": y.tolist()}
    if groups is not None:
        if len(groups) != values.size:
            raise ValueError(f"groups has {len(groups)} rows, nn_similarity {values.size}: one row per frame needed")
        stats["per_group"] = {str(column): _per_value(values, groups[column]) for column in groups.columns}
    return stats


def plot_redundancy(curves: dict[str, np.ndarray], path: str | Path) -> Path:
    """Cumulative fraction of frames vs maximum similarity to any other frame, one line per dataset
    (the paper's Fig. 1), written as a PNG to a local path."""
    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.add_subplot()
    low = 0.0
    for name, nn in curves.items():
        x, y = cdf_points(nn, MAX_CURVE_POINTS)
        if x.size:
            ax.step(x, y, where="post", linewidth=2, label=f"{name} ({np.isfinite(np.asarray(nn, float)).sum():,})")
            low = min(low, float(x[0]))
    for t in REDUNDANCY_THRESHOLDS:
        ax.axvline(t, color="#999999", linestyle="--", linewidth=1)
    ax.set_xlim(low, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("maximum similarity to any other image")
    ax.set_ylabel("cumulative fraction of images")
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(loc="upper left")
    fig.tight_layout()
    FigureCanvasAgg(fig)
    path = Path(path)
    fig.savefig(path, format="png", dpi=100)
    return path
