"""From a display-space image to the autoencoder's input: grey, cropped, size x size, in [0, 1].

The paper's preprocessing (Methods): grayscale, crop, resize to 64x64. Decoders hand over a
float image already in display space; this module owns the steps every format shares.
"""
from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

from enrich_ray.config import DecodeConfig

# ITU-R BT.601 luma weights, the usual RGB -> grey conversion (and libjpeg's).
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# Percentiles and colourfulness are taken on a strided sample of at most about this many pixels.
_PERCENTILE_SAMPLE = 65_536
# A frame whose values differ by no more than this is constant (blank).
_CONSTANT_SPREAD = 1e-6


class DisplayImage(NamedTuple):
    """A decoded frame: its 2-D float32 display image in [0, 1] and how colourful its source was; for a
    colour source decoded with keep_colour (the export's renderings), its (H, W, 3) RGB in [0, 1] too."""

    image: np.ndarray
    colorfulness: float = 0.0
    colour: np.ndarray | None = None


def unit_rgb(rgb: np.ndarray, peak: float) -> np.ndarray:
    """The first three channels of an (H, W, >=3) RGB array as float32 in [0, 1] (stored values / peak)."""
    return np.clip(rgb[..., :3].astype(np.float32) * np.float32(1.0 / peak), 0.0, 1.0)


def rgb_to_grey(rgb: np.ndarray) -> np.ndarray:
    """Luma of an (..., 3) RGB array as float32, in the input's units."""
    return rgb[..., :3].astype(np.float32, copy=False) @ LUMA_WEIGHTS


def _sample_step(height: int, width: int) -> int:
    """The stride that leaves at most about _PERCENTILE_SAMPLE pixels of a height x width image."""
    return max(1, int(np.ceil(np.sqrt(height * width / _PERCENTILE_SAMPLE))))


def colorfulness(rgb: np.ndarray, peak: float, alpha: np.ndarray | None = None) -> float:
    """Mean over pixels of (max channel - min channel) / peak of an (H, W, >=3) colour array, in [0, 1].

    0 for grey content in a colour container (R = G = B). Measured on a strided sample of at most
    about 65,536 pixels (a mean needs no more); alpha (0-peak), when given, weights each pixel as
    compositing over black does.
    """
    step = _sample_step(rgb.shape[0], rgb.shape[1])
    r, g, b = (rgb[::step, ::step, c] for c in range(3))
    spread = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)  # >= 0: no unsigned wrap
    if spread.size == 0:
        return 0.0
    if alpha is None:
        mean = spread.mean(dtype=np.float64)
    else:
        mean = np.mean(spread * (alpha[::step, ::step] / np.float64(peak)))
    return float(np.clip(mean / peak, 0.0, 1.0))


