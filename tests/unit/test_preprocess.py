"""Crop, resize and scaling, each checked against a plain reference implementation on real images."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from enrich_ray.config import DecodeConfig
from enrich_ray.decode.preprocess import (
    center_square,
    preprocess,
    reduction_levels,
    resize_area,
    rgb_to_grey,
    robust_scale,
    trim_borders,
)


@pytest.fixture(scope="module")
def ultrasound(busi_dir: Path) -> np.ndarray:
    """A real BUSI image as float grey in [0, 1], 256 x 256."""
    path = sorted(busi_dir.rglob("*.png"))[7]
    return np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix: the share of each input pixel inside each output cell (exact area average)."""
    scale = n_in / n_out
    weights = np.zeros((n_out, n_in))
    for i in range(n_out):
        start, stop = i * scale, (i + 1) * scale
        for j in range(int(np.floor(start)), int(np.ceil(stop))):
            weights[i, j] = min(stop, j + 1) - max(start, j)
    return weights / scale


@pytest.mark.parametrize("shape", [(256, 256), (200, 150), (97, 131)])
def test_area_resize_matches_exact_area_average(ultrasound, shape):
    image = ultrasound[: shape[0], : shape[1]]
    expected = _area_weights(shape[0], 64) @ image.astype(np.float64) @ _area_weights(shape[1], 64).T
    np.testing.assert_allclose(resize_area(image, 64), expected, atol=1e-5)


def test_area_resize_of_integer_factor_is_the_block_mean(ultrasound):
    block_mean = ultrasound.reshape(64, 4, 64, 4).mean(axis=(1, 3))
    np.testing.assert_allclose(resize_area(ultrasound, 64), block_mean, atol=1e-6)


def _trim_reference(image: np.ndarray, tolerance: float) -> tuple[int, int, int, int]:
    """Peel near-constant border lines one at a time, from any side, until none is left."""
    top, bottom, left, right = 0, image.shape[0], 0, image.shape[1]

    def flat(line: np.ndarray) -> bool:
        return line.max() - line.min() < tolerance

    changed = True
    while changed and bottom - top > 1 and right - left > 1:
        changed = False
        for side in ("top", "bottom", "left", "right"):
            view = image[top:bottom, left:right]
            line = {"top": view[0], "bottom": view[-1], "left": view[:, 0], "right": view[:, -1]}[side]
            if flat(line) and min(view.shape) > 1:
                top, bottom, left, right = (top + (side == "top"), bottom - (side == "bottom"),
                                            left + (side == "left"), right - (side == "right"))
                changed = True
    return top, bottom, left, right


def test_trim_removes_black_background_and_white_edges_like_the_reference(ultrasound):
    content = ultrasound[40:220, 30:230]
    framed = np.zeros((300, 320), dtype=np.float32)  # black background
    framed[50:230, 70:270] = content
    framed[:, :3] = 1.0  # a white edge artifact on the left
    framed[-2:, :] = 0.98  # and at the bottom
    top, bottom, left, right = _trim_reference(framed, 0.04)
    trimmed = trim_borders(framed, 0.04, proxy_side=10_000)  # proxy = the image itself
    np.testing.assert_array_equal(trimmed, framed[top:bottom, left:right])
    assert trimmed.shape[0] <= content.shape[0] and trimmed.shape[1] <= content.shape[1]
    assert trimmed.shape[0] >= content.shape[0] - 20 and trimmed.shape[1] >= content.shape[1] - 20


def test_trim_on_a_coarse_proxy_keeps_the_content(ultrasound):
    framed = np.zeros((512, 512), dtype=np.float32)
    framed[100:356, 128:384] = ultrasound
    trimmed = trim_borders(framed, 0.04, proxy_side=64)  # 8 x 8 pixel proxy cells
    rows = np.flatnonzero(framed.max(axis=1) - framed.min(axis=1) >= 0.04)
    cols = np.flatnonzero(framed.max(axis=0) - framed.min(axis=0) >= 0.04)
    assert rows[-1] - rows[0] + 1 <= trimmed.shape[0] <= rows[-1] - rows[0] + 1 + 16
    assert cols[-1] - cols[0] + 1 <= trimmed.shape[1] <= cols[-1] - cols[0] + 1 + 16


