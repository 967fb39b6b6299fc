"""The export's pieces on real files: renderings of real DICOM frames, Label Studio tasks against the
task schema written from Label Studio's documentation, CVAT's manifest, KOS documents read back by
pydicom and highdicom, and the labeling tools' exports read back into (image_id, label) rows."""
from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET

import highdicom as hd
import jsonschema
import numpy as np
import pandas as pd
import pyarrow as pa
import pydicom
import pytest
from PIL import Image

from enrich_ray import schema
from enrich_ray.config import ConfigError, DecodeConfig
from enrich_ray.decode.preprocess import rgb_to_grey
from enrich_ray.decode.stage import decode_batch
from enrich_ray.export import kos, labels, render, tools
from enrich_ray.io.fs import resolve
from tests.conftest import testdata_path

# Label Studio's "Basic Label Studio JSON format" (docs: guide/tasks, "Basic Label Studio JSON format", and
# guide/export, "Relevant JSON property descriptions"): a list of tasks; a task's `data` holds the keys the
# labeling config's object tags read (here <Image value="$image">: a URL) and any other keys; optional
# `id`, `annotations` and `predictions`, whose items carry a `result` list of from_name/to_name/type/value.
RESULT = {"type": "object", "required": ["from_name", "to_name", "type", "value"],
          "properties": {"from_name": {"type": "string"}, "to_name": {"type": "string"}, "type": {"type": "string"},
                         "value": {"type": "object"}}}
LABEL_STUDIO_TASKS = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "array",
    "items": {
        "type": "object",
        "required": ["data"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "integer"},
            "data": {"type": "object", "required": ["image"], "properties": {"image": {"type": "string", "minLength": 1}}},
            "annotations": {"type": "array", "items": {"type": "object", "required": ["result"],
                                                        "properties": {"result": {"type": "array", "items": RESULT}}}},
            "predictions": {"type": "array", "items": {"type": "object", "required": ["result"],
                                                        "properties": {"result": {"type": "array", "items": RESULT},
                                                                       "score": {"type": "number"}}}},
        },
    },
}
IDS = [f"{i:064x}" for i in range(1, 5)]


def _rows() -> pd.DataFrame:
    """Manifest rows as a run writes them: a seed (score NaN), nulls of the right types."""
    return pd.DataFrame({
        "rank": np.arange(1, 5, dtype=np.int64), "image_id": IDS, "frame_index": np.array([0, 0, 3, 0], np.int32),
        "source_uri": [f"/scans/{i}.dcm" for i in range(4)], "ranker": "enrich",
        "score": np.array([np.nan, -0.9, 0.1, 0.5], np.float32), "is_seed": [True, False, False, False],
        "sop_uid": ["1.2.3.1", None, "1.2.3.3", "1.2.3.4"], "patient_key": [None] * 4,
        "study_uid": ["1.2.3", None, "1.2.3", "1.2.4"], "series_uid": ["1.2.3.0", None, "1.2.3.0", "1.2.4.0"],
        "modality": ["CT", None, "MR", "US"],
        "duplicate_group": pd.array([2, pd.NA, pd.NA, 2], dtype="Int64"),
        "outlier_flag": pd.array([False, True, False, False], dtype="boolean"),
    })


def test_a_rendering_is_the_frame_the_run_ranked_at_a_labeling_size():
    cfg = DecodeConfig(crop="none")
    for name, shape in [("CT_small.dcm", (128, 128)), ("US1_UNCR.dcm", (384, 512, 3)), ("RG1_UNCR.dcm", (512, 482))]:
        data = testdata_path(name).read_bytes()
        (image,) = render.render_frames(data, "dicom", {0}, cfg).values()
        assert image.dtype == np.uint8 and image.shape == shape, name  # never enlarged; the long side at most 512
        frames, _ = decode_batch(pa.Table.from_pylist([{"image_id": "x", "source_uri": name, "format": "dicom",
                                                        "data": data}], schema=schema.ARCHIVE), cfg)
        ranked = np.asarray(frames.column("pixels")[0].as_py(), np.float32).reshape(cfg.size, cfg.size)
        grey = rgb_to_grey(image) if image.ndim == 3 else image.astype(np.float32)  # what the embedder saw of colour
        seen = render.resize_area(grey / 255.0, cfg.size)
        assert np.abs(seen - ranked).mean() < 0.01, name  # the same picture: window, MONOCHROME1, luma


