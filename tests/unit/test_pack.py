"""Pack: real DICOM and PNG files into Parquet; duplicates, junk, claimed-but-broken images, re-packing."""
import hashlib
import shutil

import pyarrow.dataset as pads
import pandas as pd
import pytest

from enrich_ray import schema
from enrich_ray.io.fs import StorageError
from enrich_ray.io.pack import ERRORS_NAME, SUMMARY_NAME, archive_shards, pack
from tests.conftest import testdata_path


def _archive(path):
    return pads.dataset(str(path), format="parquet", exclude_invalid_files=True).to_table().to_pandas()


@pytest.fixture()
def source(tmp_path):
    src = tmp_path / "src"
    (src / "a b (1)").mkdir(parents=True)
    ct = testdata_path("CT_small.dcm")
    shutil.copy(ct, src / "a b (1)" / "ct.dcm")
    shutil.copy(ct, src / "same bytes, no extension")  # found by content, kept as a second path
    shutil.copy(testdata_path("MR_small.dcm"), src / "mr.DCM")
    (src / "notes.txt").write_text("not an image")
    (src / "empty.dcm").write_bytes(b"")
    (src / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    return src


def test_pack_rows_duplicates_and_skips(source, tmp_path, monkeypatch):
    monkeypatch.delenv("ENRICH_RAY_PATIENT_KEY", raising=False)
    summary = pack([str(source)], str(tmp_path / "archive"), progress=False)
    df = _archive(tmp_path / "archive")
    assert summary.files_seen == 6 and summary.skipped == {"not an image": 1}
    assert summary.images == len(df) == 4  # ct (two paths), mr, empty.dcm, truncated.png
    assert summary.duplicate_paths == 1
    ct = df[df["source_uris"].map(len) == 2].iloc[0]
    assert ct["image_id"] == hashlib.sha256((source / "a b (1)" / "ct.dcm").read_bytes()).hexdigest()
    assert ct["format"] == "dicom" and ct["modality"] == "CT" and ct["rows"] == 128
    assert pd.isna(ct["patient_key"])  # no key set: never the raw PatientID
    broken = df[df["source_uri"].str.endswith(("empty.dcm", "truncated.png"))]
    assert sorted(broken["format"]) == ["dicom", "png"]
    assert set(df.columns) == set(schema.ARCHIVE.names)
    assert (tmp_path / "archive" / SUMMARY_NAME).exists() and (tmp_path / "archive" / ERRORS_NAME).exists()


def test_pack_is_reproducible_and_keyed(source, tmp_path, monkeypatch):
    monkeypatch.setenv("ENRICH_RAY_PATIENT_KEY", "k1")
    pack([str(source)], str(tmp_path / "a1"), progress=False)
    pack([str(source)], str(tmp_path / "a2"), progress=False)
    one, two = _archive(tmp_path / "a1"), _archive(tmp_path / "a2")
    assert sorted(one["image_id"]) == sorted(two["image_id"])
    keys = set(one["patient_key"].dropna())
    assert keys and all(len(k) == 64 for k in keys)
    monkeypatch.setenv("ENRICH_RAY_PATIENT_KEY", "k2")
    pack([str(source)], str(tmp_path / "a3"), progress=False)
    assert not keys & set(_archive(tmp_path / "a3")["patient_key"].dropna())


def test_pack_bounds_shards(source, tmp_path):
    from enrich_ray.config import PackConfig

    pack([str(source)], str(tmp_path / "archive"), PackConfig(shard_max_bytes=10_000), progress=False)
    assert len(archive_shards(str(tmp_path / "archive"))) >= 2


def test_busi_pngs_with_spaces_and_parentheses(busi_dir, tmp_path):
    src = busi_dir / "normal"
    files = sorted(src.glob("*.png"))[:20]
    for f in files:
        (tmp_path / "in").mkdir(exist_ok=True)
        shutil.copy(f, tmp_path / "in" / f.name)
    summary = pack([str(tmp_path / "in")], str(tmp_path / "archive"), progress=False)
    df = _archive(tmp_path / "archive")
    assert summary.formats.get("png", 0) + summary.duplicate_paths == 20
    assert df["source_uri"].str.contains(r"normal \(\d+\)\.png").all()


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(StorageError, match="source not found"):
        pack([str(tmp_path / "nowhere")], str(tmp_path / "archive"), progress=False)


def test_pack_keeps_the_station(tmp_path, monkeypatch):
    """station is the keyed hash of 'InstitutionName / StationName' from the header, or of the one of
    them it has; null for a header with neither, for a PNG, and without the key. Real files: CT_small
    (JFK IMAGING CENTER, CT01_OC0), US1_UNCR (BAPTIST MED CTR, mvme22), MR2_UNCR (an institution, no
    station name); a copy of CT_small with its institution deleted and one with both deleted."""
    import cv2
    import numpy as np
    import pydicom

    from enrich_ray.decode.dicom import keyed_hash

    src = tmp_path / "src"
    src.mkdir()
    for name in ("CT_small.dcm", "US1_UNCR.dcm", "MR2_UNCR.dcm"):
        shutil.copy(testdata_path(name), src / name)
    ds = pydicom.dcmread(testdata_path("CT_small.dcm"))
    del ds.InstitutionName
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.save_as(src / "station_only.dcm")
    del ds.StationName
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.save_as(src / "neither.dcm")
    cv2.imwrite(str(src / "photo.png"), np.full((8, 8), 100, np.uint8))
    monkeypatch.setenv("ENRICH_RAY_PATIENT_KEY", "k1")
    pack([str(src)], str(tmp_path / "archive"), progress=False)
    table = pads.dataset(str(tmp_path / "archive"), format="parquet", exclude_invalid_files=True).to_table(["source_uri", "station"])
    got = {row["source_uri"].rsplit("/", 1)[-1]: row["station"] for row in table.to_pylist()}
    names = {"CT_small.dcm": "JFK IMAGING CENTER / CT01_OC0", "US1_UNCR.dcm": "BAPTIST MED CTR / mvme22",
             "MR2_UNCR.dcm": "MM07R R4.3", "station_only.dcm": "CT01_OC0", "neither.dcm": None, "photo.png": None}
    assert got == {f: keyed_hash(name, b"k1") for f, name in names.items()}
    assert len({got[f] for f in ("CT_small.dcm", "US1_UNCR.dcm", "MR2_UNCR.dcm", "station_only.dcm")}) == 4
    monkeypatch.delenv("ENRICH_RAY_PATIENT_KEY")
    pack([str(src)], str(tmp_path / "unkeyed"), progress=False)
    unkeyed = pads.dataset(str(tmp_path / "unkeyed"), format="parquet", exclude_invalid_files=True).to_table(["station"])
    assert unkeyed.column("station").null_count == unkeyed.num_rows
    assert table.schema.field("station").type == "string"