def test_trim_keeps_a_constant_image_whole():
    flat = np.full((40, 30), 0.2, dtype=np.float32)
    assert trim_borders(flat, 0.04, proxy_side=64).shape == (40, 30)


def test_center_square(ultrasound):
    wide = ultrasound[:100, :]
    np.testing.assert_array_equal(center_square(wide), wide[:, 78:178])
    np.testing.assert_array_equal(center_square(wide.T), wide.T[78:178, :])


def test_robust_scale_matches_numpy_percentiles(ultrasound):
    lo, hi = np.percentile(ultrasound, [0.5, 99.5])
    expected = np.clip((ultrasound - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(robust_scale(ultrasound, 0.5, 99.5), expected, atol=1e-6)
    assert not robust_scale(np.full((5, 5), 7.0), 0.5, 99.5).any()  # constant: zeros, no NaN


def test_robust_scale_samples_large_images_faithfully(ultrasound):
    large = np.tile(ultrasound, (4, 4))  # 1024 x 1024: percentiles from a strided sample
    lo, hi = np.percentile(large, [0.5, 99.5])
    exact = np.clip((large - lo) / (hi - lo), 0, 1)
    assert np.abs(robust_scale(large, 0.5, 99.5) - exact).max() < 0.02


@pytest.mark.parametrize("crop", ["none", "center", "trim"])
def test_preprocess_output(ultrasound, crop):
    pixels, is_constant = preprocess(ultrasound[:, :200], DecodeConfig(crop=crop))
    assert pixels.shape == (64, 64) and pixels.dtype == np.float32
    assert not is_constant and 0.0 <= pixels.min() and pixels.max() <= 1.0


def test_preprocess_with_no_crop_is_the_area_resize(ultrasound):
    pixels, _ = preprocess(ultrasound, DecodeConfig(crop="none", size=32))
    np.testing.assert_allclose(pixels, ultrasound.reshape(32, 8, 32, 8).mean(axis=(1, 3)), atol=1e-6)


def test_constant_images_are_valid_and_flagged():
    for level in (0.0, 0.37, 1.0):
        pixels, is_constant = preprocess(np.full((90, 70), level, dtype=np.float32), DecodeConfig())
        assert is_constant and np.isfinite(pixels).all()
        np.testing.assert_allclose(pixels, level, atol=1e-6)


def test_bad_images_raise_clear_errors():
    with pytest.raises(ValueError, match="non-finite"):
        preprocess(np.array([[0.0, np.nan], [0.5, 1.0]], dtype=np.float32), DecodeConfig(crop="none"))
    with pytest.raises(ValueError, match="non-empty 2-D"):
        preprocess(np.zeros((0, 5), dtype=np.float32), DecodeConfig())
    with pytest.raises(ValueError, match="unknown crop mode"):
        preprocess(np.zeros((5, 5), dtype=np.float32), DecodeConfig(crop="oval"))  # type: ignore[arg-type]


def test_rgb_to_grey_uses_bt601_weights():
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]], dtype=np.uint8)
    np.testing.assert_allclose(rgb_to_grey(rgb)[0], [0.299 * 255, 0.587 * 255, 0.114 * 255, 2.99 + 11.74 + 3.42], rtol=1e-6)


def test_reduction_levels_keep_twice_the_output_size():
    assert reduction_levels(512, 512, 64, 5) == 2  # 128 x 128
    assert reduction_levels(1955, 1841, 64, 5) == 3  # 245 x 231 (not 122 x 116)
    assert reduction_levels(480, 640, 64, 3) == 1  # 240 x 320; a second halving gives 120 rows < 128
    assert reduction_levels(4096, 4096, 64, 3) == 3  # capped by the codec's levels
    assert reduction_levels(100, 100, 64, 5) == 0