@pytest.mark.parametrize("name, photometric, spread", [
    ("US1_UNCR.dcm", "RGB", 64), ("SC_ybr_full_uncompressed.dcm", "YBR_FULL", 64), ("SC_rgb_jpeg_dcmtk.dcm", "YBR_FULL", 64),
    ("US1_J2KR.dcm", "YBR_RCT", 64), ("examples_palette.dcm", "PALETTE COLOR", 64),
    ("examples_ybr_color.dcm", "YBR_FULL_422", 8),  # a faint tint: its channels differ by 5 to 15 levels
])
def test_a_colour_frame_renders_in_its_colours(name, photometric, spread):
    """A colour frame (the power Doppler of US1_UNCR, YBR uncompressed and in JPEG, JPEG 2000, a palette)
    is an RGB PNG whose pixels are the frame pydicom decodes to RGB (its palette applied), over the
    stored peak, shrunk as a grey frame is; a monochrome frame stays a grey PNG."""
    data = testdata_path(name).read_bytes()
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.PhotometricInterpretation == photometric
    rgb = ds.pixel_array[0] if int(ds.get("NumberOfFrames", 1) or 1) > 1 else ds.pixel_array  # pydicom converts YBR to RGB
    peak = 255
    if photometric == "PALETTE COLOR":
        rgb, peak = pydicom.pixels.apply_color_lut(rgb, ds), 65535
    want = render.to_8bit(render.fit(rgb.astype(np.float32) / peak, render.RENDER_SIDE))
    (image,) = render.render_frames(data, "dicom", {0}, DecodeConfig()).values()
    back = Image.open(io.BytesIO(render.png_bytes(image)))
    assert back.mode == "RGB" and np.array_equal(np.asarray(back), image)
    assert np.abs(image.astype(int) - want).max() <= 1, name  # the decoded pixels, to a rounding
    if rgb.shape[:2] == image.shape[:2]:
        assert np.array_equal(image, want.astype(np.uint8))
    channels = image.max(axis=2).astype(int) - image.min(axis=2)
    assert (channels > spread).sum() >= 100, name  # colour, not grey in three channels
    import hashlib

    assert render.pixel_md5(image) == hashlib.md5(back.tobytes()).hexdigest()  # CVAT's checksum of an RGB image
    (grey,) = render.render_frames(testdata_path("CT_small.dcm").read_bytes(), "dicom", {0}, DecodeConfig()).values()
    assert Image.open(io.BytesIO(render.png_bytes(grey))).mode == "L"


def test_colour_png_and_jpeg_files_render_in_colour():
    rng = np.random.default_rng(0)
    rgb = np.repeat(np.repeat(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), 8, axis=0), 8, axis=1)
    for fmt, kwargs in (("png", {}), ("jpeg", {"quality": 95})):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format=fmt.upper(), **kwargs)
        (image,) = render.render_frames(buf.getvalue(), fmt, {0}, DecodeConfig()).values()
        decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        assert image.shape == rgb.shape and np.abs(image.astype(int) - decoded).max() <= 2, fmt
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[:8, :8, 3] = 0  # transparent: black, as for the grey
    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, format="PNG")
    (image,) = render.render_frames(buf.getvalue(), "png", {0}, DecodeConfig()).values()
    assert (image[:8, :8] == 0).all() and np.array_equal(image[8:, 8:], rgb[8:, 8:])
    buf = io.BytesIO()
    Image.fromarray(rgb[..., [1, 1, 1]]).save(buf, format="PNG")  # grey in an RGB file: a grey PNG
    (image,) = render.render_frames(buf.getvalue(), "png", {0}, DecodeConfig()).values()
    assert image.ndim == 2 and np.array_equal(image, rgb[..., 1])


