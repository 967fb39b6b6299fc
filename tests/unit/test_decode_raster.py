"""PNG and JPEG decoding, on the BUSI ultrasound PNGs and on images made here with Pillow and OpenCV."""
from __future__ import annotations

import struct
import zlib
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from enrich_ray import schema
from enrich_ray.config import DecodeConfig
from enrich_ray.decode.preprocess import LUMA_WEIGHTS, preprocess
from enrich_ray.decode.raster import RasterError, decode_raster, raster_size
from enrich_ray.decode.sniff import sniff_format
from enrich_ray.decode.stage import decode_batch

FULL = DecodeConfig(reduced_resolution=False)


def _png(image: Image.Image) -> bytes:
    buffer = BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64) @ LUMA_WEIGHTS.astype(np.float64)


def _decode(rows: list[dict], cfg: DecodeConfig = FULL) -> tuple[pa.Table, pa.Table]:
    frames, errors = decode_batch(pa.Table.from_pylist(rows), cfg)
    assert frames.schema == schema.frames_schema(cfg.size) and errors.schema == schema.ERRORS
    return frames, errors


def _row(name: str, data: bytes, fmt: str = "png") -> dict:
    return {"image_id": name, "source_uri": f"mem/{name}", "format": fmt, "data": data}


@pytest.fixture(scope="module")
def busi_files(busi_dir: Path) -> list[Path]:
    files = sorted(busi_dir.rglob("*.png"))
    assert len(files) >= 700
    return files


def test_busi_pngs_decode_through_the_stage(busi_files):
    sample = busi_files[::10]  # 78 files from every class; names with spaces and parentheses
    assert any(" (" in p.name for p in sample)
    rows = []
    for path in sample:
        data = path.read_bytes()
        assert sniff_format(data, path.name) == "png"
        rows.append({"image_id": path.name, "source_uri": str(path), "format": "png", "data": data})
    frames, errors = _decode(rows)
    assert errors.num_rows == 0 and frames.num_rows == len(sample)
    assert set(frames["source_uri"].to_pylist()) == {str(p) for p in sample}
    pixels = np.asarray(frames["pixels"].combine_chunks().values).reshape(-1, 64, 64)
    assert np.isfinite(pixels).all() and pixels.min() >= 0 and pixels.max() <= 1
    assert not any(frames["is_constant"].to_pylist())
    assert frames["frame_index"].to_pylist() == [0] * len(sample)


def test_busi_png_matches_a_pillow_reference(busi_files):
    path = busi_files[0]
    rgb = np.asarray(Image.open(path).convert("RGB"))
    image = decode_raster(path.read_bytes(), FULL).image
    np.testing.assert_allclose(image, _luma(rgb) / 255.0, atol=1e-6)


def test_grey_16_bit_png_keeps_its_precision():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 65536, size=(40, 50), dtype=np.uint16)
    ok, encoded = cv2.imencode(".png", values)
    assert ok
    image = decode_raster(encoded.tobytes(), FULL).image
    np.testing.assert_allclose(image, values / 65535.0, atol=1e-7)
    # 16-bit and 8-bit copies of one image (v * 257) decode alike.
    eight = (values >> 8).astype(np.uint8)
    ok, encoded8 = cv2.imencode(".png", eight)
    ok, encoded16 = cv2.imencode(".png", eight.astype(np.uint16) * 257)
    np.testing.assert_allclose(decode_raster(encoded8.tobytes(), FULL).image, decode_raster(encoded16.tobytes(), FULL).image, atol=1e-6)


def test_rgba_png_is_composited_over_black():
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, size=(30, 20, 4), dtype=np.uint8)
    image = decode_raster(_png(Image.fromarray(rgba, mode="RGBA")), FULL).image
    expected = _luma(rgba[..., :3]) / 255.0 * (rgba[..., 3] / 255.0)
    np.testing.assert_allclose(image, expected, atol=1e-5)


def test_palette_png_is_converted_through_its_palette(busi_files):
    palette_image = Image.open(busi_files[5]).convert("RGB").quantize(colors=64)
    assert palette_image.mode == "P"
    rgb = np.asarray(palette_image.convert("RGB"))
    image = decode_raster(_png(palette_image), FULL).image
    np.testing.assert_allclose(image, _luma(rgb) / 255.0, atol=1e-5)


