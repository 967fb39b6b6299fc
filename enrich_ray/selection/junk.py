"""Junk: the frames that leave the ENRICH ranking by default, each with the reason.

A ranking that rewards novelty puts a blank frame, a CT slice among ultrasound or a photograph
first, and an exact copy adds nothing a person has not already labeled. By default
(SelectionConfig.exclude_junk) these rows are ranked apart: blank frames, frames the outlier
table flags as foreign, and members of an 'exact' duplicate group other than its representative.
The caller ranks `ranking_rows` and lists `junk_rows` on their own.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from enrich_ray.config import AnalysisConfig, IndexConfig, SelectionConfig

JUNK_COLUMNS = {"row": np.int64, "why": object, "reason": object}


def junk_rows(outliers: pd.DataFrame, duplicates: pd.DataFrame, blank: np.ndarray | None = None) -> pd.DataFrame:
    """One row per frame that leaves the ranking: row, why ('blank' | 'exact duplicate' | 'foreign',
    the first that applies), reason (every cause, for a person). outliers: columns row, flagged and
    optionally reason; duplicates: group_id, row, kind ('exact'|'near'), is_representative; blank:
    a bool per frame (row order), or None to read no blank flags."""
    for name, table, needed in (("outliers", outliers, {"row", "flagged"}),
                                ("duplicates", duplicates, {"group_id", "row", "kind", "is_representative"})):
        missing = needed - set(table.columns)
        if missing:
            raise ValueError(f"junk_rows: the {name} table lacks columns {sorted(missing)}")
    causes: dict[int, list[tuple[str, str]]] = {}
    if blank is not None:
        for row in np.flatnonzero(np.asarray(blank, dtype=bool)):
            causes.setdefault(int(row), []).append(("blank", "blank frame"))
    copies = duplicates[(duplicates["kind"] == "exact") & ~duplicates["is_representative"].astype(bool)]
    reps = duplicates[duplicates["is_representative"].astype(bool)].set_index("group_id")["row"]
    for rec in copies.itertuples():
        rep = reps.get(rec.group_id)
        text = f"exact duplicate of row {int(rep)}" if rep is not None else "exact duplicate"
        causes.setdefault(int(rec.row), []).append(("exact duplicate", text))
    flagged = outliers[outliers["flagged"].astype(bool)]
    reasons = flagged["reason"] if "reason" in flagged else pd.Series("", index=flagged.index)
    for row, reason in zip(flagged["row"].astype(int), reasons):
        is_blank = any(why == "blank" for why, _ in causes.get(row, []))
        if is_blank and reason in ("", "blank frame"):
            continue  # flagged for being blank, said already
        causes.setdefault(row, []).append(("foreign", f"foreign: {reason}" if reason else "flagged outlier"))
    order = {"blank": 0, "exact duplicate": 1, "foreign": 2}
    rows = sorted(causes)
    data = {
        "row": rows,
        "why": [min(causes[r], key=lambda c: order[c[0]])[0] for r in rows],
        "reason": ["; ".join(text for _, text in causes[r]) for r in rows],
    }
    return pd.DataFrame({c: pd.Series(data[c], dtype=t) for c, t in JUNK_COLUMNS.items()})


def ranking_rows(n: int, junk: pd.DataFrame, cfg: SelectionConfig) -> np.ndarray:
    """The rows 0..n-1 the ranker sees: all but the junk rows, or every row when cfg.exclude_junk is false."""
    rows = np.arange(n, dtype=np.int64)
    if not cfg.exclude_junk or junk.empty:
        return rows
    return rows[~np.isin(rows, junk["row"].to_numpy(np.int64))]


def junk_of_images(embeddings: np.ndarray, images: np.ndarray, analysis: AnalysisConfig, index: IndexConfig) -> pd.DataFrame:
    """junk_rows of a set of decoded frames held in memory ((N, s, s) in [0, 1], with their embeddings),
    judged as curate judges an archive: exact and near-duplicate groups, then the outlier table. For
    callers without a run folder (the evaluation job's training split); no header facts are known."""
    from enrich_ray.analysis.duplicates import archive_duplicates, duplicate_families, thumbnails
    from enrich_ray.analysis.outliers import appearance_features, neighbourhood_space, outlier_table
    from enrich_ray.decode.stage import pixel_hash
    from enrich_ray.index.knn import knn_graph

    n = len(images)
    graph = knn_graph(embeddings, min(index.k, n - 1), index)
    thumbs = thumbnails(images)
    dups = archive_duplicates(graph, embeddings, analysis, index, [pixel_hash(f) for f in images], thumbs=thumbs)
    blank = np.ptp(images.reshape(n, -1), axis=1) == 0
    space = neighbourhood_space(analysis.outlier_space, graph, embeddings, thumbs, analysis.outlier_scales, index)
    outl = outlier_table(*space, appearance_features(images), pd.DataFrame({"is_constant": blank}),
                         duplicate_families(dups, n), analysis)
    return junk_rows(outl, dups, blank)


def excluded_rows(outliers: pd.DataFrame, duplicates: pd.DataFrame, n: int, cfg: SelectionConfig) -> tuple[pd.DataFrame, np.ndarray]:
    """The junk rows that leave the ranking (blank frames read from the outlier table's is_constant) and
    the rows that stay; with cfg.exclude_junk false every row stays and none is listed."""
    blank = None
    if "is_constant" in outliers.columns:
        blank = np.zeros(n, bool)
        blank[outliers["row"].to_numpy(np.int64)] = outliers["is_constant"].to_numpy(bool)
    junk = junk_rows(outliers, duplicates.drop_duplicates("row"), blank) if len(outliers) else \
        pd.DataFrame({c: pd.Series(dtype=t) for c, t in JUNK_COLUMNS.items()})
    keep = ranking_rows(n, junk, cfg)
    return (junk.iloc[:0] if len(keep) == n else junk), keep