def robust_scale(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map the [low, high] percentiles of a 2-D image to [0, 1], clipped; a constant image maps to zeros.

    Used when a file carries no display transform (no DICOM window or VOI LUT).
    """
    image = image.astype(np.float32, copy=False)
    step = _sample_step(*image.shape)
    sample = image[::step, ::step]
    lo, hi = (float(v) for v in np.percentile(sample, [low, high]))
    if hi <= lo:  # a narrow histogram: fall back to the full range
        lo, hi = float(image.min()), float(image.max())
    if hi <= lo:
        return np.zeros_like(image)
    out = (image - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    return np.clip(out, 0.0, 1.0, out=out)


# Reduced-resolution decoding stops while both sides are still at least this many times the
# output size: the display window is applied before the final area average, so nearly all of
# the averaging still happens after it. tests/benchmarks/bench_decode.py prints the mean and
# largest difference to the full decode at this margin.
REDUCED_MARGIN = 2


def reduction_levels(rows: int, cols: int, size: int, max_levels: int) -> int:
    """How many halvings keep both sides at least REDUCED_MARGIN * size (ceil-rounded, as JPEG 2000 and libjpeg do)."""
    least = REDUCED_MARGIN * size
    levels = 0
    while levels < max_levels and min(-(-rows // 2 ** (levels + 1)), -(-cols // 2 ** (levels + 1))) >= least:
        levels += 1
    return levels


def _content_span(spread: np.ndarray, tolerance: float) -> tuple[int, int]:
    """First and one-past-last index whose spread reaches tolerance; the whole range when none does."""
    busy = np.flatnonzero(spread >= tolerance)
    if busy.size == 0:
        return 0, spread.size
    return int(busy[0]), int(busy[-1]) + 1


def _trim_box(image: np.ndarray, tolerance: float) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) after removing near-constant border rows and columns, in turn until stable."""
    top, bottom, left, right = 0, image.shape[0], 0, image.shape[1]
    while True:
        view = image[top:bottom, left:right]
        r0, r1 = _content_span(view.max(axis=1) - view.min(axis=1), tolerance)
        view = view[r0:r1]
        c0, c1 = _content_span(view.max(axis=0) - view.min(axis=0), tolerance)
        if (r0, r1, c0, c1) == (0, bottom - top, 0, right - left):
            return top, bottom, left, right
        top, bottom, left, right = top + r0, top + r1, left + c0, left + c1


def trim_borders(image: np.ndarray, tolerance: float, proxy_side: int) -> np.ndarray:
    """Remove near-constant border rows and columns (black backgrounds, white edge artifacts).

    A border row or column is near-constant when its max - min is below tolerance, judged on an
    area-averaged proxy of at most proxy_side pixels a side: averaging quiets noise (so one noisy
    pixel does not keep a background row), and full and reduced-resolution decodes of the same
    image see the same proxy, so they crop the same region.
    """
    height, width = image.shape
    ph, pw = min(height, proxy_side), min(width, proxy_side)
    proxy = image if (ph, pw) == (height, width) else resize_area(image, (pw, ph))
    top, bottom, left, right = _trim_box(proxy, tolerance)
    top, bottom = (top * height) // ph, -((-bottom * height) // ph)
    left, right = (left * width) // pw, -((-right * width) // pw)
    return image[top:bottom, left:right]


def center_square(image: np.ndarray) -> np.ndarray:
    """The centred square of side min(height, width)."""
    h, w = image.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return image[top : top + side, left : left + side]


def crop(image: np.ndarray, mode: str, tolerance: float, proxy_side: int) -> np.ndarray:
    """Apply the configured crop: 'none', 'center' (square) or 'trim' (near-constant borders, see trim_borders)."""
    if mode == "none":
        return image
    if mode == "center":
        return center_square(image)
    if mode == "trim":
        return trim_borders(image, tolerance, proxy_side)
    raise ValueError(f"unknown crop mode {mode!r} (expected 'none', 'center' or 'trim')")


def resize_area(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Area-averaging resize (OpenCV INTER_AREA) to size x size, or to (width, height); float32."""
    width, height = (size, size) if isinstance(size, int) else size
    return cv2.resize(image.astype(np.float32, copy=False), (width, height), interpolation=cv2.INTER_AREA)


def preprocess(image: np.ndarray, cfg: DecodeConfig) -> tuple[np.ndarray, bool]:
    """Crop and resize a 2-D display-space image to cfg.size x cfg.size float32 in [0, 1].

    Returns (pixels, is_constant): a constant image is valid, filled with its level and flagged.
    Raises ValueError for an empty image or one with non-finite values.
    """
    if image.ndim != 2 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"expected a non-empty 2-D image, got shape {image.shape}")
    region = crop(image, cfg.crop, cfg.trim_tolerance, cfg.size)
    pixels = resize_area(region, cfg.size)
    if not np.isfinite(pixels).all():
        raise ValueError("image has non-finite pixel values (NaN or infinity)")
    np.clip(pixels, 0.0, 1.0, out=pixels)
    if float(pixels.max() - pixels.min()) <= _CONSTANT_SPREAD:
        pixels.fill(float(pixels.mean()))
        return pixels, True
    return pixels, False
