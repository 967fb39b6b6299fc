"""The selection out and the labels back, on a real curate run and a real nightly night of the sample
archive (real DICOM files and BUSI PNGs) on a local Ray: Label Studio tasks that follow the tool's
documented schema with PNGs it can show, CVAT's manifest over the PNGs, KOS documents read back by
pydicom and stored to a real PACS (Orthanc, tests/integration/pacs.py) over STOW-RS, found again over
QIDO-RS, and each tool's export written into the catalog's labeled set that the next night reads."""
from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import boto3
import cv2
import jsonschema
import numpy as np
import pandas as pd
import pydicom
import pytest
import s3fs
from PIL import Image

from enrich_ray.config import load_config
from enrich_ray.export import job, tools
from enrich_ray.export.render import RENDER_SIDE
from enrich_ray.export.source import budget_frames
from enrich_ray.io import dicomweb
from enrich_ray.io.fs import StorageError
from enrich_ray.io.pack import archive_table, pack
from enrich_ray.pipelines.catalog import Catalog
from enrich_ray.pipelines.curate import curate
from enrich_ray.pipelines.nightly import nightly
from tests.conftest import testdata_path
from tests.integration.conftest import S3_KEYS
from tests.integration.pacs import PASSWORD, USER, start_pacs
from tests.unit.test_export import LABEL_STUDIO_TASKS

pytestmark = pytest.mark.ray

PIXELS = ["embed.embedder=pixels", "embed.batch_size=16", "decode.batch_size=8"]
NIGHT = "2026-11-20"
NIGHT_SETTINGS = ["vae.max_epochs=2", "vae.latent_dim=16", "embed.batch_size=32", "decode.batch_size=8", "selection.k=5"]


