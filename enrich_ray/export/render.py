"""A frame as a labeler sees it: the decode pipeline's display image as an 8-bit PNG, grey or colour.

A monochrome frame is the grey image the decode stage hashes (modality LUT, VOI window, MONOCHROME1
inverted; decode/stage.display_frames); a colour frame (RGB, YBR, palette; a colour PNG or JPEG)
keeps its colours as the scanner stored them (decode's keep_colour: stored values over their peak,
no window), so a colour Doppler shows as the scanner showed it; one whose channels are equal
everywhere (grey stored as RGB) is a grey PNG. Both at full resolution, before the
crop and the resize to the embedder's 64x64, shrunk (area averaging) to at most RENDER_SIDE on the
long side and never enlarged.
"""
from __future__ import annotations

import dataclasses
import hashlib

import cv2
import numpy as np

from enrich_ray.config import DecodeConfig
from enrich_ray.decode.preprocess import resize_area
from enrich_ray.decode.stage import display_frames

RENDER_SIDE = 512  # pixels on the long side: a labeling tool's canvas, far above the 64x64 the embedder sees


def render_frames(data: bytes, fmt: str, wanted: set[int], cfg: DecodeConfig,
                  side: int = RENDER_SIDE) -> dict[int, np.ndarray | Exception]:
    """The wanted frames of one file as uint8 images, (H, W) grey or (H, W, 3) RGB for a colour source (or
    each failed frame's exception); a file that cannot be read at all raises. Decoded at full resolution
    whatever decode.reduced_resolution says."""
    full = dataclasses.replace(cfg, reduced_resolution=False)
    out: dict[int, np.ndarray | Exception] = {}
    for index, image in display_frames(data, fmt, full, keep_colour=True):
        if index in wanted:
            if isinstance(image, Exception):
                out[index] = image
            else:
                out[index] = grey_if_equal(to_8bit(fit(image.image if image.colour is None else image.colour, side)))
            if len(out) == len(wanted):
                break
    return out


def fit(image: np.ndarray, side: int) -> np.ndarray:
    """The image (grey or RGB) shrunk to at most `side` pixels on its long side (aspect kept), or as it is when smaller."""
    height, width = image.shape[:2]
    scale = side / max(height, width)
    if scale >= 1.0:
        return image
    return resize_area(image, (max(1, round(width * scale)), max(1, round(height * scale))))


def grey_if_equal(image: np.ndarray) -> np.ndarray:
    """An RGB image whose three channels are equal everywhere (grey in a colour container, as many PNGs
    are) as that one grey channel; any other image as it is."""
    if image.ndim == 3 and np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2]):
        return np.ascontiguousarray(image[..., 0])
    return image


def to_8bit(image: np.ndarray) -> np.ndarray:
    """A [0, 1] float image as uint8 (0-255, rounded; non-finite values black)."""
    return np.round(np.clip(np.nan_to_num(image, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    """A uint8 grey (H, W) or RGB (H, W, 3) image as a PNG file (8-bit grey or 8-bit RGB)."""
    ok, buf = cv2.imencode(".png", image[..., ::-1] if image.ndim == 3 else image)  # OpenCV writes BGR
    if not ok:
        raise ValueError(f"PNG encoding of a {image.shape} image failed")
    return buf.tobytes()


def pixel_md5(image: np.ndarray) -> str:
    """MD5 of the decoded pixels, row by row (RGB interleaved for colour): what CVAT's manifest calls an
    image's checksum (PIL tobytes)."""
    return hashlib.md5(np.ascontiguousarray(image).tobytes()).hexdigest()
