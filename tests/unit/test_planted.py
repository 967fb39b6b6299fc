"""Planted truth: the generator on the synthetic base (files pack, copies decode identical, near-dups do
not, shares and determinism) and the scoring functions on hand-made run tables."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from enrich_ray import schema
from enrich_ray.analysis.duplicates import thumbnails
from enrich_ray.config import DecodeConfig
from enrich_ray.decode.stage import decode_batch
from enrich_ray.io.pack import pack
from enrich_ray.truth import ROLES, TRUTH_COLUMNS, plant_archive, read_truth, score_exact, score_foreign, score_near, score_run
from enrich_ray.truth.planted import NEAR_TRANSFORMS, PHOTOS, _photo
from enrich_ray.truth.scoring import relative_path

N_BASE = 60


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("planted")
    truth = plant_archive(out, "synthetic", n_base=N_BASE, seed=0, foreign_share=0.2, near_dup_share=0.25,
                          pixel_copy_share=0.1)
    return out, truth


def _decoded(root: Path, paths: list[str]) -> dict[tuple[str, int], np.ndarray]:
    fmt = {".png": "png", ".jpg": "jpeg", ".dcm": "dicom"}
    rows = [{"image_id": p, "source_uri": p, "source_uris": [p], "format": fmt[Path(p).suffix], "size_bytes": 0,
             "data": (root / p).read_bytes()} for p in paths]
    cfg = DecodeConfig()
    frames, errors = decode_batch(pa.Table.from_pylist(rows, schema=schema.ARCHIVE), cfg)
    assert errors.num_rows == 0
    px = frames.column("pixels").combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, cfg.size, cfg.size)
    return {(p, int(k)): x for p, k, x in zip(frames.column("image_id").to_pylist(), frames.column("frame_index").to_pylist(), px)}


def test_files_exist_and_pack(planted, tmp_path):
    out, truth = planted
    assert list(truth.columns) == TRUTH_COLUMNS
    assert set(truth["role"]) == set(ROLES)
    assert all((out / p).is_file() for p in truth["path"].unique())
    pd.testing.assert_frame_equal(read_truth(out), truth)
    summary = pack([str(out)], str(tmp_path / "archive"), progress=False)
    files = truth.drop_duplicates("path")
    assert summary.files_packed == len(files)
    assert summary.images == files["image_id"].nunique()
    assert summary.duplicate_paths == (truth["role"] == "byte_copy").sum()
    assert summary.skipped == {"not an image": 1}  # truth.csv


def test_copies_decode_identical_and_near_dups_do_not(planted):
    out, truth = planted
    decoded = _decoded(out, list(truth["path"].unique()))
    for role, identical in (("byte_copy", True), ("pixel_copy", True), ("near_dup", False), ("cine", False)):
        rows = truth[truth["role"] == role]
        assert len(rows)
        for p, k, o in zip(rows["path"], rows["frame_index"], rows["original"]):
            assert np.array_equal(decoded[(p, int(k))], decoded[(o, 0)]) == identical, (role, p)
    pixel = truth[truth["role"] == "pixel_copy"]
    assert {"dicom", "png"} <= set(pixel["format"])  # re-saved PNGs and another DICOM transfer syntax
    assert (pixel["image_id"].to_numpy() != truth.set_index("path").loc[pixel["original"], "image_id"].to_numpy()).all()
    assert set(truth.loc[truth["role"] == "near_dup", "transform"]) == set(NEAR_TRANSFORMS)
    # pixel_hash equality is decoded-pixel equality, everywhere in the archive
    keys = list(zip(truth["path"], truth["frame_index"].astype(int)))
    first = {}
    for key, h in zip(keys, truth["pixel_hash"]):
        if h in first:
            assert np.array_equal(decoded[key], decoded[first[h]])
        first.setdefault(h, key)


def test_foreign_share_groups_and_kinds(planted):
    _, truth = planted
    foreign = truth["role"].isin(["foreign", "blank"])
    assert abs(foreign.mean() - 0.2) < 1.5 / len(truth)
    sizes = truth.loc[truth["foreign_group"] >= 0, "foreign_group"].value_counts()
    assert len(sizes) >= 1 and sizes.between(10, 30).all()
    assert (truth.loc[foreign, "foreign_group"] == -1).sum() >= 5  # singletons as well
    assert (truth.loc[~foreign, "foreign_kind"].fillna("") == "").all() and (truth.loc[foreign, "foreign_kind"] != "").all()
    assert {"blank", "photo", "ct"} <= set(truth["foreign_kind"])
    cine = truth[truth["role"] == "cine"]
    assert cine["path"].nunique() == 1 and list(cine["frame_index"]) == list(range(len(cine)))


def test_foreign_frames_of_two_families_are_not_one_picture(tmp_path):
    """Frames of different foreign families must differ, else the scorer counts a true duplicate as a
    false pair: no pixels shared across families (skimage's cat is chelsea), and no single test
    pattern alike a phantom slice (it was the slice of its own parameters)."""
    truth = plant_archive(tmp_path, "synthetic", n_base=200, seed=3, foreign_share=0.3)
    foreign = truth[truth["role"] == "foreign"].drop_duplicates("path")
    assert {"pattern", "phantom_series", "photo"} <= set(foreign["foreign_kind"])
    assert (foreign.groupby("pixel_hash")["family"].nunique() == 1).all()
    assert len({hashlib.sha256(_photo(name).tobytes()).digest() for name in PHOTOS}) == len(PHOTOS)
    decoded = _decoded(tmp_path, list(foreign["path"]))
    thumbs = {kind: thumbnails(np.stack([decoded[(p, 0)] for p in rows["path"]])).astype(np.float32)
              for kind, rows in foreign.groupby("foreign_kind") if kind in ("pattern", "phantom_series")}
    assert (thumbs["pattern"] @ thumbs["phantom_series"].T).max() < 0.5


def test_small_share_gives_no_group_and_rounds(tmp_path):
    truth = plant_archive(tmp_path, "synthetic", n_base=40, seed=3, foreign_share=0.05)
    n_foreign = truth["role"].isin(["foreign", "blank"]).sum()
    clean = len(truth) - n_foreign
    assert n_foreign == round(0.05 * clean / 0.95)
    assert (truth["foreign_group"] == -1).all()


def test_deterministic_for_a_seed(tmp_path):
    a = plant_archive(tmp_path / "a", "synthetic", n_base=20, seed=5, foreign_share=0.1)
    b = plant_archive(tmp_path / "b", "synthetic", n_base=20, seed=5, foreign_share=0.1)
    c = plant_archive(tmp_path / "c", "synthetic", n_base=20, seed=6, foreign_share=0.1)
    pd.testing.assert_frame_equal(a, b)
    assert all((tmp_path / "a" / p).read_bytes() == (tmp_path / "b" / p).read_bytes() for p in a["path"].unique())
    assert set(a["image_id"]) != set(c["image_id"])


def test_bad_arguments_name_the_setting(tmp_path):
    with pytest.raises(ValueError, match="base must be one of"):
        plant_archive(tmp_path, "mnist")
    with pytest.raises(ValueError, match="foreign_share"):
        plant_archive(tmp_path, "synthetic", foreign_share=0.7)
    (tmp_path / "old.png").write_bytes(b"")
    with pytest.raises(ValueError, match="is not empty"):
        plant_archive(tmp_path, "synthetic")


# --- scoring on hand-made run tables -------------------------------------------------------------

ROOT = "/archive"


def _truth() -> pd.DataFrame:
    """Three bases; b0 has a byte copy, b1 a pixel copy, b2 a near-dup; two foreign groups of 2, a blank."""
    rows = [
        # path, role, original, family, image_id, pixel_hash, foreign_group
        ("b0.png", "base", "", "b0.png", "i0", "h0", -1),
        ("c0.png", "byte_copy", "b0.png", "b0.png", "i0", "h0", -1),
        ("b1.png", "base", "", "b1.png", "i1", "h1", -1),
        ("p1.png", "pixel_copy", "b1.png", "b1.png", "ip1", "h1", -1),
        ("b2.png", "base", "", "b2.png", "i2", "h2", -1),
        ("n2.jpg", "near_dup", "b2.png", "b2.png", "in2", "hn2", -1),
        ("b3.png", "base", "", "b3.png", "i3", "h3", -1),
        ("f0.png", "foreign", "", "x", "if0", "hf0", 0),
        ("f1.png", "foreign", "", "x", "if1", "hf1", 0),
        ("g0.png", "foreign", "", "y0", "ig0", "hg0", 1),
        ("g1.png", "foreign", "", "y1", "ig1", "hg1", 1),
        ("z.png", "blank", "", "z", "iz", "hz", -1),
    ]
    t = pd.DataFrame(rows, columns=["path", "role", "original", "family", "image_id", "pixel_hash", "foreign_group"])
    t["frame_index"] = 0
    t["transform"] = np.where(t["role"] == "near_dup", "jpeg_q50", "")
    t["foreign_kind"] = np.where(t["role"].isin(["foreign", "blank"]), "k", "")
    return t


def _dup_rows(groups: list[tuple[str, list[str]]], truth: pd.DataFrame) -> pd.DataFrame:
    """Duplicates rows: (kind, [paths]) per group; the first path is the representative."""
    ids = truth.set_index("path")["image_id"]
    rows = []
    for g, (kind, paths) in enumerate(groups):
        for i, p in enumerate(paths):
            rows.append({"group_id": g, "kind": kind, "is_representative": i == 0, "image_id": ids[p], "frame_index": 0,
                         "source_uri": f"{ROOT}/{p}"})
    return pd.DataFrame(rows)


def _outliers(truth: pd.DataFrame, flagged: set[str]) -> pd.DataFrame:
    units = truth.drop_duplicates("image_id")
    order = sorted(units["path"], key=lambda p: (p not in flagged, p))
    ids = truth.set_index("path")["image_id"]
    return pd.DataFrame({"rank": np.arange(1, len(order) + 1), "image_id": [ids[p] for p in order], "frame_index": 0,
                         "flagged": [p in flagged for p in order]})


PERFECT_DUPS = [("exact", ["b0.png", "c0.png"]), ("exact", ["b1.png", "p1.png"]), ("near", ["b2.png", "n2.jpg"])]
FOREIGN = {"f0.png", "f1.png", "g0.png", "g1.png", "z.png"}


def test_perfect_run_scores_one():
    truth = _truth()
    dups = _dup_rows(PERFECT_DUPS, truth)
    exact = score_exact(truth, dups, ROOT)
    assert exact["precision"] == exact["recall"] == exact["byte_copy_recall"] == exact["pixel_copy_recall"] == 1.0
    assert exact["true_pairs"] == 2 and exact["unplanted_identical_pairs"] == 0
    near = score_near(truth, dups, ROOT)
    assert near["recall"] == 1.0 and near["false_pair_rate"] == 0.0
    assert near["pairs_by_relation"] == {"exact": 1, "planted": 1, "unplanted": 0, "false": 0, "unknown": 0}
    manifest = pd.DataFrame({"rank": [1, 2, 3, 4], "image_id": ["i0", "i1", "i2", "i3"], "frame_index": 0})
    foreign = score_foreign(truth, _outliers(truth, FOREIGN), manifest, top_share=0.5)
    assert foreign["in_top_share"] == foreign["flagged_share"] == 1.0 and foreign["clean_flagged_share"] == 0.0
    assert (foreign["groups_whole"], foreign["groups_partly"], foreign["groups_none"]) == (2, 0, 0)
    assert foreign["enrich_excluded"] == 5 and foreign["enrich_ranked"] == 0 and foreign["enrich_min_rank"] is None


def test_a_missed_group_and_a_wrong_pair_score_accordingly():
    truth = _truth()
    # the pixel copy missed; b3 wrongly called identical to b0 (and so to its byte copy)
    dups = _dup_rows([("exact", ["b0.png", "c0.png", "b3.png"]), ("near", ["b1.png", "b3.png"]), ("near", ["b2.png", "f0.png"])], truth)
    exact = score_exact(truth, dups, ROOT)
    assert exact["predicted_pairs"] == 3 and exact["correct_pairs"] == 1
    assert exact["precision"] == pytest.approx(1 / 3) and exact["recall"] == 0.5
    assert exact["byte_copy_recall"] == 1.0 and exact["pixel_copy_recall"] == 0.0 and exact["pixel_copy_listed"] == 0.0
    # the byte copy and its original both 'near' members of another frame's group: listed, not found
    near_only = _dup_rows([("near", ["b3.png", "b0.png", "c0.png"])], truth)
    assert score_exact(truth, near_only, ROOT)["byte_copy_recall"] == 0.0
    assert score_exact(truth, near_only, ROOT)["byte_copy_listed"] == 1.0
    near = score_near(truth, dups, ROOT)
    assert near["recall"] == 0.0
    # member-to-representative pairs: b3-b0 and b3-b1 (two base images), f0-b2 (a foreign frame)
    assert near["pairs_by_relation"] == {"exact": 0, "planted": 0, "unplanted": 2, "false": 1, "unknown": 0}
    assert near["false_pair_rate"] == pytest.approx(1 / 3) and near["unplanted_pair_rate"] == pytest.approx(2 / 3)
    # no content similarity known: the worst case counts both unplanted pairs false; with b3's thumbnail
    # the same picture as b0's (0.995) but not b1's (0.97), one of them
    assert near["unplanted_below_same_picture"] == 2 and near["false_pair_rate_worst"] == 1.0
    seen = dups.assign(content_similarity=np.where(dups["source_uri"].str.endswith("b3.png"),
                                                   np.where(dups["kind"] == "exact", 0.995, 0.97), 1.0))
    assert score_near(truth, seen, ROOT)["false_pair_rate_worst"] == pytest.approx(2 / 3)

    flagged = {"f0.png", "z.png", "b3.png"}  # group 0 partly, group 1 not at all, one clean frame
    manifest = pd.DataFrame({"rank": [1, 2, 3, 30], "image_id": ["ig0", "i1", "if1", "i3"], "frame_index": 0})
    foreign = score_foreign(truth, _outliers(truth, flagged), manifest, top_share=0.25, first=2)
    assert foreign["flagged_share"] == 0.4 and foreign["clean_flagged"] == 1
    assert foreign["clean_flagged_share"] == pytest.approx(1 / 6) and foreign["clean_listed"] == 6
    assert foreign["top_n"] == 3 and foreign["in_top_share"] == pytest.approx(2 / 5)  # ranks 1-3: b3, f0, z
    assert (foreign["groups_whole"], foreign["groups_partly"], foreign["groups_none"]) == (0, 1, 1)
    assert foreign["enrich_min_rank"] == 1 and foreign["enrich_median_rank"] == 2.0 and foreign["enrich_in_first_2"] == 1
    assert foreign["enrich_excluded"] == 3


def test_scoring_tolerates_missing_optional_columns():
    truth = _truth()
    dups = _dup_rows(PERFECT_DUPS, truth).drop(columns=["is_representative", "source_uri"])
    exact = score_exact(truth, dups, ROOT)
    assert exact["pixel_copy_recall"] == 1.0 and exact["precision"] == 1.0
    assert exact["byte_copy_recall"] == 0.0  # without source_uri a row speaks for its first path only
    assert score_near(truth, dups, ROOT)["recall"] == 1.0
    outl = _outliers(truth, FOREIGN).drop(columns=["flagged", "rank"])
    foreign = score_foreign(truth, outl, pd.DataFrame(), top_share=0.5)
    assert foreign["in_top_share"] == 1.0 and foreign["flagged_share"] == 0.0 and foreign["enrich_excluded"] is None
    empty = score_exact(truth, pd.DataFrame(), ROOT)
    assert empty["precision"] is None and empty["recall"] == 0.0


def test_relative_path_reads_local_uris():
    assert relative_path("/archive/a/b c.png", "/archive") == "a/b c.png"
    assert relative_path("file:///archive/a.png", "file:///archive/") == "a.png"
    assert relative_path("a.png", "/archive") == "a.png"


def test_score_run_reads_a_run_folder(tmp_path):
    truth = _truth()
    _dup_rows(PERFECT_DUPS, truth).to_parquet(tmp_path / "duplicates.parquet")
    _outliers(truth, FOREIGN).to_parquet(tmp_path / "outliers.parquet")
    scores = score_run(truth, ROOT, str(tmp_path), top_share=0.5)  # no manifest.parquet: nothing ranked
    assert scores["exact"]["recall"] == scores["near"]["recall"] == scores["foreign"]["flagged_share"] == 1.0
    assert scores["foreign"]["enrich_excluded"] is None and scores["foreign"]["enrich_ranked"] == 0