@pytest.fixture(scope="module")
def run(ray_cluster, sample_archive, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "run"
    assert curate(str(sample_archive), str(out), load_config(None, PIXELS)).exit_code == 0
    return out


@pytest.fixture(scope="module")
def catalog(ray_cluster, sample_archive, tmp_path_factory) -> Path:
    cat = tmp_path_factory.mktemp("export_catalog") / "catalog"
    assert nightly(str(cat), str(sample_archive), NIGHT, load_config(None, NIGHT_SETTINGS)).exit_code == 0
    return cat


def _manifest(folder: Path) -> pd.DataFrame:
    return pd.read_parquet(folder / "manifest.parquet").sort_values("rank", kind="stable").reset_index(drop=True)


def _keys(df: pd.DataFrame) -> list[tuple[str, int]]:
    return list(zip(df["image_id"], df["frame_index"].astype(int)))


def _in_colour(archive: Path) -> dict[str, bool]:
    """Per image id, whether its source holds colour: a DICOM file's photometric interpretation is not
    MONOCHROME1/2; a PNG's channels differ somewhere (read by OpenCV, apart from the export's decoder)."""
    out = {}
    for row in archive_table(str(archive), ["image_id", "format", "photometric", "data"]).to_pylist():
        if row["format"] == "dicom":
            out[row["image_id"]] = (row["photometric"] or "MONOCHROME2") not in ("MONOCHROME1", "MONOCHROME2")
        else:
            bgr = cv2.imdecode(np.frombuffer(row["data"], np.uint8), cv2.IMREAD_COLOR)
            grey = bgr is None or ((bgr[..., 0] == bgr[..., 1]).all() and (bgr[..., 1] == bgr[..., 2]).all())
            out[row["image_id"]] = not grey
    return out


def _local_file(uri: str, root: Path) -> Path:
    assert uri.startswith(tools.LOCAL_FILES), uri
    return root / unquote(uri[len(tools.LOCAL_FILES):])


def test_label_studio_tasks_of_a_curate_run_show_every_frame_ranked(run, sample_archive, tmp_path):
    manifest = _manifest(run)
    cfg = load_config(None, [])
    result = job.export_selection(str(run), "labelstudio", str(tmp_path / "ls"), cfg, top=len(manifest),
                                  document_root=str(tmp_path))
    tasks = json.loads((tmp_path / "ls" / job.TASKS).read_text())
    jsonschema.validate(tasks, LABEL_STUDIO_TASKS)
    rendered = len(manifest) - sum(result.skipped.values())
    assert len(tasks) == rendered == len(manifest), result.lines  # every ranked frame decoded before: each renders
    assert [(t["data"]["image_id"], t["data"]["frame_index"]) for t in tasks] == _keys(manifest)
    assert [t["data"]["rank"] for t in tasks] == manifest["rank"].tolist() and tasks[0]["data"]["is_seed"] is True
    assert tasks[0]["data"]["score"] is None  # a seed has no score: null, not NaN
    for task, (_, row) in zip(tasks, manifest.iterrows()):
        data = task["data"]
        assert data["study_uid"] == (row["study_uid"] if pd.notna(row["study_uid"]) else None)
        assert data["duplicate_group"] == (int(row["duplicate_group"]) if pd.notna(row["duplicate_group"]) else None)
        assert data["outlier_flag"] == bool(row["outlier_flag"])
    sides, modes = [], Counter()
    colour = _in_colour(sample_archive)
    for task in tasks:
        png = _local_file(task["data"]["image"], tmp_path)
        assert png.parent == tmp_path / "ls" / job.IMAGES and tools.image_id_in(png.name) == task["data"]["image_id"]
        with Image.open(png) as image:
            assert image.format == "PNG" and image.mode == ("RGB" if colour[task["data"]["image_id"]] else "L")
            sides.append(max(image.size))
            modes[image.mode] += 1
    assert modes["RGB"] and modes["L"]  # US1_UNCR's Doppler and OBXXXX1A's palette among the colour ones
    assert max(sides) == RENDER_SIDE and min(sides) < RENDER_SIDE  # large scans shrunk, small ones kept (never the 64x64)
    default = job.export_selection(str(run), "labelstudio", str(tmp_path / "default"), cfg, document_root=str(tmp_path))
    assert len(json.loads((tmp_path / "default" / job.TASKS).read_text())) == budget_frames(manifest)
    assert "the report's suggested budget" in default.lines[0]


def test_kos_documents_of_a_curate_run_reference_exactly_its_selected_dicom_instances(run, sample_archive, tmp_path):
    manifest = _manifest(run)
    formats = archive_table(str(sample_archive), ["image_id", "format"]).to_pandas().set_index("image_id")["format"]
    result = job.export_selection(str(run), "kos", str(tmp_path / "kos"), load_config(None, []), top=len(manifest),
                                  title="For Research")
    dicom = manifest[manifest["image_id"].map(formats) == "dicom"]
    not_dicom = len(manifest) - len(dicom)  # BUSI's PNGs when ../shared/data is there; none without
    assert result.skipped == ({"not DICOM (a PNG or JPEG image is no SOP instance)": not_dicom} if not_dicom else {})
    files = sorted((tmp_path / "kos").glob("*.dcm"))
    assert {f.stem for f in files} == set(dicom["study_uid"])  # one document per study
    referenced = set()
    for f in files:
        ds = pydicom.dcmread(f)
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.59" and ds.StudyInstanceUID == f.stem
        assert ds.ConceptNameCodeSequence[0].CodeMeaning == "For Research"
        refs = [item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for item in ds.ContentSequence if item.ValueType == "IMAGE"]
        assert len(refs) == len(set(refs))  # frames of one instance: one reference
        assert set(refs) == set(dicom.loc[dicom["study_uid"] == f.stem, "sop_uid"])
        referenced |= set(refs)
    assert referenced == set(dicom["sop_uid"])


def test_a_night_goes_to_label_studio_and_its_labels_come_back_to_the_catalog(catalog, tmp_path):
    night = catalog / "nights" / NIGHT
    top = pd.read_csv(night / "top.csv", dtype={"image_id": str})
    out = tmp_path / "ls"
    proc = subprocess.run([sys.executable, "-m", "enrich_ray", "export", "--run", str(night), "--to", "labelstudio",
                           "--out", str(out), "--document-root", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"the night's top.csv, holds {len(top)}" in proc.stdout
    tasks = json.loads((out / job.TASKS).read_text())
    jsonschema.validate(tasks, LABEL_STUDIO_TASKS)
    assert [(t["data"]["image_id"], t["data"]["frame_index"]) for t in tasks] == _keys(top)  # the night's list, seed first
    assert all(_local_file(t["data"]["image"], tmp_path).is_file() for t in tasks)

    # Label Studio's JSON export of those tasks (guide/export): ids, annotations; one skipped, one from elsewhere.
    for i, task in enumerate(tasks):
        cancelled = i == 1
        task.update(id=100 + i, annotations=[{"id": i, "was_cancelled": cancelled, "lead_time": 2.5, "result": [
            {"id": f"r{i}", "from_name": "finding", "to_name": "image", "type": "choices",
             "value": {"choices": ["benign" if i % 2 else "normal"]}}]}])
    tasks.append({"id": 999, "data": {"image": "s3://b/x.png", "image_id": "f" * 64}, "annotations": [
        {"id": 999, "result": [{"from_name": "finding", "to_name": "image", "type": "choices", "value": {"choices": ["x"]}}]}]})
    export = tmp_path / "project-3-at-2026-11-21-09-00.json"
    export.write_text(json.dumps(tasks))
    proc = subprocess.run([sys.executable, "-m", "enrich_ray", "labels", "--catalog", str(catalog), "--from", str(export)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "1 labeled image(s) not in the catalog (not written)" in proc.stdout
    written = sorted((catalog / "labeled").glob("*.csv"))
    assert len(written) == 1 and str(written[0]) in proc.stdout
    labeled = pd.read_csv(written[0], dtype=str)
    expected = {t["data"]["image_id"] for i, t in enumerate(tasks[:-1]) if i != 1}
    assert list(labeled.columns) == ["image_id", "label"] and set(labeled["image_id"]) == expected
    assert Catalog(str(catalog), load_config(None, NIGHT_SETTINGS)).labeled_ids() >= expected  # what the next night seeds from


def test_a_night_goes_to_cvat_and_its_xml_comes_back_to_the_catalog(catalog, tmp_path):
    night = catalog / "nights" / NIGHT
    top = pd.read_csv(night / "top.csv", dtype={"image_id": str})
    cfg = load_config(None, NIGHT_SETTINGS)
    job.export_selection(str(night), "cvat", str(tmp_path / "cvat"), cfg, top=len(top) + 2)
    lines = [json.loads(line) for line in (tmp_path / "cvat" / job.CVAT_MANIFEST).read_text().splitlines()]
    assert lines[:2] == [{"version": "1.1"}, {"type": "images"}]
    images = lines[2:]
    assert {f"{i['name']}{i['extension']}" for i in images} == {p.name for p in (tmp_path / "cvat").glob("*.png")}
    for item in images:
        with Image.open(tmp_path / "cvat" / f"{item['name']}.png") as image:
            assert (item["width"], item["height"]) == image.size
            assert item["checksum"] == hashlib.md5(image.tobytes()).hexdigest()
    manifest = _manifest(night)
    listed = set(zip(top["image_id"], top["frame_index"].astype(int)))
    keys = list(zip(manifest["image_id"], manifest["frame_index"].astype(int)))
    beyond = manifest[~manifest["is_seed"] & ~pd.Series([k in listed for k in keys], index=manifest.index)].head(2)  # --top past the list, frame by frame
    assert [tools.image_id_in(i["name"]) for i in images] == [*top["image_id"], *beyond["image_id"]]

    # CVAT for images 1.1 XML (docs: XML annotation format): a tag, a box, an image left empty, one from elsewhere.
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    names = [f"{i['name']}{i['extension']}" for i in images[:3]] + [f"{'e' * 64}_0.png"]
    for n, name in enumerate(names):
        image = ET.SubElement(root, "image", id=str(n), name=name, width="1", height="1")
        if n in (0, 3):
            ET.SubElement(image, "tag", label="benign", source="manual")
        if n == 1:
            ET.SubElement(image, "box", label="lesion", source="manual", occluded="0", xtl="0", ytl="0", xbr="1", ybr="1")
    xml = tmp_path / "annotations.xml"
    xml.write_bytes(ET.tostring(root))
    result = job.labels_into_catalog(str(catalog), str(xml), cfg)
    assert (result.images, result.unknown, result.labels.unlabeled) == (2, 1, 1)
    labeled = pd.read_csv(result.written, dtype=str)
    assert labeled.to_dict("records") == [{"image_id": tools.image_id_in(names[0]), "label": "benign"},
                                          {"image_id": tools.image_id_in(names[1]), "label": "lesion"}]
    assert set(labeled["image_id"]) <= Catalog(str(catalog), cfg).labeled_ids()

    only_unknown = tmp_path / "elsewhere.csv"
    only_unknown.write_text(f"image_id,label\n{'d' * 64},benign\n")
    before = sorted((catalog / "labeled").glob("*.csv"))
    with pytest.raises(StorageError, match="none of its 1 labeled image"):
        job.labels_into_catalog(str(catalog), str(only_unknown), cfg)
    assert sorted((catalog / "labeled").glob("*.csv")) == before


def test_the_labeling_csv_is_filled_in_and_comes_back(catalog, tmp_path):
    night = catalog / "nights" / NIGHT
    cfg = load_config(None, NIGHT_SETTINGS)
    job.export_selection(str(night), "csv", str(tmp_path / "csv"), cfg, top=3)
    table = pd.read_csv(tmp_path / "csv" / job.TABLE, dtype={"image_id": str}, keep_default_na=False)
    assert list(table.columns) == tools.TABLE_COLUMNS and len(table) == 3 and (table["label"] == "").all()
    table.loc[[0, 2], "label"] = ["normal", "benign"]
    table.to_csv(tmp_path / "filled.csv", index=False)
    result = job.labels_into_catalog(str(catalog), str(tmp_path / "filled.csv"), cfg)
    assert result.images == 2 and result.labels.unlabeled == 1
    assert pd.read_csv(result.written, dtype=str)["image_id"].tolist() == table["image_id"][[0, 2]].tolist()


def test_label_studio_export_to_the_object_store_names_its_objects(run, s3_endpoint):
    boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                 region_name="us-east-1").create_bucket(Bucket="labeling")
    cfg = load_config(None, [*S3_KEYS, f"storage.endpoint_url={s3_endpoint}"])
    job.export_selection(str(run), "labelstudio", "s3://labeling/first", cfg, top=4)
    fs = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": s3_endpoint})
    tasks = json.loads(fs.cat_file("labeling/first/tasks.json"))
    jsonschema.validate(tasks, LABEL_STUDIO_TASKS)
    assert len(tasks) == 4 and all(t["data"]["image"].startswith("s3://labeling/first/images/") for t in tasks)
    for task in tasks:
        with fs.open(task["data"]["image"], "rb") as fh:
            assert Image.open(fh).format == "PNG"


def test_kos_documents_go_back_to_the_pacs_the_scans_came_from(ray_cluster, tmp_path, monkeypatch):
    scans = [pydicom.dcmread(testdata_path(n)) for n in ["CT_small.dcm", "MR_small.dcm", "US1_UNCR.dcm", "emri_small.dcm"]]
    server, accepted = start_pacs(tmp_path / "pacs", scans)
    try:
        assert len(accepted) == len(scans)
        monkeypatch.setenv(dicomweb.USER_ENV, USER)
        monkeypatch.setenv(dicomweb.PASSWORD_ENV, PASSWORD)
        pack([server.source], str(tmp_path / "archive"), progress=False)
        cfg = load_config(None, PIXELS)
        assert curate(str(tmp_path / "archive"), str(tmp_path / "run"), cfg).exit_code == 0
        manifest = _manifest(tmp_path / "run")
        result = job.export_selection(str(tmp_path / "run"), "kos", server.source, cfg, top=len(manifest))
        assert not result.skipped and server.source in result.lines[0]  # every frame here is a DICOM instance

        kos_search = dicomweb.Pacs(dicomweb.parse_query(f"{server.source}?Modality=KO"))
        found = kos_search.search()  # QIDO-RS finds them again
        assert {i.study_uid for i in found} == set(manifest["study_uid"])  # one per study
        referenced = set()
        for instance in found:
            ds = pydicom.dcmread(io.BytesIO(kos_search.retrieve(instance)))
            assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.59"
            assert ds.ConceptNameCodeSequence[0].CodeMeaning == "Of Interest"
            referenced |= {item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                           for item in ds.ContentSequence if item.ValueType == "IMAGE"}
        assert referenced == set(manifest["sop_uid"])

        job.export_selection(str(tmp_path / "run"), "kos", server.source, cfg, top=len(manifest))
        assert {i.sop_uid for i in kos_search.search()} == {i.sop_uid for i in found}  # the same documents again
    finally:
        server.stop()
