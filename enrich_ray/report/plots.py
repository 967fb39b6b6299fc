"""The report's pictures as PNG bytes (the redundancy curve, the coverage curve, frame thumbnails) and
the embedding map's 2-D projection (drawn by the template as inline SVG).

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so nothing global changes
and the report can be built in any thread or Ray worker.
"""
from __future__ import annotations

import io
from collections.abc import Mapping

import cv2
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

THUMB_SIZE = 96  # pixels on screen for one 64x64 frame
MAX_CURVE_POINTS = 4000  # a curve over millions of frames is drawn through this many of its points
REDUNDANCY_THRESHOLDS = (0.5, 0.7, 0.9)  # the report's table: share of frames above each
# The suggested labeling budget: the first point of the coverage curve where the next
# BUDGET_WINDOW frames shrink the coverage radius by at most BUDGET_MIN_GAIN of its whole
# drop over the ranking (suggested_budget).
BUDGET_WINDOW = 100  # frames
BUDGET_MIN_GAIN = 0.02  # share of the ranking's whole drop in coverage radius
MAP_MAX_POINTS = 2000  # the embedding map draws at most this many frames (a seeded sample beyond)


def redundancy_cdf(nn_similarity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The empirical CDF of the finite 1-NN similarities: sorted values and cumulative fractions."""
    x = np.sort(nn_similarity[np.isfinite(nn_similarity)])
    return x, np.arange(1, x.size + 1) / max(x.size, 1)


def share_above(nn_similarity: np.ndarray, thresholds: tuple[float, ...]) -> dict[float, float]:
    """Share of frames whose maximum similarity to any other frame exceeds each threshold."""
    finite = nn_similarity[np.isfinite(nn_similarity)]
    return {t: float((finite > t).mean()) if finite.size else 0.0 for t in thresholds}


def manifest_coverage(manifest: pd.DataFrame) -> tuple[np.ndarray, np.ndarray] | None:
    """The coverage curve of a rank-sorted manifest: (frames labeled, coverage radius 1 − similarity), seed rows
    left out; None when the manifest records no coverage."""
    curve = manifest.reindex(columns=["rank", "coverage_similarity"]).dropna()
    if curve.empty:
        return None
    return curve["rank"].to_numpy(dtype=np.int64), 1.0 - curve["coverage_similarity"].to_numpy(dtype=np.float64)


def budget_frames(manifest: pd.DataFrame, budget: int | None) -> int:
    """How many of the manifest's frames the budget asks to label: those ranked up to it (all without one)."""
    return len(manifest) if budget is None else int((manifest["rank"] <= budget).sum())


def suggested_budget(n_labeled: np.ndarray, radius: np.ndarray) -> int | None:
    """Frames to label before labeling stops paying: the first n of the coverage curve where the next
    BUDGET_WINDOW frames (or the rest, near the end) shrink the radius by at most BUDGET_MIN_GAIN of
    its whole drop from the curve's first point to its last; None for an empty curve.

    The curve (n_labeled increasing, radius not increasing) is the report's coverage curve: a
    greedy ranking shrinks the radius fast first, then by ever less as the archive is covered.
    """
    n = np.asarray(n_labeled, dtype=np.int64)
    r = np.asarray(radius, dtype=np.float64)
    if n.size == 0:
        return None
    ahead = np.minimum(np.searchsorted(n, n + BUDGET_WINDOW), n.size - 1)
    settled = r - r[ahead] <= BUDGET_MIN_GAIN * (r[0] - r[-1])  # true at the last point at the latest
    return int(n[np.argmax(settled)])


def project_2d(embeddings: np.ndarray, keep: list[int] | np.ndarray = (), max_points: int = MAP_MAX_POINTS,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The embedding map's points: (rows, xy), the frames drawn (every row, or the rows in `keep` and a
    seeded sample of the rest, at most max_points in all, sorted) and their first two principal components.

    Plain PCA with numpy (SVD of the centred codes): linear, deterministic and with no new dependency;
    each component's sign is fixed (its largest loading positive) so reruns draw the same map.
    """
    emb = np.asarray(embeddings, dtype=np.float64)
    n = len(emb)
    keep = np.unique(np.asarray(keep, dtype=np.int64))[:max_points]
    if n <= max_points:
        rows = np.arange(n)
    else:
        rest = np.setdiff1d(np.arange(n), keep)
        drawn = np.random.default_rng(seed).choice(rest, size=max_points - keep.size, replace=False)
        rows = np.sort(np.concatenate([keep, drawn]))
    xy = np.zeros((rows.size, 2))
    if rows.size < 2:
        return rows, xy
    centred = emb[rows] - emb[rows].mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    axes = vt[:2]
    axes *= np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])[:, None]
    xy[:, : len(axes)] = centred @ axes.T
    return rows, xy


def _thin(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most MAX_CURVE_POINTS evenly spaced points of a curve, its first and last kept."""
    if x.size <= MAX_CURVE_POINTS:
        return x, y
    keep = np.unique(np.linspace(0, x.size - 1, MAX_CURVE_POINTS).astype(np.int64))
    return x[keep], y[keep]


def _png(fig: Figure) -> bytes:
    """The figure rendered as PNG bytes."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


# Colours of the per-modality redundancy curves (the archive's own curve is blue).
MODALITY_COLORS = ("#b5462a", "#2e8540", "#7b4fa8", "#c28a00", "#2b8cbe", "#666666")


def redundancy_png(nn_similarity: np.ndarray, by_modality: Mapping[str, np.ndarray] | None = None) -> bytes:
    """Cumulative fraction of frames vs each frame's maximum similarity to any other (paper, Fig. 1);
    by_modality: the same curve for the frames of each modality, drawn beside the archive's."""
    x, y = redundancy_cdf(nn_similarity)
    n = x.size
    x, y = _thin(x, y)
    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.add_subplot()
    ax.step(x, y, where="post", color="#1f5fa8", linewidth=2, label=f"all frames ({n:,})")
    for (name, values), color in zip((by_modality or {}).items(), MODALITY_COLORS):
        mx, my = _thin(*redundancy_cdf(values))
        ax.step(mx, my, where="post", color=color, linewidth=1.2, label=f"{name} ({values.size:,})")
    if by_modality:
        ax.legend(loc="upper left", fontsize=8)
    for t in REDUNDANCY_THRESHOLDS:
        ax.axvline(t, color="#999999", linestyle="--", linewidth=1)
    ax.set_xlim(min(0.0, float(x[0]) if x.size else 0.0), 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("maximum similarity to any other frame")
    ax.set_ylabel("cumulative fraction of frames")
    ax.set_title(f"Redundancy ({n:,} frames)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def coverage_figure(n_labeled: np.ndarray, radius: np.ndarray, seconds_per_image: float,
                    budget: int | None = None) -> Figure:
    """Coverage radius vs frames labeled on axes that start at the data, the labeling time in hours on the
    top axis, and the suggested budget (suggested_budget) marked with the hours there."""
    n_labeled, radius = np.asarray(n_labeled), np.asarray(radius, dtype=np.float64)
    n_full, r_full = n_labeled, radius
    n_labeled, radius = _thin(n_labeled, radius)
    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.add_subplot()
    ax.plot(n_labeled, radius, color="#b5462a", linewidth=2)
    low, high = float(radius.min()), float(radius.max())
    pad = 0.03 * (high - low) or 0.01
    ax.set_ylim(low - pad, high + pad)
    ax.set_xlim(float(n_labeled[0]), float(n_labeled[-1]) if n_labeled[-1] > n_labeled[0] else float(n_labeled[0]) + 1.0)
    if budget is not None:
        at = float(r_full[np.searchsorted(n_full, budget)])
        hours = budget * seconds_per_image / 3600.0
        ax.axvline(budget, color="#1d1d1f", linestyle="--", linewidth=1.2)
        ax.plot([budget], [at], marker="o", color="#1d1d1f")
        right = budget > n_labeled[0] + 0.6 * (n_labeled[-1] - n_labeled[0])  # near the right edge: text to the left
        minutes = f" ({hours * 60:.0f} min)" if hours < 1 else ""
        ax.annotate(f"suggested budget: {budget:,} frames, {hours:.2g} h{minutes}", xy=(budget, at),
                    xytext=(-8 if right else 8, 40), textcoords="offset points", ha="right" if right else "left",
                    fontsize=9, color="#1d1d1f")
    ax.set_xlabel("frames labeled (in ranked order)")
    ax.set_ylabel("coverage radius (1 − similarity)")
    ax.grid(alpha=0.3)
    hours_axis = ax.secondary_xaxis(
        "top", functions=(lambda n: n * seconds_per_image / 3600.0, lambda h: h * 3600.0 / seconds_per_image)
    )
    hours_axis.set_xlabel(f"labeling time, hours at {seconds_per_image:g} s per frame")
    fig.tight_layout()
    return fig


def coverage_png(n_labeled: np.ndarray, radius: np.ndarray, seconds_per_image: float, budget: int | None = None) -> bytes:
    """coverage_figure as PNG bytes."""
    return _png(coverage_figure(n_labeled, radius, seconds_per_image, budget))


def thumbnail_png(frame: np.ndarray, size: int = THUMB_SIZE) -> bytes:
    """One preprocessed frame (values in [0, 1]) as a size x size greyscale PNG."""
    grey = np.nan_to_num(np.asarray(frame, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    grey = (np.clip(grey, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    grey = cv2.resize(grey, (size, size), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".png", grey)
    if not ok:
        raise ValueError("could not encode a thumbnail as PNG")
    return buf.tobytes()
