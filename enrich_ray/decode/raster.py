"""PNG and JPEG: decoding to a display-space grey image in [0, 1], with a decompression-bomb guard.

The image size is read from the file header before any pixel is decoded, so an oversized image
fails fast with a clear error. PNG and JPEG carry display values already: 8-bit samples map by
/255, 16-bit by /65535 (the formats' own meaning). PNG colour becomes BT.601 luma and an alpha
channel is composited over black; JPEG is decoded straight to greyscale by libjpeg (its Y
channel: the same luma, without the RGB step). How colourful the source was (preprocess.colorfulness)
comes from the PNG's channels, and for a colour JPEG from a second decode at 1/8 size (libjpeg's
DCT scaling: about one entropy-decoding pass more).
"""
from __future__ import annotations

import cv2
import numpy as np

from enrich_ray.config import DecodeConfig
from enrich_ray.decode.causes import BAD_HEADER, CORRUPT, NOT_AN_IMAGE_FILE, TOO_LARGE, TRUNCATED, DecodeError
from enrich_ray.decode.preprocess import DisplayImage, colorfulness, reduction_levels, rgb_to_grey, unit_rgb
from enrich_ray.decode.sniff import JPEG_SIGNATURE, PNG_SIGNATURE

# Start-of-frame markers (SOF0-SOF15 less DHT, JPG and DAC) carry a JPEG's size.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
# Markers that stand alone, without a length field.
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD9)}
# OpenCV's greyscale JPEG decode at full size or with libjpeg's DCT scaling (1/2, 1/4, 1/8).
_JPEG_GREY = (
    cv2.IMREAD_GRAYSCALE,
    cv2.IMREAD_REDUCED_GRAYSCALE_2,
    cv2.IMREAD_REDUCED_GRAYSCALE_4,
    cv2.IMREAD_REDUCED_GRAYSCALE_8,
)


def jpeg_grey_flags(levels: int) -> int:
    """cv2.imdecode flags for an 8-bit greyscale JPEG decode at 1/2**levels (0-3), orientation as stored.

    libjpeg's greyscale output of a YCbCr JPEG is its Y channel: the BT.601 luma, no RGB step.
    """
    return _JPEG_GREY[levels] | cv2.IMREAD_IGNORE_ORIENTATION


class RasterError(DecodeError):
    """A PNG or JPEG file that cannot be turned into an image, with its cause (causes.py)."""


def _png_size(data: bytes) -> tuple[int, int]:
    if len(data) < 24:
        raise RasterError("truncated PNG: the file ends inside its IHDR header", TRUNCATED)
    if data[12:16] != b"IHDR":
        raise RasterError("corrupt PNG: no IHDR header after the signature", CORRUPT)
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _jpeg_size(data: bytes) -> tuple[int, int]:
    return _jpeg_frame_header(data)[:2]