def test_the_frames_of_a_multiframe_file_are_each_rendered():
    data = testdata_path("emri_small.dcm").read_bytes()  # 10 frames
    out = render.render_frames(data, "dicom", {0, 7}, DecodeConfig())
    assert sorted(out) == [0, 7] and not np.array_equal(out[0], out[7])
    assert render.render_frames(data, "dicom", {12}, DecodeConfig()) == {}  # no such frame: nothing


def test_png_bytes_decode_to_the_same_pixels_and_cvat_checksum():
    image = np.arange(24 * 40, dtype=np.uint16).reshape(24, 40).astype(np.uint8)
    back = Image.open(io.BytesIO(render.png_bytes(image)))
    assert back.mode == "L" and np.array_equal(np.asarray(back), image)
    import hashlib

    assert render.pixel_md5(image) == hashlib.md5(back.tobytes()).hexdigest()


def test_label_studio_tasks_follow_the_documented_schema_with_json_nulls():
    rows = _rows()
    uris = [f"/data/local-files/?d=out/images/{tools.frame_name(r, i, f)}.png"
            for r, i, f in zip(rows["rank"], rows["image_id"], rows["frame_index"])]
    tasks = json.loads(json.dumps(tools.label_studio_tasks(rows, uris), allow_nan=False))  # NaN is no JSON
    jsonschema.validate(tasks, LABEL_STUDIO_TASKS)
    assert [t["data"]["rank"] for t in tasks] == [1, 2, 3, 4] and tasks[0]["data"]["is_seed"] is True
    assert tasks[0]["data"]["score"] is None and tasks[1]["data"]["score"] == pytest.approx(-0.9)
    assert [t["data"]["duplicate_group"] for t in tasks] == [2, None, None, 2]
    assert [t["data"]["outlier_flag"] for t in tasks] == [False, True, False, False]
    assert tasks[1]["data"]["study_uid"] is None and tasks[2]["data"]["frame_index"] == 3
    assert set(tasks[0]["data"]) == {"image", *tools.FIELDS}
    with pytest.raises(jsonschema.ValidationError):  # the schema can fail: a task without data
        jsonschema.validate([{"image": uris[0]}], LABEL_STUDIO_TASKS)


def test_label_studio_uris_local_files_and_object_store(tmp_path):
    png = resolve(str(tmp_path / "out" / "images" / "a b.png"))
    assert tools.label_studio_uri(png, str(tmp_path)) == "/data/local-files/?d=out/images/a%20b.png"
    assert tools.label_studio_uri(png, "/") == "/data/local-files/?d=" + str(tmp_path).lstrip("/") + "/out/images/a%20b.png"
    with pytest.raises(ConfigError, match="document root"):
        tools.label_studio_uri(png, str(tmp_path / "elsewhere"))
    s3 = resolve("s3://labeling/night/images/x.png")
    assert tools.label_studio_uri(s3, "/ignored") == "s3://labeling/night/images/x.png"


def test_cvat_manifest_is_well_formed():
    images = [np.zeros((30, 50), np.uint8), np.full((512, 200), 7, np.uint8)]
    text = tools.cvat_manifest(["000001_a_0", "000002_b_0"], images)
    lines = [json.loads(line) for line in text.splitlines()]
    assert text.endswith("\n") and all(line.strip() for line in text.splitlines())
    assert lines[0] == {"version": "1.1"} and lines[1] == {"type": "images"}
    assert lines[2] == {"name": "000001_a_0", "extension": ".png", "width": 50, "height": 30,
                        "checksum": render.pixel_md5(images[0])}
    assert (lines[3]["width"], lines[3]["height"]) == (200, 512)


def test_frame_names_carry_their_image_id_and_sort_by_rank():
    names = [tools.frame_name(r, i, 0) for r, i in [(10, IDS[0]), (2, IDS[1])]]
    assert sorted(names) == names[::-1]
    assert tools.image_id_in(f"images/{names[0]}.png") == IDS[0]
    assert tools.image_id_in(f"/data/local-files/?d=x/{names[1]}.png") == IDS[1]
    assert tools.image_id_in("scan.png") is None and tools.image_id_in(None) is None


