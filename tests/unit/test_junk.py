"""Junk leaves the ranking by default: blank frames, flagged foreign frames, exact copies but one."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from enrich_ray.analysis.outliers import appearance_features, outlier_table
from enrich_ray.config import AnalysisConfig, SelectionConfig
from enrich_ray.selection.junk import junk_rows, ranking_rows
from tests.unit.foreign_archive import build_archive, synthetic_clean


def tables() -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    outliers = pd.DataFrame({"rank": [1, 2, 3, 4, 5, 6], "row": [4, 2, 0, 1, 3, 5],
                             "flagged": [True, True, False, False, False, False],
                             "reason": ["modality CT rare (1 of 6 frames)", "blank frame", "", "", "", ""]})
    duplicates = pd.DataFrame({"group_id": [0, 0, 0, 1, 1], "row": [0, 1, 3, 2, 5],
                               "kind": ["exact", "exact", "near", "exact", "exact"],
                               "is_representative": [True, False, False, True, False]})
    blank = np.array([False, False, True, False, False, False])
    return outliers, duplicates, blank


def test_junk_rows_and_their_reasons():
    outliers, duplicates, blank = tables()
    junk = junk_rows(outliers, duplicates, blank)
    assert junk["row"].tolist() == [1, 2, 4, 5]
    assert junk["why"].tolist() == ["exact duplicate", "blank", "foreign", "exact duplicate"]
    assert junk["reason"].tolist() == ["exact duplicate of row 0", "blank frame", "foreign: modality CT rare (1 of 6 frames)",
                                       "exact duplicate of row 2"]
    # The near member (row 3) and the representatives stay; without blank flags the outlier flag still holds.
    assert ranking_rows(6, junk, SelectionConfig()).tolist() == [0, 3]
    assert ranking_rows(6, junk, SelectionConfig(exclude_junk=False)).tolist() == list(range(6))
    assert junk_rows(outliers, duplicates)["reason"].tolist()[1] == "foreign: blank frame"
    empty = junk_rows(outliers.assign(flagged=False), duplicates.iloc[0:0])
    assert empty.empty and list(empty.columns) == ["row", "why", "reason"]
    assert ranking_rows(6, empty, SelectionConfig()).tolist() == list(range(6))
    with pytest.raises(ValueError, match="duplicates table lacks columns"):
        junk_rows(outliers, duplicates.drop(columns=["kind"]))


def test_planted_foreign_frames_leave_the_ranking():
    archive = build_archive(synthetic_clean(300))
    table = outlier_table(archive.graph, archive.embeddings, appearance_features(archive.pixels), archive.header,
                          archive.duplicate_group, AnalysisConfig())
    no_duplicates = pd.DataFrame(columns=["group_id", "row", "kind", "is_representative"])
    junk = junk_rows(table, no_duplicates, archive.header["is_constant"].to_numpy(bool))
    kept = ranking_rows(len(table), junk, SelectionConfig())
    assert np.isin(np.flatnonzero(archive.foreign), junk["row"]).mean() >= 0.9
    assert (~archive.foreign[kept]).sum() >= 0.98 * (~archive.foreign).sum()  # few clean frames leave
    assert junk.set_index("row").loc[np.flatnonzero(archive.kind == "blank")[0], "why"] == "blank"
