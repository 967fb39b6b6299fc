"""DICOM header reading, decoding and the decode stage, on pydicom's own test files (and copies edited here)."""
from __future__ import annotations

import hashlib
import hmac
from io import BytesIO
from pathlib import Path

import numpy as np
import pyarrow as pa
import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless

from enrich_ray import schema
from enrich_ray.config import DecodeConfig
from enrich_ray.decode import causes
from enrich_ray.decode.dicom import DicomError, iter_dicom_frames, read_header
from enrich_ray.decode.preprocess import LUMA_WEIGHTS, colorfulness, preprocess
from enrich_ray.decode.sniff import sniff_format
from enrich_ray.decode.stage import decode_batch
from tests.conftest import testdata_path


def decode_dicom(data: bytes, cfg: DecodeConfig) -> list[np.ndarray]:
    """Every frame of a DICOM file as a 2-D display image (before crop and resize); the first failure raised."""
    frames = []
    for _, frame in iter_dicom_frames(data, cfg):
        if isinstance(frame, Exception):
            raise frame
        frames.append(frame.image)
    return frames

FULL = DecodeConfig(reduced_resolution=False)

# Files with pixel data that cannot be decoded: what the message says, and the cause (error_type).
KNOWN_BROKEN = {
    "MR_truncated.dcm": ("truncated pixel data", causes.TRUNCATED),  # pixel data cut short
    "badVR.dcm": ("malformed header value", causes.BAD_HEADER),  # a malformed number in the image pixel module
    "JPEG-lossy.dcm": ("libjpeg error", causes.CORRUPT),  # a JPEG stream libjpeg rejects
    "JPEG2000-embedded-sequence-delimiter.dcm": ("J2K", causes.CORRUPT),  # a delimiter inside the codestream
    "emri_small_jpeg_2k_lossless_too_short.dcm": ("End of file", causes.TRUNCATED),  # encapsulation ends early
    "meta_missing_tsyntax.dcm": ("invalid image size", causes.BAD_HEADER),  # pixel data without Rows/Columns
    "nested_priv_SQ.dcm": ("invalid image size", causes.BAD_HEADER),
}


def _row(path: Path, data: bytes | None = None, image_id: str | None = None) -> dict:
    data = path.read_bytes() if data is None else data
    return {"image_id": image_id or path.name, "source_uri": str(path), "format": "dicom", "data": data}


def _decode(rows: list[dict], cfg: DecodeConfig = FULL) -> tuple[pa.Table, pa.Table]:
    frames, errors = decode_batch(pa.Table.from_pylist(rows), cfg)
    assert frames.schema == schema.frames_schema(cfg.size)
    assert errors.schema == schema.ERRORS
    return frames, errors


def _pixels(frames: pa.Table, image_id: str, size: int = 64) -> np.ndarray:
    """The frames of one image, ordered by frame_index, as (n, size, size)."""
    mine = frames.filter(pa.compute.equal(frames["image_id"], image_id)).sort_by("frame_index")
    return np.asarray(mine["pixels"].combine_chunks().values).reshape(-1, size, size)