def _jpeg_frame_header(data: bytes) -> tuple[int, int, int]:
    """(width, height, components) from a JPEG's start-of-frame header."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise RasterError(f"corrupt JPEG: expected a marker at byte {i}", CORRUPT)
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _JPEG_STANDALONE:
            i += 2
            continue
        if marker in _JPEG_SOF:
            if i + 10 > len(data):
                break
            return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big"), data[i + 9]
        if marker == 0xDA:  # start of scan before any frame header
            raise RasterError("corrupt JPEG: scan data before the frame header", CORRUPT)
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    raise RasterError("truncated JPEG: the data ends before a frame header", TRUNCATED)


def raster_size(data: bytes) -> tuple[str, int, int]:
    """(format, width, height) from a PNG or JPEG header, without decoding pixels."""
    if data.startswith(PNG_SIGNATURE):
        return ("png", *_png_size(data))
    if data.startswith(JPEG_SIGNATURE):
        return ("jpeg", *_jpeg_size(data))
    raise RasterError(f"not a PNG or JPEG file (starts with {data[:8].hex() or 'nothing: empty file'})", NOT_AN_IMAGE_FILE)


def raster_facts(data: bytes) -> dict:
    """The frames table's header facts of a PNG or JPEG, from its header: rows, cols, and photometric
    'RGB' or 'MONOCHROME2' by channels (PNG colour types 2, 3 and 6 are colour; a JPEG of 3 or more components)."""
    kind, width, height = raster_size(data)
    colour = data[25:26] in (b"\x02", b"\x03", b"\x06") if kind == "png" else _jpeg_frame_header(data)[2] >= 3
    return {"rows": height, "cols": width, "photometric": "RGB" if colour else "MONOCHROME2"}


def _to_unit_grey(arr: np.ndarray, keep_colour: bool = False) -> DisplayImage:
    """An OpenCV-decoded array (grey, BGR or BGRA; 8 or 16 bit) to float32 grey in [0, 1], with its colourfulness
    (and with keep_colour its RGB in [0, 1], alpha composited over black as for the grey)."""
    peak = np.iinfo(arr.dtype).max
    scale = np.float32(1.0 / peak)
    if arr.ndim == 2:
        return DisplayImage(arr.astype(np.float32) * scale)
    grey = rgb_to_grey(arr[..., 2::-1]) * scale  # BGR(A) -> RGB luma
    alpha = arr[..., 3] if arr.shape[2] == 4 else None
    rgb = unit_rgb(arr[..., 2::-1], peak) if keep_colour else None
    if alpha is not None:
        grey *= alpha.astype(np.float32) * scale
        if rgb is not None:
            rgb *= (alpha.astype(np.float32) * scale)[..., None]
    return DisplayImage(grey, colorfulness(arr, peak, alpha), rgb)


def jpeg_colorfulness(codestream: bytes) -> float:
    """preprocess.colorfulness of a colour JPEG, from its 1/8-size colour decode (8x8 block means); 0 if undecodable."""
    bgr = cv2.imdecode(np.frombuffer(codestream, dtype=np.uint8), cv2.IMREAD_REDUCED_COLOR_8 | cv2.IMREAD_IGNORE_ORIENTATION)
    return colorfulness(bgr, 255) if bgr is not None and bgr.ndim == 3 else 0.0


def decode_raster(data: bytes, cfg: DecodeConfig, keep_colour: bool = False) -> DisplayImage:
    """A PNG or JPEG file as a 2-D float32 display image in [0, 1] (before crop and resize), with its colourfulness
    (with keep_colour, a colour file's RGB in [0, 1] too: a colour JPEG is then decoded a second time, in colour).

    With cfg.reduced_resolution a large JPEG is decoded by DCT scaling at 1/2, 1/4 or 1/8 of its
    size, never below cfg.size. Raises RasterError for bombs, truncated or corrupt files.
    """
    kind, width, height = raster_size(data)
    if width == 0 or height == 0:
        raise RasterError(f"{kind.upper()} header gives an empty image ({width} x {height})", BAD_HEADER)
    if width * height > cfg.max_image_pixels:
        raise RasterError(
            f"{kind.upper()} of {width} x {height} = {width * height} pixels exceeds "
            f"max_image_pixels={cfg.max_image_pixels} (decompression-bomb limit)", TOO_LARGE,
        )
    flags = cv2.IMREAD_UNCHANGED
    if kind == "jpeg":
        if data.rstrip(b"\x00")[-2:] != b"\xff\xd9":
            raise RasterError("truncated JPEG: no end-of-image marker", TRUNCATED)
        flags = jpeg_grey_flags(reduction_levels(height, width, cfg.size, 3) if cfg.reduced_resolution else 0)
    arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if arr is None:
        if kind == "png" and b"IEND" not in data[-12:]:
            raise RasterError(f"truncated PNG of {width} x {height}: the file ends before its IEND chunk", TRUNCATED)
        raise RasterError(f"{kind.upper()} of {width} x {height} could not be decoded (corrupt data)", CORRUPT)
    if kind == "jpeg":
        in_colour = _jpeg_frame_header(data)[2] >= 3
        image = _to_unit_grey(arr)._replace(colorfulness=jpeg_colorfulness(data) if in_colour else 0.0)
        if keep_colour and in_colour:
            bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags | cv2.IMREAD_COLOR)  # the same scale, in colour
            image = image._replace(colour=unit_rgb(bgr[..., ::-1], 255) if bgr is not None and bgr.ndim == 3 else None)
        return image
    return _to_unit_grey(arr, keep_colour)