def test_grey_and_la_pngs():
    rng = np.random.default_rng(2)
    grey = rng.integers(0, 256, size=(16, 24), dtype=np.uint8)
    np.testing.assert_allclose(decode_raster(_png(Image.fromarray(grey, mode="L")), FULL).image, grey / 255.0, atol=1e-7)
    la = np.stack([grey, np.full_like(grey, 255)], axis=-1)
    np.testing.assert_allclose(decode_raster(_png(Image.fromarray(la, mode="LA")), FULL).image, grey / 255.0, atol=1e-5)


def test_jpeg_decodes_to_luma_and_reduced_decode_stays_close(busi_files):
    rgb = np.asarray(Image.open(busi_files[3]).convert("RGB"))
    big = cv2.resize(rgb, (512, 512), interpolation=cv2.INTER_CUBIC)  # a 512x512 JPEG: two halvings allowed
    buffer = BytesIO()
    Image.fromarray(big).save(buffer, format="JPEG", quality=95)
    data = buffer.getvalue()
    assert sniff_format(data, "x.jpg") == "jpeg" and raster_size(data) == ("jpeg", 512, 512)
    full = decode_raster(data, FULL).image
    np.testing.assert_allclose(full, _luma(big) / 255.0, atol=0.05)  # JPEG is lossy: within a few levels
    reduced = decode_raster(data, DecodeConfig(reduced_resolution=True)).image
    assert reduced.shape == (128, 128)
    a, _ = preprocess(full, FULL)
    b, _ = preprocess(reduced, FULL)
    assert np.abs(a - b).mean() < 0.01 and np.abs(a - b).max() < 0.1


def test_decompression_bomb_is_an_error_row_before_decoding():
    # A real bomb: 6000 x 6000 grey pixels of zeros in about 35 kB of PNG.
    width = height = 6000
    raw = zlib.compress(b"".join(b"\x00" + bytes(width) for _ in range(height)), 9)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
    assert len(bomb) < 100_000
    cfg = DecodeConfig(max_image_pixels=10_000_000)
    with pytest.raises(RasterError, match="decompression-bomb"):
        decode_raster(bomb, cfg)
    frames, errors = _decode([_row("bomb.png", bomb)], cfg)
    assert frames.num_rows == 0
    (error,) = errors.to_pylist()
    assert error["image_id"] == "bomb.png" and error["stage"] == "decode" and "36000000 pixels" in error["message"]


def test_truncated_corrupt_and_empty_files_are_error_rows(busi_files):
    data = busi_files[1].read_bytes()
    jpeg = BytesIO()
    Image.open(busi_files[1]).convert("RGB").save(jpeg, format="JPEG")
    jpeg = jpeg.getvalue()
    rows = [
        _row("half.png", data[: len(data) // 2]),
        _row("header_only.png", data[:30]),
        _row("cut.jpg", jpeg[: len(jpeg) - 100], "jpeg"),
        _row("empty.png", b""),
        _row("text.png", b"this is not an image"),
        _row("good.png", data),
    ]
    frames, errors = _decode(rows)
    assert frames["image_id"].to_pylist() == ["good.png"]
    messages = {e["image_id"]: e["message"] for e in errors.to_pylist()}
    assert set(messages) == {"half.png", "header_only.png", "cut.jpg", "empty.png", "text.png"}
    assert "truncated" in messages["half.png"] and "truncated" in messages["cut.jpg"]
    assert "empty file" in messages["empty.png"] and "not a PNG or JPEG" in messages["text.png"]
    assert all(e["frame_index"] is None and e["error_type"] for e in errors.to_pylist())


def test_constant_image_is_valid_and_flagged():
    flat = np.full((100, 80), 128, dtype=np.uint8)
    frames, errors = _decode([_row("flat.png", _png(Image.fromarray(flat, mode="L")))])
    assert errors.num_rows == 0
    (row,) = frames.to_pylist()
    assert row["is_constant"] is True
    np.testing.assert_allclose(row["pixels"], 128 / 255.0, atol=1e-6)