def _edited(name: str, **changes) -> bytes:
    """A pydicom test file with some elements changed, written back to bytes."""
    ds = pydicom.dcmread(testdata_path(name))
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    buffer = BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def test_every_pydicom_test_file_decodes_or_becomes_an_error_row():
    # About 250 files, 60 MB, a few seconds: no need to skip the large ones.
    paths = sorted(Path(p) for p in get_testdata_files() if Path(p).is_file())
    rows, expected = [], {}
    for i, path in enumerate(paths):
        data = path.read_bytes()
        if sniff_format(data, path.name) != "dicom":
            continue
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=False)
        has_pixels = "PixelData" in ds
        image_id = f"{i}:{path.name}"
        rows.append(_row(path, data, image_id))
        if path.name in KNOWN_BROKEN:
            expected[image_id] = ("broken", KNOWN_BROKEN[path.name])
        elif not has_pixels:
            sop_class = ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID")
            if sop_class is None and data[128:132] != b"DICM" and not ds.file_meta:
                cause = causes.NOT_DICOM  # a .dcm name, but nothing in the bytes says DICOM
            elif "Image" in str(getattr(sop_class, "name", "")) or "Rows" in ds:
                cause = causes.NO_PIXELS  # an image header stripped of its pixels
            else:
                cause = causes.NON_IMAGE  # a plan, report, waveform, directory
            expected[image_id] = ("no pixels", ("pixel data", cause))
        else:
            expected[image_id] = ("image", int(ds.get("NumberOfFrames", 1) or 1))
    assert len(rows) > 200
    frames, errors = _decode(rows)
    pixels = np.asarray(frames["pixels"].combine_chunks().values)
    assert np.isfinite(pixels).all() and pixels.min() >= 0.0 and pixels.max() <= 1.0
    frame_ids = frames["image_id"].to_pylist()
    error_rows = errors.to_pylist()
    for image_id, (kind, detail) in expected.items():
        mine = [e for e in error_rows if e["image_id"] == image_id]
        indices = sorted(f for f, i in zip(frames["frame_index"].to_pylist(), frame_ids) if i == image_id)
        if kind == "image":
            assert mine == [], (image_id, mine)
            assert indices == list(range(detail)), image_id
        else:
            assert indices == [], image_id
            words, cause = detail
            assert len(mine) == 1 and mine[0]["stage"] == "decode", image_id
            assert words in mine[0]["message"], (image_id, mine[0]["message"])
            assert mine[0]["error_type"] == cause.name, (image_id, mine[0]["error_type"], mine[0]["message"])
            assert "not an image object" not in mine[0]["message"]
            assert mine[0]["source_uri"].endswith(image_id.split(":", 1)[1])


LOSSLESS_FAMILIES = [
    ["MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_expb.dcm", "MR_small_padded.dcm",
     "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"],
    ["emri_small.dcm", "emri_small_big_endian.dcm", "emri_small_RLE.dcm", "emri_small_jpeg_2k_lossless.dcm",
     "emri_small_jpeg_ls_lossless.dcm"],
    # *_UNCI hold the decoded lossy (J2KI) image, *_UNCR the original one.
    ["US1_UNCR.dcm", "US1_J2KR.dcm"],
    ["US1_UNCI.dcm", "US1_J2KI.dcm"],
    ["RG1_UNCR.dcm", "RG1_J2KR.dcm"],
    ["RG1_UNCI.dcm", "RG1_J2KI.dcm"],
    ["693_UNCR.dcm", "693_J2KR.dcm"],
    ["693_UNCI.dcm", "693_J2KI.dcm"],
    ["MR2_UNCR.dcm", "MR2_J2KR.dcm"],
    ["MR2_UNCI.dcm", "MR2_J2KI.dcm"],
    ["SC_rgb.dcm", "SC_rgb_expb.dcm", "SC_rgb_rle.dcm", "SC_rgb_gdcm2k_uncompressed.dcm"],
    ["SC_rgb_2frame.dcm", "SC_rgb_expb_2frame.dcm", "SC_rgb_rle_2frame.dcm"],
    ["SC_rgb_16bit_2frame.dcm", "SC_rgb_expb_16bit_2frame.dcm", "SC_rgb_rle_16bit_2frame.dcm"],
    ["OBXXXX1A_2frame.dcm", "OBXXXX1A_expb_2frame.dcm", "OBXXXX1A_rle_2frame.dcm"],
    ["liver.dcm", "liver_expb.dcm"],
    ["gdcm-US-ALOKA-16.dcm", "gdcm-US-ALOKA-16_big.dcm"],
]
# Lossy encodings of the same image: (reference, lossy, max mean |difference|, max |difference|) at 64x64.
LOSSY = [
    ("US1_UNCR.dcm", "US1_J2KI.dcm", 0.02, 0.25),
    ("RG1_UNCR.dcm", "RG1_J2KI.dcm", 0.01, 0.25),
    # 3.5 kB for 512 x 512 16-bit (about 150:1) in a narrow CT window: the trimmed table edge moves.
    ("693_UNCR.dcm", "693_J2KI.dcm", 0.1, 1.0),
    ("MR2_UNCR.dcm", "MR2_J2KI.dcm", 0.01, 0.25),
    ("SC_rgb.dcm", "SC_rgb_jpeg_dcmtk.dcm", 0.02, 0.25),
    ("SC_rgb.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm", 0.02, 0.25),
    ("SC_rgb.dcm", "SC_rgb_jls_lossy_line.dcm", 0.02, 0.25),
]


