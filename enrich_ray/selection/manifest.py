"""The ranked manifest a person reads: one row per ranked frame, with running coverage and cost."""
from __future__ import annotations

import numpy as np
import pandas as pd

from enrich_ray.config import SelectionConfig
from enrich_ray.schema import FRAME_COLUMNS
from enrich_ray.selection.enrich import coverage_curve
from enrich_ray.selection.ranking import Ranking

KEY_COLUMNS = ["sop_uid", "patient_key", "study_uid", "series_uid", "modality", "station"]  # strings, null when unknown
# running counts of distinct groups covered so far: manifest column <- frames column
COVERED = {"patients_covered": "patient_key", "studies_covered": "study_uid", "series_covered": "series_uid",
           "stations_covered": "station"}


def build_manifest(
    ranking: Ranking,
    frames: pd.DataFrame,
    cfg: SelectionConfig,
    embeddings: np.ndarray,
    *,
    with_coverage: bool = True,
    duplicate_group: np.ndarray | None = None,
    outlier_flag: np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per ranked frame, in rank order, with running coverage, groups covered and label hours.

    `frames` has one row per embedding row (a `sop_uid` column is optional). `coverage_similarity`
    is, after this row, the smallest max-similarity of any frame to the ranked set (ENRICH: the next
    pick's score; NaN on seed rows). Other rankers get it from an exact running max (cluster-pruned,
    but still up to O(N d) a row early on): pass with_coverage=False to leave the column out.
    duplicate_group (the duplicate family per frame row, -1 outside any: analysis.duplicates
    duplicate_families) and outlier_flag (flagged by the outlier table, per frame row) become the
    columns of those names (null when not given).
    """
    missing = [c for c in FRAME_COLUMNS if c not in frames.columns]
    if missing:
        raise ValueError(f"frames lack the columns {missing}")
    if len(frames) != np.asarray(embeddings).shape[0]:
        raise ValueError(f"frames has {len(frames)} rows but there are {np.asarray(embeddings).shape[0]} embeddings")
    order = ranking.order
    picked = frames.iloc[order].reset_index(drop=True)
    out = pd.DataFrame(
        {
            "rank": np.arange(1, order.size + 1, dtype=np.int64),
            "image_id": picked["image_id"],
            "frame_index": picked["frame_index"],
            "source_uri": picked["source_uri"],
            "ranker": ranking.ranker,
            "score": ranking.score.astype(np.float32),
            "is_seed": np.arange(order.size) < ranking.n_seed,
            **{key: _keys(picked[key] if key in picked else pd.Series([None] * order.size)) for key in KEY_COLUMNS},
            "duplicate_group": pd.array(np.where(duplicate_group[order] >= 0, duplicate_group[order], -1) if duplicate_group is not None
                                        else np.full(order.size, -1), dtype="Int64"),
            "outlier_flag": pd.array(np.asarray(outlier_flag, bool)[order] if outlier_flag is not None
                                     else [None] * order.size, dtype="boolean"),
        }
    )
    out.loc[out["duplicate_group"] < 0, "duplicate_group"] = pd.NA
    if with_coverage:
        coverage = ranking.coverage
        if coverage is None:
            coverage = coverage_curve(embeddings, order, ranking.n_seed)
        out["coverage_similarity"] = coverage.astype(np.float32)
    for column, key in COVERED.items():
        values = out[key]
        out[column] = (values.notna() & ~values.duplicated()).cumsum().astype(np.int64)
    out["cumulative_label_hours_classification"] = out["rank"] * cfg.seconds_per_image / 3600.0
    out["cumulative_label_hours_segmentation"] = out["rank"] * cfg.seconds_per_segmentation / 3600.0
    return out


def _keys(values: pd.Series) -> pd.Series:
    """Identifiers as strings, None (not NaN or '') where unknown: a string column with nulls in Parquet."""
    return pd.Series([None if pd.isna(k) or k == "" else str(k) for k in values], dtype=object)


def empty_manifest() -> pd.DataFrame:
    """The manifest of a run with nothing to rank."""
    return pd.DataFrame({"rank": pd.Series(dtype="int64"), "image_id": pd.Series(dtype="str"),
                         "frame_index": pd.Series(dtype="int32"), "source_uri": pd.Series(dtype="str"),
                         "ranker": pd.Series(dtype="str"), "score": pd.Series(dtype="float32"),
                         "is_seed": pd.Series(dtype="bool")})


def frame_judgments(dups: pd.DataFrame, outl: pd.DataFrame, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per frame row: its duplicate family (analysis.duplicates.duplicate_families; -1 outside any) and
    whether the outlier table flagged it: the manifest's duplicate_group and outlier_flag."""
    from enrich_ray.analysis.duplicates import duplicate_families

    flag = np.zeros(n, bool)
    if len(outl):
        flag[outl["row"].to_numpy(np.int64)] = outl["flagged"].to_numpy(bool)
    return duplicate_families(dups.drop_duplicates(["group_id", "row"]) if len(dups) else dups, n), flag
