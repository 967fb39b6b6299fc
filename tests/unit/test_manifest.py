"""The ranked manifest: keys, running coverage and groups, label hours, on real images."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from enrich_ray.config import SelectionConfig
from enrich_ray.selection import build_manifest, enrich_greedy, rank
from enrich_ray.selection.quota import quotas_for


@pytest.fixture(scope="module", params=["synthetic", "pneumoniamnist"])
def archive(request):
    """300 frames: raw-pixel unit embeddings of real PneumoniaMNIST images (skipped without
    ../shared/data) or of synthetic smooth images, and a frames table (10 patients)."""
    if request.param == "pneumoniamnist":
        images = np.load(request.getfixturevalue("pneumonia_npz"))["train_images"][:300].reshape(300, -1).astype(np.float64)
    else:
        rng = np.random.default_rng(0)
        images = rng.random((300, 6, 6)).repeat(4, axis=1).repeat(4, axis=2).reshape(300, -1) + 0.1 * rng.random((300, 576))
    x = images - images.mean(axis=0)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    rows = np.arange(300)
    frames = pd.DataFrame(
        {
            "image_id": [f"img{r // 3:04d}" for r in rows],  # three frames per image
            "frame_index": (rows % 3).astype(np.int32),
            "source_uri": [f"s3://bucket/scan ({r // 3}).dcm" for r in rows],
            "patient_key": [None if r % 50 == 0 else "" if r % 50 == 1 else f"p{r % 10}" for r in rows],
            "sop_uid": [f"1.2.{r // 3}.9" for r in rows],
            "study_uid": [f"1.2.{r % 20}" for r in rows],
            "series_uid": [f"1.2.{r % 20}.{r % 40}" for r in rows],
            "modality": "CR",
            "station": [None if r % 30 == 0 else f"SITE / CR{r % 4}" for r in rows],
        }
    )
    return x, frames


def plain_coverage(x: np.ndarray, order: np.ndarray, n_seed: int) -> np.ndarray:
    """Smallest max-similarity to the ranked set after each position, by brute force (float64)."""
    x64 = x.astype(np.float64)
    sims = x64 @ x64.T
    out = np.full(order.size, np.nan)
    for i in range(n_seed, order.size):
        out[i] = sims[:, order[: i + 1]].max(axis=1).min()
    return out


def test_enrich_manifest(archive):
    x, frames = archive
    cfg = SelectionConfig(seconds_per_image=3.0, seconds_per_segmentation=300.0)
    ranking = enrich_greedy(x, [5, 6], 40)
    group = np.where(np.arange(300) % 7 == 0, np.arange(300) // 14, -1)
    flag = np.arange(300) % 11 == 0
    m = build_manifest(ranking, frames, cfg, x, duplicate_group=group, outlier_flag=flag)
    assert len(m) == 42 and m["rank"].tolist() == list(range(1, 43))
    assert m["is_seed"].tolist() == [True, True] + [False] * 40
    assert m["ranker"].eq("enrich").all()
    picked = frames.iloc[ranking.order].reset_index(drop=True)
    for column in ["image_id", "frame_index", "source_uri", "sop_uid", "study_uid", "series_uid", "modality"]:
        assert m[column].astype(object).tolist() == picked[column].tolist()
    assert m["station"].tolist() == [None if pd.isna(s) else s for s in picked["station"]]
    # An unknown patient key is null, whether the archive held None or an empty string.
    want = [None if pd.isna(k) or not k else k for k in picked["patient_key"]]
    assert m["patient_key"].tolist() == want
    got_group = [None if pd.isna(g) else int(g) for g in m["duplicate_group"]]
    assert got_group == [int(g) if g >= 0 else None for g in group[ranking.order]]
    assert m["outlier_flag"].tolist() == flag[ranking.order].tolist()
    np.testing.assert_allclose(m["coverage_similarity"], plain_coverage(x, ranking.order, 2), atol=1e-6)
    np.testing.assert_array_equal(m["score"].to_numpy()[3:], m["coverage_similarity"].to_numpy()[2:-1])
    for column, key in [("patients_covered", "patient_key"), ("studies_covered", "study_uid"), ("series_covered", "series_uid"),
                        ("stations_covered", "station")]:
        expected = [len({k for k in picked[key].iloc[: i + 1] if not pd.isna(k) and k}) for i in range(42)]
        assert m[column].tolist() == expected
    assert m["patients_covered"].max() <= 10
    np.testing.assert_allclose(m["cumulative_label_hours_classification"], m["rank"] * 3.0 / 3600)
    np.testing.assert_allclose(m["cumulative_label_hours_segmentation"].iloc[-1], 42 * 300.0 / 3600)
    # Without the analysis outputs and sop_uid, those columns are null.
    bare = build_manifest(ranking, frames.drop(columns=["sop_uid"]), cfg, x)
    assert bare["sop_uid"].isna().all() and bare["duplicate_group"].isna().all() and bare["outlier_flag"].isna().all()


def test_other_rankers_get_coverage_from_a_running_max(archive):
    x, frames = archive
    cfg = SelectionConfig()
    ranking = rank("random", x, [0], 30, cfg)
    m = build_manifest(ranking, frames, cfg, x)
    np.testing.assert_allclose(m["coverage_similarity"], plain_coverage(x, ranking.order, 1), atol=1e-6)
    assert "coverage_similarity" not in build_manifest(ranking, frames, cfg, x, with_coverage=False)
    # the same budget covers the archive better with ENRICH than at random
    enrich = build_manifest(enrich_greedy(x, [0], 30), frames, cfg, x)
    assert enrich["coverage_similarity"].iloc[-1] > m["coverage_similarity"].iloc[-1]


def test_a_quota_shows_in_the_coverage_and_patients_covered(archive):
    """selection.quota: patient_key=1 makes every keyed pick a new patient, so patients_covered climbs
    by one at each until all 10 are in; the frames without a key are not limited; coverage_similarity
    stays the smallest max-similarity of any frame, the ones the quota closed included."""
    x, frames = archive
    cfg = SelectionConfig(quota={"patient_key": 1})
    ranking = rank("enrich", x, [5], None, cfg, quotas=quotas_for(frames, cfg.quota))
    m = build_manifest(ranking, frames, cfg, x)
    keyed = m["patient_key"].notna()
    assert len(m) == 10 + 12 and keyed.sum() == 10 and m.loc[keyed, "patient_key"].is_unique
    assert (m["patients_covered"].diff().fillna(1) == keyed.astype(int)).all() and m["patients_covered"].iloc[-1] == 10
    np.testing.assert_allclose(m["coverage_similarity"], plain_coverage(x, ranking.order, 1), atol=1e-6)
    assert m["coverage_similarity"].iloc[-1] < 1  # 278 frames are left out: the coverage says how far


def test_the_station_from_the_dicom_header_to_the_manifest(tmp_path, monkeypatch):
    """Real DICOM files packed, decoded and embedded (stand-in vectors) carry their station into the
    frames, the embeddings and the manifest; a quota station=1 takes one frame per scanner, and the
    PNG (no station) is not limited; an embeddings table written before the column existed reads as null."""
    import shutil

    import cv2
    import pyarrow.dataset as pads

    from enrich_ray.config import DecodeConfig
    from enrich_ray.decode.stage import decode_batch
    from enrich_ray.embed.encoder import embeddings_table
    from enrich_ray.io.pack import pack
    from enrich_ray.schema import frames_and_vectors
    from tests.conftest import testdata_path

    from enrich_ray.decode.dicom import keyed_hash

    monkeypatch.setenv("ENRICH_RAY_PATIENT_KEY", "k1")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "US1_UNCR.dcm"):  # MR_small_RLE: TOSHIBA's again
        shutil.copy(testdata_path(name), src / name)
    cv2.imwrite(str(src / "photo.png"), np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8))
    pack([str(src)], str(tmp_path / "archive"), progress=False)
    archive = pads.dataset(str(tmp_path / "archive"), format="parquet", exclude_invalid_files=True).to_table()
    decoded, errors = decode_batch(archive, DecodeConfig())
    assert errors.num_rows == 0 and decoded.schema.field("station").type == "string"
    n = decoded.num_rows
    emb = np.random.default_rng(1).standard_normal((n, 8)).astype(np.float32)
    table = embeddings_table(decoded, np.arange(n), emb / np.linalg.norm(emb, axis=1, keepdims=True), "test")
    frames, x = frames_and_vectors(table)
    cfg = SelectionConfig(quota={"station": 1})
    m = build_manifest(rank("enrich", x, [0], None, cfg, quotas=quotas_for(frames, cfg.quota)), frames, cfg, x)
    stations = {u.rsplit("/", 1)[-1]: s for u, s in zip(m["source_uri"], m["station"])}
    toshiba, jfk = keyed_hash("TOSHIBA / 000000000", b"k1"), keyed_hash("JFK IMAGING CENTER / CT01_OC0", b"k1")
    assert sorted(stations.values(), key=str) == sorted([jfk, toshiba, keyed_hash("BAPTIST MED CTR / mvme22", b"k1"), None], key=str)
    assert stations["photo.png"] is None and stations.get("CT_small.dcm") == jfk
    assert len(m) == 4 and m["stations_covered"].iloc[-1] == 3  # one of the two TOSHIBA files: the quota left the other out
    old, _ = frames_and_vectors(table.drop_columns(["station"]))
    assert old["station"].isna().all() and len(old) == n


def test_bad_frames_are_a_clear_error(archive):
    x, frames = archive
    ranking = enrich_greedy(x, [0], 3)
    with pytest.raises(ValueError, match="rows"):
        build_manifest(ranking, frames.iloc[:10], SelectionConfig(), x)
    with pytest.raises(ValueError, match="series_uid"):
        build_manifest(ranking, frames.drop(columns="series_uid"), SelectionConfig(), x)