def _extra_encodings() -> list[dict]:
    """Encodings the test files lack, made here from real files: deflated MR_small, RLE US1."""
    ds = pydicom.dcmread(testdata_path("MR_small.dcm"))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    deflated = BytesIO()
    ds.save_as(deflated)
    us1 = pydicom.dcmread(testdata_path("US1_UNCR.dcm"))
    us1.compress(RLELossless)
    rle = BytesIO()
    us1.save_as(rle)
    return [
        _row(Path("MR_small_deflate.dcm"), deflated.getvalue()),
        _row(Path("US1_RLE.dcm"), rle.getvalue()),
    ]


def test_same_image_under_every_transfer_syntax_gives_the_same_frames():
    names = sorted({n for family in LOSSLESS_FAMILIES for n in family} | {n for entry in LOSSY for n in entry[:2]})
    rows = [_row(testdata_path(n)) for n in names] + _extra_encodings()
    frames, errors = _decode(rows)
    assert errors.num_rows == 0, errors.to_pylist()
    families = [*LOSSLESS_FAMILIES, ["MR_small.dcm", "MR_small_deflate.dcm"], ["US1_UNCR.dcm", "US1_RLE.dcm"]]
    for family in families:
        reference = _pixels(frames, family[0])
        assert reference.shape[0] >= 1 and reference.std() > 0.01, family[0]
        for other in family[1:]:
            np.testing.assert_allclose(_pixels(frames, other), reference, atol=1e-6, rtol=0, err_msg=other)
    for reference, lossy, mean_tolerance, max_tolerance in LOSSY:
        difference = np.abs(_pixels(frames, lossy) - _pixels(frames, reference))
        assert difference.mean() < mean_tolerance, (lossy, difference.mean())
        assert difference.max() <= max_tolerance, (lossy, difference.max())


@pytest.mark.parametrize("crop", ["none", "trim"])
def test_reduced_resolution_matches_full_decode(crop):
    names = ["US1_J2KR.dcm", "RG1_J2KR.dcm", "693_J2KR.dcm", "MR2_J2KR.dcm", "RG3_J2KR.dcm", "MR2_J2KI.dcm",
             "color3d_jpeg_baseline.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm", "SC_rgb_jpeg_dcmtk.dcm"]
    rows = [_row(testdata_path(n)) for n in names]
    full, full_errors = _decode(rows, DecodeConfig(crop=crop, reduced_resolution=False))
    reduced, reduced_errors = _decode(rows, DecodeConfig(crop=crop, reduced_resolution=True))
    assert full_errors.num_rows == reduced_errors.num_rows == 0
    for name in names:
        a, b = _pixels(full, name), _pixels(reduced, name)
        assert a.shape == b.shape
        difference = np.abs(a - b)
        # Measured: mean 0.000-0.008 (0.011 trimmed, MR2_J2KI), max 0.17 (US1, trimmed).
        assert difference.mean() < 0.015, (name, difference.mean())
        assert difference.max() < 0.2, (name, difference.max())
    # 693 is a CT in a narrow window (W=100): reduced decoding would not be faithful, so it is not used.
    np.testing.assert_array_equal(_pixels(full, "693_J2KR.dcm"), _pixels(reduced, "693_J2KR.dcm"))


def test_reduced_resolution_really_decodes_less():
    from enrich_ray.decode.dicom import _j2k_reduced

    ds = pydicom.dcmread(testdata_path("MR2_J2KR.dcm"))
    codestream = next(generate_frames(ds.PixelData, number_of_frames=1))
    image = _j2k_reduced(codestream, ds, 0, DecodeConfig(reduced_resolution=True)).image
    assert image.shape == (128, 128)  # 1024 / 2**3: the smallest level still >= 2 * 64
    assert _j2k_reduced(codestream, ds, 0, DecodeConfig(size=128, reduced_resolution=True)).image.shape == (256, 256)


