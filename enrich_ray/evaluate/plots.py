"""Plots in the style of the paper's Fig. 3: mean ± sd test AUC per training fraction and ranker,
asterisks for each ranker against random, red circles where a subset matches the full set.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

# The paper's colours: ENRICH blue, random yellow; the other rankers beside them.
RANKER_COLORS = {"enrich": "#1f5fbf", "random": "#e0a800", "examine": "#2a9d4b", "smi": "#8e44ad", "typiclust": "#c0392b",
                 "typiclust_enrich": "#16a085"}


def plot_auc_curves(summary: pd.DataFrame, full: tuple[float, float], path: str | Path, title: str) -> None:
    """One panel per embedder: mean ± sd AUC against the percent of training images for every
    ranker; the full training set as a black dot at 100%; significance of each ranker against
    random above each fraction; red circles on subsets indistinguishable from the full set.

    `summary` has one row per (embedder, ranker, fraction) with auc_mean, auc_sd, vs_random
    (the asterisks, empty for random itself) and matches_full.
    """
    embedders = list(dict.fromkeys(summary["embedder"]))
    fig, axes = plt.subplots(1, len(embedders), figsize=(5.2 * len(embedders), 4.2), squeeze=False, sharey=True)
    for ax, embedder in zip(axes[0], embedders):
        part = summary[summary["embedder"] == embedder]
        rankers = list(dict.fromkeys(part["ranker"]))
        for j, ranker in enumerate(rankers):
            rows = part[part["ranker"] == ranker].sort_values("fraction")
            x = rows["fraction"].to_numpy() * 100
            shift = 1 + 0.035 * (j - (len(rankers) - 1) / 2)  # side by side, so error bars stay readable
            color = RANKER_COLORS.get(ranker, "grey")
            ax.errorbar(x * shift, rows["auc_mean"], yerr=rows["auc_sd"], fmt="o-", ms=4, capsize=2, color=color, label=ranker)
            match = rows[rows["matches_full"].astype(bool)]
            ax.scatter(match["fraction"] * 100 * shift, match["auc_mean"], s=150, facecolors="none", edgecolors="red", linewidths=1.4, zorder=5)
        ax.errorbar([100], [full[0]], yerr=[full[1]], fmt="o", color="black", capsize=2, label="full set")
        ymin, ymax = ax.get_ylim()
        marks = part[part["ranker"] != "random"]
        for k, ranker in enumerate(dict.fromkeys(marks["ranker"])):
            for _, row in marks[marks["ranker"] == ranker].iterrows():
                if row["vs_random"]:
                    ax.text(row["fraction"] * 100, ymax + (k + 0.3) * (ymax - ymin) * 0.05, row["vs_random"], ha="center",
                            va="bottom", fontsize=7, color=RANKER_COLORS.get(ranker, "grey"))
        ax.set_ylim(ymin, ymax + (len(set(marks["ranker"])) + 0.5) * (ymax - ymin) * 0.05)
        ticks = sorted(set(part["fraction"] * 100) | {100.0})
        ax.set_xscale("log")
        ax.set_xticks(ticks, [f"{t:.1f}".rstrip("0").rstrip(".") for t in ticks])  # 1.9966 (94 of 4,708) reads 2
        ax.minorticks_off()
        ax.set_title(f"{title}: {embedder} embedding", fontsize=10)
        ax.set_xlabel("training images used (%, log scale)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test AUC (mean ± sd)")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.text(0.01, 0.01, "first point: the random seed set every ranker grows; marks: each ranker vs random (two-sided Mann-Whitney U); "
             "red circles: not distinguishable from the full set",
             fontsize=7, color="dimgrey")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
