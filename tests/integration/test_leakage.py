"""The leakage check on a real curate run (local Ray): a planted leak, a near-duplicate and a same-patient
pair on opposite sides of a paper's split, is found through `analysis.leakage_split` and through
`enrich-ray leakage` on the finished run, and nothing else is; the same run with the leak moved to one
side is clean. One small archive of keyed DICOM files (ENRICH_RAY_PATIENT_KEY at pack), the pixel embedder."""
from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest

from enrich_ray.config import load_config
from enrich_ray.io.pack import pack
from enrich_ray.pipelines.curate import curate

pytestmark = pytest.mark.ray

PIXELS = ["embed.embedder=pixels", "embed.batch_size=16", "decode.batch_size=8"]
TRAIN = ["base0.dcm", "base1.dcm", "base2.dcm", "base3.dcm", "base5.dcm", "copies/base5.dcm"]
TEST = ["near0.dcm", "base4.dcm", "base6.dcm", "base7.dcm"]
LEAKS = {("base0.dcm", "near0.dcm", "near_duplicate"), ("base3.dcm", "base4.dcm", "same_patient")}


def _dicom(pixels: np.ndarray, patient: str, study: str, number: int) -> bytes:
    """A minimal DICOM ultrasound frame of one patient and study."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"  # Ultrasound Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[f"leak/{number}"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.Modality = patient, "US"
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[f"leak/study/{study}"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[f"leak/series/{study}"])
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture(scope="module")
def leaky(ray_cluster, tmp_path_factory):
    """Eight distinct frames of eight studies; base4 of base3's patient; near0 a re-noised base0 of a patient of
    its own; base5 stored twice (one archive row, two paths); base6 and base7 of one patient, both in test."""
    from enrich_ray.truth.planted import synthetic_ultrasound

    root = tmp_path_factory.mktemp("leak")
    src = root / "scans"
    (src / "copies").mkdir(parents=True)
    rng = np.random.default_rng(4)
    bases = [synthetic_ultrasound(rng) for _ in range(8)]
    patients = ["P0", "P1", "P2", "P3", "P3", "P5", "P6", "P6"]
    for i, (pixels, patient) in enumerate(zip(bases, patients)):
        (src / f"base{i}.dcm").write_bytes(_dicom(pixels, patient, f"S{i}", i))
    (src / "copies" / "base5.dcm").write_bytes((src / "base5.dcm").read_bytes())
    noisy = np.clip(bases[0].astype(np.int16) + rng.integers(-2, 3, bases[0].shape), 0, 255).astype(np.uint8)
    (src / "near0.dcm").write_bytes(_dicom(noisy, "P8", "S8", 8))
    paper = root / "paper_split.csv"
    pd.DataFrame({"source_uri": [*TRAIN, *TEST, "gone.dcm"],
                  "split": ["train"] * len(TRAIN) + ["Test"] * len(TEST) + ["test"]}).to_csv(paper, index=False)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ENRICH_RAY_PATIENT_KEY", "leakage-test-key")
        pack([str(src)], str(root / "archive"), progress=False)
    run = root / "run"
    result = curate(str(root / "archive"), str(run), load_config(None, [*PIXELS, f"analysis.leakage_split={paper}"]))
    assert result.exit_code == 0
    return root, run, paper


def _pairs(run) -> set[tuple[str, str, str]]:
    table = pd.read_parquet(run / "leakage.parquet")
    name = lambda uri: uri.split("/scans/", 1)[1]  # noqa: E731
    return {(name(a), name(b), k) for a, b, k in zip(table["source_uri_a"], table["source_uri_b"], table["kind"])}


def test_the_planted_leak_is_found_and_nothing_else(leaky):
    root, run, _ = leaky
    dups = pd.read_parquet(run / "duplicates.parquet")
    near = dups[dups["kind"] == "near"]
    assert {u.rsplit("/", 1)[1] for u in near["source_uri"]} == {"base0.dcm", "near0.dcm"}  # the search saw the near pair
    assert _pairs(run) == LEAKS
    leakage = json.loads((run / "summary.json").read_text())["leakage"]
    assert leakage["leaks"] and leakage["frames_leaking"] == {"train": 2, "val": 0, "test": 2}
    assert {k: v["pairs"] for k, v in leakage["by_kind"].items()} == {
        "exact_duplicate": 0, "near_duplicate": 1, "same_patient": 1, "same_study": 0}
    assert leakage["frames"] == {"train": len(TRAIN), "val": 0, "test": len(TEST)}  # each path of base5 a frame on its side
    assert leakage["split_rows_not_in_archive"] == 1 and leakage["patient_key_known"] == len(TRAIN) + len(TEST)
    table = pd.read_parquet(run / "leakage.parquet")
    assert (table["split_a"] == "train").all() and (table["split_b"] == "test").all()
    assert table.loc[table["kind"] == "near_duplicate", "similarity"].iloc[0] > 0.85
    assert list(table["same_patient"]) == [k == "same_patient" for k in table["kind"]]
    page = (run / "report.html").read_text()
    assert 'id="leakage-warning">This split leaks: 2 of 4 test frames have a near-duplicate or the same patient' in page
    assert page.split('<section id="leakage">')[1].count('class="thumb"') >= 4  # both pairs side by side


def test_the_leakage_command_on_the_finished_run(leaky, capsys):
    from enrich_ray.cli import main
    from enrich_ray.pipelines.leakage import EXIT_LEAKS

    root, run, paper = leaky
    clean = root / "clean_split.parquet"
    split = pd.read_csv(paper)
    split.loc[split["source_uri"].isin(["near0.dcm", "base4.dcm"]), "split"] = "train"
    split.to_parquet(clean)
    assert main(["leakage", "--run", str(run), "--split", str(clean)]) == 0
    said = capsys.readouterr().out
    assert said.startswith("This split is clean: no exact or near duplicate, patient or study crosses it (8 train, 2 test")
    assert pd.read_parquet(run / "leakage.parquet").empty
    summary = json.loads((run / "summary.json").read_text())
    assert not summary["leakage"]["leaks"] and summary["leakage"]["split"] == str(clean)
    page = (run / "report.html").read_text()
    assert 'id="leakage-warning"' not in page and "This split is clean" in page
    assert main(["leakage", "--run", str(run), "--split", str(paper)]) == EXIT_LEAKS  # back to the paper's split
    assert capsys.readouterr().out.startswith("This split leaks: 2 of 4 test frames")
    assert _pairs(run) == LEAKS
    assert 'id="leakage-warning"' in (run / "report.html").read_text()


@pytest.mark.parametrize("split, words", [
    ("fold", "no column 'fold'"),
    ("missing.csv", "not found"),
    ("bad_values.csv", "'fold1' are none of train, val, test"),
    ("one_side.csv", "on train alone"),
    ("elsewhere.csv", "none of its rows puts an image of the archive"),
])
def test_a_bad_split_is_one_line_and_exit_2(leaky, capsys, split, words):
    from enrich_ray.cli import main

    root, run, _ = leaky
    tables = {
        "bad_values.csv": {"source_uri": ["base0.dcm", "base1.dcm"], "split": ["train", "fold1"]},
        "one_side.csv": {"source_uri": ["base0.dcm", "base1.dcm"], "split": ["train", "train"]},
        "elsewhere.csv": {"image_id": ["0" * 64, "1" * 64], "split": ["train", "test"]},
    }
    if split in tables:
        pd.DataFrame(tables[split]).to_csv(root / split, index=False)
    before = (run / "summary.json").read_bytes()
    arg = split if split == "fold" else str(root / split)
    assert main(["leakage", "--run", str(run), "--split", arg]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("enrich-ray leakage: error:") and words in err and "\n" not in err, err
    assert (run / "summary.json").read_bytes() == before  # refused: the run folder is untouched