def _window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 linear window, written out as the standard states it."""
    out = np.empty_like(x, dtype=np.float64)
    low = x <= center - 0.5 - (width - 1) / 2
    high = x > center - 0.5 + (width - 1) / 2
    out[low], out[high] = 0.0, 1.0
    mid = ~(low | high)
    out[mid] = ((x[mid] - (center - 0.5)) / (width - 1) + 0.5)
    return out


def test_rescale_slope_intercept_and_window_by_hand():
    path = testdata_path("MR2_UNCR.dcm")
    ds = pydicom.dcmread(path)
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    assert slope != 1.0
    expected = _window(ds.pixel_array.astype(np.float64) * slope + intercept, float(ds.WindowCenter), float(ds.WindowWidth))
    (image,) = decode_dicom(path.read_bytes(), FULL)
    np.testing.assert_allclose(image, expected, atol=1e-5)
    # The same file with another slope and intercept, and no window: robust percentile scaling.
    data = _edited("MR_small.dcm", RescaleSlope=2.5, RescaleIntercept=-100)
    ds = pydicom.dcmread(BytesIO(data))
    del ds.WindowCenter, ds.WindowWidth
    buffer = BytesIO()
    ds.save_as(buffer)
    hu = ds.pixel_array.astype(np.float64) * 2.5 - 100
    lo, hi = np.percentile(hu, [FULL.percentile_low, FULL.percentile_high])
    (image,) = decode_dicom(buffer.getvalue(), FULL)
    np.testing.assert_allclose(image, np.clip((hu - lo) / (hi - lo), 0, 1), atol=1e-5)


def test_ct_intercept_applied_before_window():
    ds = pydicom.dcmread(testdata_path("693_UNCR.dcm"))
    assert float(ds.RescaleIntercept) == -1024
    hu = ds.pixel_array.astype(np.float64) + float(ds.RescaleIntercept)
    (image,) = decode_dicom(testdata_path("693_UNCR.dcm").read_bytes(), FULL)
    np.testing.assert_allclose(image, _window(hu, float(ds.WindowCenter), float(ds.WindowWidth)), atol=1e-5)


def test_monochrome1_is_inverted():
    mono2 = decode_dicom(_edited("MR_small.dcm", PhotometricInterpretation="MONOCHROME2"), FULL)[0]
    mono1 = decode_dicom(_edited("MR_small.dcm", PhotometricInterpretation="MONOCHROME1"), FULL)[0]
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)
    # A real MONOCHROME1 radiograph: bright bone has low stored values, so the window is flipped.
    ds = pydicom.dcmread(testdata_path("RG3_UNCR.dcm"))
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    expected = 1.0 - _window(ds.pixel_array.astype(np.float64), float(ds.WindowCenter), float(ds.WindowWidth))
    (image,) = decode_dicom(testdata_path("RG3_UNCR.dcm").read_bytes(), FULL)
    np.testing.assert_allclose(image, expected, atol=1e-5)


def test_multi_frame_is_split_into_frames():
    path = testdata_path("emri_small.dcm")
    ds = pydicom.dcmread(path)
    frames = decode_dicom(path.read_bytes(), FULL)
    assert len(frames) == int(ds.NumberOfFrames) == 10
    stack = ds.pixel_array.astype(np.float64)
    for k, frame in enumerate(frames):  # no window in this file: each frame scaled on its own percentiles
        lo, hi = np.percentile(stack[k], [FULL.percentile_low, FULL.percentile_high])
        np.testing.assert_allclose(frame, np.clip((stack[k] - lo) / (hi - lo), 0, 1), atol=1e-5)
    out, _ = _decode([_row(path)])
    assert sorted(out["frame_index"].to_pylist()) == list(range(10))
    assert len({p.tobytes() for p in _pixels(out, "emri_small.dcm")}) == 10


def test_palette_colour_converted_to_grey_by_hand():
    path = testdata_path("OBXXXX1A.dcm")
    ds = pydicom.dcmread(path)
    entries, first, bits = (int(v) for v in ds.RedPaletteColorLookupTableDescriptor)
    assert bits == 16 and first == 0
    lut = [np.frombuffer(getattr(ds, f"{c}PaletteColorLookupTableData"), dtype="<u2")[:entries] for c in ("Red", "Green", "Blue")]
    index = np.clip(ds.pixel_array.astype(np.int64) - first, 0, entries - 1)
    rgb = np.stack([channel[index] for channel in lut], axis=-1).astype(np.float64)
    expected = rgb @ LUMA_WEIGHTS.astype(np.float64) / 65535.0
    (image,) = decode_dicom(path.read_bytes(), FULL)
    np.testing.assert_allclose(image, expected, atol=1e-5)


def test_rgb_and_ybr_converted_to_luma():
    rgb = pydicom.dcmread(testdata_path("SC_rgb.dcm")).pixel_array.astype(np.float64)
    expected = rgb @ LUMA_WEIGHTS.astype(np.float64) / 255.0
    for name in ("SC_rgb.dcm", "SC_ybr_full_uncompressed.dcm"):  # pydicom turns YBR_FULL into RGB
        (image,) = decode_dicom(testdata_path(name).read_bytes(), FULL)
        np.testing.assert_allclose(image, expected, atol=0.02 if "ybr" in name else 1e-5, err_msg=name)


def test_modality_and_voi_lut_sequences_follow_pydicom():
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    for name in ("mlut_18.dcm", "vlut_04.dcm"):
        ds = pydicom.dcmread(testdata_path(name))
        (image,) = decode_dicom(testdata_path(name).read_bytes(), FULL)
        assert np.isfinite(image).all() and 0.0 <= image.min() and image.max() <= 1.0
        if name == "vlut_04.dcm":
            bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
            expected = apply_voi_lut(ds.pixel_array, ds, prefer_lut=True) / (2**bits - 1)
            np.testing.assert_allclose(image, expected, atol=1e-5)
        else:
            assert image.std() > 0.05  # a modality LUT output scaled on its percentiles, not blank
            assert apply_modality_lut(ds.pixel_array, ds).shape == image.shape


def test_one_bad_frame_is_one_error_row():
    ds = pydicom.dcmread(testdata_path("emri_small_RLE.dcm"))
    fragments = list(generate_frames(ds.PixelData, number_of_frames=10))
    fragments[3] = fragments[3][:20]  # a cut RLE frame
    ds.PixelData = encapsulate(fragments)
    buffer = BytesIO()
    ds.save_as(buffer)
    frames, errors = _decode([_row(Path("cut.dcm"), buffer.getvalue())])
    assert sorted(frames["frame_index"].to_pylist()) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    (error,) = errors.to_pylist()
    assert error["frame_index"] == 3 and error["image_id"] == "cut.dcm" and "frame 3 of 10" in error["message"]


def test_oversized_frame_is_a_decompression_bomb_error():
    frames, errors = _decode([_row(testdata_path("MR_small.dcm"))], DecodeConfig(max_image_pixels=1000))
    assert frames.num_rows == 0
    assert "decompression-bomb" in errors["message"][0].as_py()


def test_objects_without_pixels_say_what_they_are_and_are_no_image_not_errors():
    names = ["rtplan.dcm", "test-SR.dcm", "waveform_ecg.dcm", "DICOMDIR", "IM000000"]
    frames, errors = _decode([_row(testdata_path(name)) for name in names])
    assert frames.num_rows == 0
    rows = {e["image_id"]: e for e in errors.to_pylist()}
    assert rows["rtplan.dcm"]["message"] == "no image here: this RT Plan Storage object (modality RTPLAN) holds no pixel data"
    assert "Comprehensive SR Storage" in rows["test-SR.dcm"]["message"]
    assert "12-lead ECG Waveform Storage object (modality ECG)" in rows["waveform_ecg.dcm"]["message"]
    assert "Media Storage Directory Storage" in rows["DICOMDIR"]["message"]
    # A CT image header stripped of its pixels is an image object: the message must not call it anything else.
    assert rows["IM000000"]["message"].startswith("this CT Image Storage object (modality CT) has no pixel data")
    assert [rows[n]["error_type"] for n in names] == ["NonImageObject"] * 4 + ["ImageWithoutPixels"]
    assert all(causes.cause_of(rows[n]["error_type"]).no_image for n in names)


def test_compression_without_a_decoder_is_unsupported_once_per_file():
    ds = pydicom.dcmread(testdata_path("emri_small_RLE.dcm"))  # 10 encapsulated frames
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: pydicom has no decoder for video
    buffer = BytesIO()
    ds.save_as(buffer)
    frames, errors = _decode([_row(Path("video.dcm"), buffer.getvalue())])
    assert frames.num_rows == 0
    (error,) = errors.to_pylist()
    assert error["error_type"] == "UnsupportedCompression" and error["frame_index"] is None
    assert error["message"].startswith("unsupported compression: no decoder reads MPEG2 Main Profile / Main Level")
    assert not causes.cause_of(error["error_type"]).no_image


def test_garbage_and_empty_rows_become_error_rows():
    rows = [
        {"image_id": "a", "source_uri": "x/a.dcm", "format": "dicom", "data": b"not dicom at all" * 10},
        {"image_id": "b", "source_uri": "x/b.dcm", "format": "dicom", "data": b""},
        {"image_id": "c", "source_uri": "x/c.tif", "format": "tiff", "data": b"II*\x00"},
    ]
    frames, errors = _decode(rows)
    assert frames.num_rows == 0
    messages = {e["image_id"]: e["message"] for e in errors.to_pylist()}
    assert set(messages) == {"a", "b", "c"}
    assert "empty file" in messages["b"] and "unsupported format" in messages["c"]
    types = {e["image_id"]: e["error_type"] for e in errors.to_pylist()}
    assert types == {"a": "NotDicom", "b": "NotAnImageFile", "c": "NotAnImageFile"}


def test_frames_carry_the_archive_header_fields():
    path = testdata_path("CT_small.dcm")
    data = path.read_bytes()
    header = read_header(data, b"secret")
    row = {**_row(path, data), "source_uris": [str(path)], "size_bytes": len(data), **header}
    frames, _ = decode_batch(pa.Table.from_pylist([row], schema=schema.ARCHIVE), FULL)
    (out,) = frames.to_pylist()
    for key in schema.GROUP_KEYS:
        assert out[key] == header[key]
    assert out["format"] == "dicom" and out["is_constant"] is False and len(out["pixels"]) == 64 * 64


def test_read_header_fields_and_patient_key():
    path = testdata_path("CT_small.dcm")
    ds = pydicom.dcmread(path)
    header = read_header(path.read_bytes(), b"site-key")
    assert list(header) == schema.HEADER_NAMES
    expected_key = hmac.new(b"site-key", str(ds.PatientID).encode(), hashlib.sha256).hexdigest()
    assert header["patient_key"] == expected_key
    assert header["study_uid"] == ds.StudyInstanceUID and header["series_uid"] == ds.SeriesInstanceUID
    assert header["sop_uid"] == ds.SOPInstanceUID and header["modality"] == "CT"
    assert (header["n_frames"], header["rows"], header["cols"]) == (1, 128, 128)
    assert header["photometric"] == "MONOCHROME2" and header["transfer_syntax"] == "1.2.840.10008.1.2.1"
    assert read_header(path.read_bytes(), None)["patient_key"] is None
    text = repr(header)
    for phi in (str(ds.PatientName), str(ds.PatientID)):
        assert phi not in text
    assert read_header(testdata_path("emri_small.dcm").read_bytes(), b"k")["n_frames"] == 10


def test_read_header_infers_transfer_syntax_without_file_meta_and_rejects_garbage():
    header = read_header(testdata_path("OT-PAL-8-face.dcm").read_bytes(), None)
    assert header["transfer_syntax"] == "1.2.840.10008.1.2" and header["photometric"] == "PALETTE COLOR"
    with pytest.raises(DicomError, match="no data elements"):
        read_header(b"", None)


def test_sniff_format():
    assert sniff_format(testdata_path("CT_small.dcm").read_bytes(), "CT_small.dcm") == "dicom"
    # No preamble, no file meta, no extension.
    assert sniff_format(testdata_path("OT-PAL-8-face.dcm").read_bytes(), "face") == "dicom"
    assert sniff_format(testdata_path("ExplVR_BigEndNoMeta.dcm").read_bytes(), "rtplan") == "dicom"
    assert sniff_format(b"\x89PNG\r\n\x1a\n" + b"\0" * 20, "a") == "png"
    assert sniff_format(b"\xff\xd8\xff\xe0", "a") == "jpeg"
    # Files that only claim to be images keep their claim, so they become error rows later.
    assert sniff_format(b"", "empty.PNG") == "png"
    assert sniff_format(b"\x00" * 10, "cut.dcm") == "dicom"
    assert sniff_format(b"hello", "scan.jpeg") == "jpeg"
    assert sniff_format(b"hello", "notes.txt") is None
    assert sniff_format(b"\x08\x00 random bytes that are no dataset", "x.bin") is None
    assert sniff_format(testdata_path("README.txt").read_bytes(), "README.txt") is None


def test_preprocessed_frame_matches_decode_then_preprocess():
    path = testdata_path("CT_small.dcm")
    frames, _ = _decode([_row(path)])
    (image,) = decode_dicom(path.read_bytes(), FULL)
    expected, _ = preprocess(image, FULL)
    np.testing.assert_array_equal(_pixels(frames, "CT_small.dcm")[0], expected)


def test_native_fast_path_equals_pydicom_pixel_array():
    from enrich_ray.decode.dicom import frame_count, native_frames, transfer_syntax

    compared = 0
    for path in sorted(Path(p) for p in get_testdata_files() if Path(p).is_file()):
        if sniff_format(path.read_bytes(), path.name) != "dicom" or path.name in KNOWN_BROKEN:
            continue
        ds = pydicom.dcmread(path, force=True)
        ts = transfer_syntax(ds)
        if "PixelData" not in ds or ts is None or ts.is_encapsulated:
            continue
        ds.file_meta.TransferSyntaxUID = ts
        fast = native_frames(ds, ts, frame_count(ds) or 1)
        if fast is not None:
            np.testing.assert_array_equal(fast, ds.pixel_array.reshape(fast.shape), err_msg=path.name)
            compared += 1
    assert compared >= 50  # signed and unsigned, 8 and 16 bit, little and big endian, BitsStored < 16


@pytest.mark.parametrize("function", ["SIGMOID", "LINEAR_EXACT"])
def test_other_voi_functions_by_hand(function):
    data = _edited("MR_small.dcm", VOILUTFunction=function, WindowCenter=700, WindowWidth=900)
    x = pydicom.dcmread(BytesIO(data)).pixel_array.astype(np.float64)
    if function == "SIGMOID":
        expected = 1.0 / (1.0 + np.exp(-4.0 * (x - 700) / 900))
    else:
        expected = np.clip((x - 700) / 900 + 0.5, 0, 1)
    (image,) = decode_dicom(data, FULL)
    np.testing.assert_allclose(image, expected, atol=1e-5)


def test_jpeg_greyscale_shortcut_matches_pydicom_rgb_decode():
    from enrich_ray.decode.dicom import _jpeg_grey

    for name in ("color3d_jpeg_baseline.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm", "SC_rgb_jpeg_dcmtk.dcm"):
        ds = pydicom.dcmread(testdata_path(name))
        n = int(ds.get("NumberOfFrames", 1) or 1)
        for index, codestream in zip(range(2), generate_frames(ds.PixelData, number_of_frames=n)):
            rgb = pydicom.pixels.pixel_array(ds, index=index)
            reference = rgb.astype(np.float64) @ LUMA_WEIGHTS.astype(np.float64)
            decoded = _jpeg_grey(codestream, ds, index, FULL)
            assert decoded is not None
            grey = decoded.image
            assert grey.shape == reference.shape
            # Colourfulness from the 1/8-size colour decode against the full RGB decode's.
            assert abs(decoded.colorfulness - colorfulness(rgb, 255)) < 0.25 * colorfulness(rgb, 255) + 0.01, name
            # libjpeg's Y channel against pydicom's RGB -> luma: they differ where RGB clips
            # saturated colours, and by IDCT rounding (measured: max 6.6 levels in color3d).
            difference = np.abs(grey - reference / 255.0)
            assert difference.mean() < 1 / 255 and difference.max() < 10 / 255, (name, difference.mean())


def test_error_counts_keep_files_without_an_image_apart_from_unreadable_ones():
    import pandas as pd

    from enrich_ray.decode.causes import error_counts

    errors = pd.DataFrame({"stage": ["decode", "decode", "decode", "pack", "embed"],
                           "error_type": ["NonImageObject", "ImageWithoutPixels", "Truncated", "PermissionError", "ValueError"]})
    assert error_counts(errors) == {"error_rows": 5, "unreadable_rows": 3, "no_image_rows": 2}
    assert error_counts(errors.iloc[:0]) == {"error_rows": 0, "unreadable_rows": 0, "no_image_rows": 0}