def test_the_labeling_table_has_an_empty_label_to_fill_in():
    table = tools.labeling_table(_rows())
    assert list(table.columns) == tools.TABLE_COLUMNS and (table["label"] == "").all()
    back = pd.read_csv(io.StringIO(table.to_csv(index=False)), dtype={"image_id": str})
    assert back["image_id"].tolist() == IDS and back["source_uri"].tolist()[0] == "/scans/0.dcm"


def _label_studio_export() -> bytes:
    """A Label Studio JSON export (guide/export's raw JSON of completed tasks) of four of our tasks."""
    tasks = tools.label_studio_tasks(_rows(), [f"s3://b/images/{i}.png" for i in range(4)])
    choice = lambda *c: {"id": "r1", "from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": list(c)}}  # noqa: E731
    box = {"id": "r2", "from_name": "tag", "to_name": "image", "type": "rectanglelabels", "original_width": 512,
           "value": {"x": 10, "y": 5, "width": 20, "height": 10, "rotation": 0, "rectanglelabels": ["lesion"]}}
    tasks[0].update(id=11, annotations=[{"id": 1, "result": [choice("benign")], "was_cancelled": False, "lead_time": 3.2}])
    tasks[1].update(id=12, annotations=[{"id": 2, "result": [choice("benign")], "was_cancelled": True}])  # skipped
    tasks[2].update(id=13, annotations=[])
    tasks[3].update(id=14, annotations=[{"id": 3, "result": [choice("malignant"), box], "was_cancelled": False},
                                        {"id": 4, "result": [choice("benign")], "was_cancelled": False}])
    tasks.append({"id": 15, "data": {"image": "https://example.org/other.png"},  # no image_id anywhere
                  "annotations": [{"result": [choice("normal")]}]})
    return json.dumps(tasks).encode()


def test_a_label_studio_export_gives_each_annotated_image_its_labels():
    found = labels.read_labels(_label_studio_export(), "project-1-at-2026-11-21.json")
    assert found.table.to_dict("records") == [{"image_id": IDS[0], "label": "benign"},
                                              {"image_id": IDS[3], "label": "benign;lesion;malignant"}]
    assert (found.entries, found.unlabeled, found.without_id) == (5, 2, 1)


def _cvat_export(names: list[str]) -> bytes:
    """A CVAT for images 1.1 XML export (docs: XML annotation format) over images of these names."""
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    task = ET.SubElement(ET.SubElement(root, "meta"), "task")
    ET.SubElement(task, "name").text = "night 2026-11-20"
    ET.SubElement(task, "mode").text = "annotation"
    for i, name in enumerate(names):
        image = ET.SubElement(root, "image", id=str(i), name=name, width="512", height="384")
        if i == 0:
            ET.SubElement(image, "tag", label="benign", source="manual")
        if i == 1:
            ET.SubElement(image, "box", label="lesion", source="manual", occluded="0", xtl="1", ytl="2", xbr="30", ybr="40", z_order="0")
            ET.SubElement(image, "polygon", label="lesion", source="manual", occluded="0", points="1,2;3,4;5,1", z_order="0")
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root)


def test_a_cvat_export_gives_each_annotated_image_its_labels():
    names = [f"{tools.frame_name(r, i, 0)}.png" for r, i in enumerate(IDS[:3], 1)] + ["scan.png"]
    found = labels.read_labels(_cvat_export(names), "annotations.xml")
    assert found.table.to_dict("records") == [{"image_id": IDS[0], "label": "benign"}, {"image_id": IDS[1], "label": "lesion"}]
    assert (found.entries, found.unlabeled, found.without_id) == (4, 2, 0)


def test_a_csv_of_labels_skips_blank_labels_and_joins_frames_of_one_image():
    text = f"image_id,label,rank\n{IDS[0]},benign,1\n{IDS[1]},,2\n{IDS[0].upper()},cyst,3\n,normal,4\n"
    found = labels.read_labels(text.encode(), "to_label.csv")
    assert found.table.to_dict("records") == [{"image_id": IDS[0], "label": "benign;cyst"}]
    assert (found.entries, found.unlabeled, found.without_id) == (4, 1, 1)


@pytest.mark.parametrize("name,data,words", [
    ("export.json", b"{not json", "not valid JSON"),
    ("export.json", b'{"data": {}}', "a list of tasks"),
    ("export.json", b'[{"data": {}, "annotations": {"a": 1}}]', "annotations is not a list"),
    ("export.json", b'[{"data": {}, "annotations": [{"result": "benign"}]}]', "result is not a list"),
    ("annotations.xml", b"<annotations><image name='a'>", "not valid XML"),
    ("annotations.xml", b"<dataset/>", "root element is <dataset>"),
    ("annotations.xml", b"<annotations><track id='0' label='x'/></annotations>", "CVAT for video"),
    ("labels.csv", b"image,class\na,b\n", "needs the columns image_id and label"),
    ("labels.csv", b"", "not a readable CSV"),
    ("labels.txt", b"a,b\n", "by its extension"),
])
def test_a_malformed_export_is_named(name, data, words):
    with pytest.raises(labels.LabelsError, match=words):
        labels.read_labels(data, name)


def _studies() -> list[bytes]:
    # CT and MR of two studies; MR_small in two encodings is one SOP instance; an enhanced MR of 10 frames.
    return [testdata_path(n).read_bytes() for n in ["CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "emri_small.dcm"]]


def test_kos_documents_reference_exactly_the_selected_instances_one_per_study():
    files = _studies()
    headers = [pydicom.dcmread(io.BytesIO(f), stop_before_pixels=True) for f in files]
    selected = {}
    for ds in headers:
        selected.setdefault(str(ds.StudyInstanceUID), set()).add(str(ds.SOPInstanceUID))
    docs, unreadable = kos.kos_documents([*files, b"not a DICOM file"], kos.document_title("For Research"), "enrich_ray test")
    assert unreadable == 1 and len(docs) == len(selected) == 3
    for doc in docs:
        ds = pydicom.dcmread(io.BytesIO(doc.data))
        assert ds.SOPClassUID == kos.KOS_SOP_CLASS and ds.Modality == "KO" and ds.StudyInstanceUID == doc.study_uid
        assert ds.SOPInstanceUID == doc.sop_uid and ds.file_meta.MediaStorageSOPClassUID == kos.KOS_SOP_CLASS
        title = ds.ConceptNameCodeSequence[0]
        assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == ("113009", "DCM", "For Research")
        evidence = {ref.ReferencedSOPInstanceUID for series in ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
                    for ref in series.ReferencedSOPSequence}
        images = {item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for item in ds.ContentSequence if item.ValueType == "IMAGE"}
        assert evidence == images == set(doc.referenced) == selected[doc.study_uid]
        parsed = hd.ko.KeyObjectSelectionDocument.from_dataset(ds)  # highdicom reads it as a valid KOS
        assert {uid for uid in set(doc.referenced) if parsed.resolve_reference(uid)} == selected[doc.study_uid]
        source = next(h for h in headers if str(h.StudyInstanceUID) == doc.study_uid)
        assert ds.get("PatientID") == source.get("PatientID")  # filed under the scans' own patient


def test_the_same_selection_gives_the_same_document_uids_and_another_title_other_ones():
    first, _ = kos.kos_documents(_studies(), kos.document_title("Of Interest"), "a")
    again, _ = kos.kos_documents(_studies(), kos.document_title("of interest"), "a")
    other, _ = kos.kos_documents(_studies(), kos.document_title("For Research"), "a")
    assert [d.sop_uid for d in first] == [d.sop_uid for d in again]
    assert not {d.sop_uid for d in first} & {d.sop_uid for d in other}
    assert pydicom.dcmread(io.BytesIO(first[0].data)).ConceptNameCodeSequence[0].CodeValue == "113000"


def test_an_unknown_document_title_is_refused():
    with pytest.raises(ConfigError, match="CID 7010"):
        kos.document_title("Of No Interest")
