"""DICOM: the archive's header fields (cheap, no pixels) and pixel decoding to display-space frames.

Display space follows the DICOM grayscale pipeline: modality LUT (rescale slope/intercept or a
Modality LUT Sequence), then the VOI window or VOI LUT, else robust percentile scaling; then
MONOCHROME1 is inverted. Colour (RGB, YBR, palette) becomes BT.601 luma, and how colourful it
was is kept (preprocess.colorfulness; for JPEG-coded YBR from a 1/8-size colour decode); with
keep_colour (the export's renderings) a colour frame's RGB is kept too. Multi-frame objects
split into frames; a frame that fails to decode fails alone.
"""
from __future__ import annotations

import hashlib
import hmac
import math
import warnings
from collections.abc import Iterator
from io import BytesIO

import cv2
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, get_decoder, pixel_array
from pydicom.uid import (
    JPEG2000,
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
)

from enrich_ray.config import DecodeConfig
from enrich_ray.decode.causes import (
    BAD_HEADER,
    CORRUPT,
    NO_PIXELS,
    NON_IMAGE,
    NOT_DICOM,
    TOO_LARGE,
    TRUNCATED,
    UNSUPPORTED,
    Cause,
    DecodeError,
)
from enrich_ray.decode.preprocess import DisplayImage, colorfulness, reduction_levels, rgb_to_grey, robust_scale, unit_rgb
from enrich_ray.decode.raster import jpeg_colorfulness, jpeg_grey_flags

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Reduced-resolution decoding needs a window at least this share of the frame's value spread.
MIN_WINDOW_SHARE = 0.25
# Photometric interpretations whose 8-bit JPEG greyscale decode is the frame's grey image.
_JPEG_GREY_PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2", "YBR_FULL", "YBR_FULL_422")


class DicomError(DecodeError):
    """A DICOM file, or one of its frames, that gives no image, with its cause (causes.py)."""


def _failure_cause(exc: BaseException) -> Cause:
    """The cause of a decoder's exception, read from pydicom's and its plugins' messages.

    Each branch stands on one of pydicom's broken test files (tests/unit/test_decode_dicom.py,
    KNOWN_BROKEN): short pixel data and early ends are truncation, a missing decoder is an
    unsupported compression, a malformed number is a broken header; the rest is corrupt data.
    """
    if isinstance(exc, DecodeError):
        return exc.cause
    text = str(exc)
    if isinstance(exc, EOFError) or any(s in text for s in ("less than expected", "End of file", "ends early")):
        return TRUNCATED
    if isinstance(exc, NotImplementedError) or "missing dependencies" in text:
        return UNSUPPORTED
    if "invalid literal" in text:
        return BAD_HEADER
    return CORRUPT


_FAILURE_WORDS = {
    TRUNCATED: "truncated pixel data",
    UNSUPPORTED: "unsupported compression",
    BAD_HEADER: "malformed header value",
    CORRUPT: "corrupt pixel data, the decoder rejects it",
}


def _failure(exc: Exception, prefix: str = "") -> DicomError:
    """A decoder's exception as a DicomError that says what happened: its cause in words, then the detail."""
    cause = _failure_cause(exc)
    if isinstance(exc, DecodeError):
        return DicomError(f"{prefix}{exc}", cause)
    return DicomError(f"{prefix}{_FAILURE_WORDS[cause]} ({type(exc).__name__}: {exc})", cause)


def _read(data: bytes, stop_before_pixels: bool) -> Dataset:
    """Parse a dataset (preamble optional), with a clear error for bytes that are not DICOM or end early."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(BytesIO(data), force=True, stop_before_pixels=stop_before_pixels)
        except Exception as exc:
            truncated = _failure_cause(exc) is TRUNCATED
            what = "truncated DICOM: the file ends early" if truncated else "not readable as DICOM"
            raise DicomError(f"{what} ({type(exc).__name__}: {exc})", TRUNCATED if truncated else NOT_DICOM) from exc
    if len(ds) == 0:
        notes = "; ".join(dict.fromkeys(str(w.message) for w in caught))
        if "End of file" in notes:
            raise DicomError(f"truncated DICOM: the file ends before its first data element could be read ({notes})", TRUNCATED)
        raise DicomError("not a DICOM dataset: no data elements could be read" + (f" ({notes})" if notes else ""), NOT_DICOM)
    return ds


def _value(ds: Dataset, keyword: str):
    """An element's value, or None when absent, empty or malformed."""
    try:
        value = ds.get(keyword)
    except Exception:  # a malformed value fails on access; the field is then unknown
        return None
    return None if value is None or value == "" else value


def _text(ds: Dataset, keyword: str) -> str | None:
    value = _value(ds, keyword)
    return str(value).strip() or None if value is not None else None


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = _value(ds, keyword)
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _first_float(value) -> float | None:
    """The first of a (possibly multi-valued) number, or None when missing or not finite."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, MultiValue)):
        if len(value) == 0:
            return None
        value = value[0]
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def transfer_syntax(ds: Dataset) -> UID | None:
    """The dataset's transfer syntax: from the file meta, else the encoding pydicom detected."""
    uid = _value(ds.file_meta, "TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if uid is not None:
        return UID(str(uid).strip())
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None:
        return None
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def frame_count(ds: Dataset) -> int | None:
    """Number of frames: NumberOfFrames, 1 for a single-frame image, None for a non-image object."""
    n = _int(ds, "NumberOfFrames")
    if n is not None and n >= 1:
        return n
    return 1 if "Rows" in ds else None


def keyed_hash(text: str | None, key: bytes | None) -> str | None:
    """Hex HMAC-SHA256 of text under key (None without either): a group key that stores no name."""
    if key is None or text is None:
        return None
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


def patient_key(ds: Dataset, key: bytes | None) -> str | None:
    """The keyed hash of PatientID: groups a patient's images without storing the ID."""
    return keyed_hash(_text(ds, "PatientID"), key)


def read_header(data: bytes, patient_hmac_key: bytes | None) -> dict:
    """The archive's header fields (schema.HEADER_FIELDS) from a DICOM file, without reading pixels.

    No PHI leaves here: the patient and the site are represented only by keyed hashes. Raises DicomError
    for bytes pydicom cannot parse.
    """
    ds = _read(data, stop_before_pixels=True)
    ts = transfer_syntax(ds)
    return {
        "patient_key": patient_key(ds, patient_hmac_key),
        "study_uid": _text(ds, "StudyInstanceUID"),
        "series_uid": _text(ds, "SeriesInstanceUID"),
        "sop_uid": _text(ds, "SOPInstanceUID"),
        "modality": _text(ds, "Modality"),
        "n_frames": frame_count(ds),
        "rows": _int(ds, "Rows"),
        "cols": _int(ds, "Columns"),
        "photometric": _text(ds, "PhotometricInterpretation"),
        "transfer_syntax": str(ts) if ts is not None else None,
        "body_part": _text(ds, "BodyPartExamined"),
        "station": station(ds, patient_hmac_key),
    }


def station(ds: Dataset, key: bytes | None) -> str | None:
    """The keyed hash of the site and scanner, 'InstitutionName / StationName' (or the one the header
    has; None without either or without the key): a group key for selection.quota.station. StationName
    alone repeats across sites (every hospital has a 'CT01'); the institution makes it one scanner.
    Both are identifying under DICOM's de-identification profile (PS3.15), so only the hash is kept."""
    parts = [_text(ds, keyword) for keyword in ("InstitutionName", "StationName")]
    return keyed_hash(" / ".join(p for p in parts if p) or None, key)


# -- the grayscale display pipeline ----------------------------------------------------------


def _functional_item(ds: Dataset, index: int, macro: str, keyword: str) -> Dataset:
    """Where a frame's `keyword` lives: its per-frame or shared functional group macro, else the dataset."""
    for groups, i in (("PerFrameFunctionalGroupsSequence", index), ("SharedFunctionalGroupsSequence", 0)):
        seq = _value(ds, groups)
        if seq is not None and len(seq) > i:
            items = _value(seq[i], macro)
            if items is not None and len(items) > 0 and keyword in items[0]:
                return items[0]
    return ds


def _rescale(ds: Dataset, index: int) -> tuple[float, float]:
    """The frame's rescale (slope, intercept); identity when absent."""
    item = _functional_item(ds, index, "PixelValueTransformationSequence", "RescaleSlope")
    slope = _first_float(_value(item, "RescaleSlope"))
    intercept = _first_float(_value(item, "RescaleIntercept"))
    return (slope if slope else 1.0), (intercept or 0.0)


def _window(ds: Dataset, index: int) -> tuple[float, float, str] | None:
    """The frame's first VOI window (centre, width, function), or None when absent or unusable."""
    item = _functional_item(ds, index, "FrameVOILUTSequence", "WindowCenter")
    center = _first_float(_value(item, "WindowCenter"))
    width = _first_float(_value(item, "WindowWidth"))
    function = (_text(item, "VOILUTFunction") or "LINEAR").upper()
    if center is None or width is None or width <= 0 or (function == "LINEAR" and width < 1):
        return None
    return center, width, function


def _affine(raw: np.ndarray, scale: float, offset: float) -> np.ndarray:
    """scale * raw + offset as a new float32 array."""
    out = raw.astype(np.float32)
    if scale != 1.0:
        out *= np.float32(scale)
    if offset != 0.0:
        out += np.float32(offset)
    return out


def _windowed(raw: np.ndarray, slope: float, intercept: float, window: tuple[float, float, str]) -> np.ndarray:
    """Rescale then window (DICOM PS3.3 C.11.2.1.2), output in [0, 1]; one affine pass for the linear forms."""
    center, width, function = window
    if function == "SIGMOID":
        exponent = _affine(raw, -4.0 * slope / width, -4.0 * (intercept - center) / width)
        np.clip(exponent, -80.0, 80.0, out=exponent)  # no overflow far outside the window
        return (1.0 / (1.0 + np.exp(exponent))).astype(np.float32)
    if function == "LINEAR_EXACT":
        scale, offset = 1.0 / width, 0.5 - center / width
    elif width == 1:  # LINEAR with width 1 is a step at center - 0.5
        scale, offset = 1e6, 0.5 - (center - 0.5) * 1e6
    else:
        scale, offset = 1.0 / (width - 1), 0.5 - (center - 0.5) / (width - 1)
    out = _affine(raw, slope * scale, intercept * scale + offset)
    return np.clip(out, 0.0, 1.0, out=out)


def _voi_lut_range(ds: Dataset) -> float:
    """The largest output value of the first VOI LUT, from its descriptor's bit depth."""
    bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
    return float(2**bits - 1)


def _grayscale_display(raw: np.ndarray, ds: Dataset, index: int, cfg: DecodeConfig) -> np.ndarray:
    """Stored values of a monochrome frame to display values in [0, 1]."""
    if raw.dtype.kind == "f" and not np.isfinite(raw).all():
        finite = raw[np.isfinite(raw)]
        if finite.size == 0:
            raise DicomError(f"frame {index}: no finite pixel values (every value is NaN or infinite)", CORRUPT)
        raw = np.nan_to_num(raw, nan=float(finite.min()), posinf=float(finite.max()), neginf=float(finite.min()))
    if "ModalityLUTSequence" in ds:
        raw, (slope, intercept) = apply_modality_lut(raw, ds), (1.0, 0.0)
    else:
        slope, intercept = _rescale(ds, index)
    window = _window(ds, index)
    if window is not None:
        image = _windowed(raw, slope, intercept, window)
    elif _value(ds, "VOILUTSequence") is not None:
        values = raw if (slope, intercept) == (1.0, 0.0) else _affine(raw, slope, intercept)
        image = apply_voi(values, ds, index=0).astype(np.float32)
        image = np.clip(image / np.float32(_voi_lut_range(ds)), 0.0, 1.0)
    else:
        image = robust_scale(_affine(raw, slope, intercept), cfg.percentile_low, cfg.percentile_high)
    if (_text(ds, "PhotometricInterpretation") or "").upper() == "MONOCHROME1":
        image = np.subtract(np.float32(1.0), image, out=image)
    return image


def _display(raw: np.ndarray, ds: Dataset, index: int, cfg: DecodeConfig, keep_colour: bool = False) -> DisplayImage:
    """One decoded frame (stored values) to a 2-D float32 display image in [0, 1], with its colourfulness;
    with keep_colour a colour frame's RGB in [0, 1] too (stored values / their peak: no window for colour)."""
    photometric = (_text(ds, "PhotometricInterpretation") or "").upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(raw, ds)
        peak = np.iinfo(rgb.dtype).max
        return DisplayImage(rgb_to_grey(rgb) / np.float32(peak), colorfulness(rgb, peak), unit_rgb(rgb, peak) if keep_colour else None)
    if raw.ndim == 3:  # RGB: pydicom converts YBR_FULL(_422), JPEG 2000 decoders undo ICT/RCT
        peak = 2 ** (_int(ds, "BitsStored") or 8 * raw.dtype.itemsize) - 1
        return DisplayImage(np.clip(rgb_to_grey(raw) / np.float32(peak), 0.0, 1.0), colorfulness(raw, peak),
                            unit_rgb(raw, peak) if keep_colour else None)
    return DisplayImage(_grayscale_display(raw, ds, index, cfg))


# -- pixel decoding --------------------------------------------------------------------------


def _j2k_header(codestream: bytes) -> tuple[int, int, int, int, int, bool, int] | None:
    """(width, height, x_offset + y_offset, components, precision, signed, levels) of a raw J2K codestream."""
    if not codestream.startswith(b"\xff\x4f\xff\x51") or len(codestream) < 45:
        return None
    width, height, x0, y0 = (int.from_bytes(codestream[o : o + 4], "big") for o in (8, 12, 16, 20))
    components = int.from_bytes(codestream[40:42], "big")
    ssiz = codestream[42]
    sot = codestream.find(b"\xff\x90")
    cod = codestream.find(b"\xff\x52", 0, sot if sot > 0 else len(codestream))
    if cod < 0 or cod + 9 >= len(codestream):
        return None
    return width - x0, height - y0, x0 + y0, components, (ssiz & 0x7F) + 1, bool(ssiz & 0x80), codestream[cod + 9]


def _pillow_rounds_like_openjpeg(width: int, height: int, levels: int) -> bool:
    # Pillow sizes a reduced image by rounding (n + 2**(r-1)) // 2**r while OpenJPEG takes the
    # ceiling; where they differ Pillow reports a broken stream, so such levels are not tried.
    power = 1 << levels
    return all((n + (power >> 1)) // power == -(-n // power) for n in (width, height))


def _usable_level(width: int, height: int, levels: int) -> int:
    """The largest level <= levels that Pillow decodes (0: none)."""
    while levels > 0 and not _pillow_rounds_like_openjpeg(width, height, levels):
        levels -= 1
    return levels


def _pillow_j2k(codestream: bytes, levels: int, precision: int, signed: bool) -> np.ndarray:
    """A J2K codestream decoded by Pillow at 1/2**levels resolution, in stored units (int32)."""
    with Image.open(BytesIO(codestream)) as im:
        im.reduce = levels
        im.load()
        arr = np.asarray(im)
    # Pillow scales samples to its mode's bit depth and shifts signed ones to unsigned: undo both.
    shift = (16 if arr.dtype.itemsize == 2 else 8) - precision
    values = arr.astype(np.int32)
    if shift > 0:
        values >>= shift
    if signed:
        values -= 1 << (precision - 1)
    return values


def _j2k_reduced(codestream: bytes, ds: Dataset, index: int, cfg: DecodeConfig) -> DisplayImage | None:
    """A JPEG 2000 frame decoded at a reduced resolution level (sides >= REDUCED_MARGIN * cfg.size), as a display image.

    The lowest wavelet subbands are the image low-pass filtered and subsampled, so the area resize
    to cfg.size sees nearly the same picture for a fraction of the work. Returns None where the
    shortcut does not apply faithfully (the caller then decodes in full).
    """
    header = _j2k_header(codestream)
    if header is None:
        return None
    width, height, offset, components, precision, signed, max_levels = header
    if (height, width) != (_int(ds, "Rows"), _int(ds, "Columns")) or offset or precision > 16:
        return None
    if components not in (1, 3) or (components == 3 and precision != 8):
        return None
    if signed != bool(_int(ds, "PixelRepresentation")):
        return None  # pydicom's full decode corrects a codestream/header sign mismatch
    levels = _usable_level(width, height, reduction_levels(height, width, cfg.size, max_levels))
    if levels == 0:
        return None
    window = _window(ds, index) if components == 1 else None
    if window is not None:
        # A thumbnail from the smallest resolution level (a few hundred pixels) gives the value spread.
        thumbnail = _pillow_j2k(codestream, _usable_level(width, height, max_levels) or levels, precision, signed)
        if not _window_spans_image(thumbnail, window[1], _rescale(ds, index)[0]):
            return None
    return _display(_recentre(_pillow_j2k(codestream, levels, precision, signed), levels), ds, index, cfg)


def _window_spans_image(values: np.ndarray, width: float, slope: float) -> bool:
    """False when a VOI window of this width covers under MIN_WINDOW_SHARE of the frame's value spread.

    Reduced decoding averages stored values before the window; where a narrow window (a CT
    soft-tissue window) clips most of the range, averaging before it and after it differ at
    every edge it clips, so such frames are decoded in full (tests/benchmarks/bench_decode.py's
    CT is refused: no speed-up, difference 0).
    """
    low, high = np.percentile(values, [1.0, 99.0])
    return width >= MIN_WINDOW_SHARE * abs(slope) * float(high - low)


def _recentre(values: np.ndarray, levels: int) -> np.ndarray:
    """Move a JPEG 2000 low-pass image onto the area-average grid, as float32.

    Reduced sample i is centred on full-resolution pixel i * 2**levels, while an area average
    of the full image centres it on (i + 1/2) * 2**levels - 1/2: a shift of (2**levels - 1) / 2
    full pixels, which on sharp edges adds to the difference from the full decode.
    """
    factor = 1 << levels
    s = (factor - 1) / (2 * factor)
    shift = np.float32([[1, 0, s], [0, 1, s]])
    height, width = values.shape[:2]
    return cv2.warpAffine(values.astype(np.float32), shift, (width, height),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)


def _jpeg_grey(codestream: bytes, ds: Dataset, index: int, cfg: DecodeConfig) -> DisplayImage | None:
    """An 8-bit JPEG frame through libjpeg-turbo's greyscale output (DCT-scaled when reduced), as a display image.

    For YBR the greyscale output is the Y channel, the BT.601 luma itself, so no colour
    conversion is needed. Returns None for frames this does not cover (RGB-coded JPEG, > 8 bits).
    """
    photometric = (_text(ds, "PhotometricInterpretation") or "").upper()
    if _int(ds, "BitsAllocated") != 8 or _int(ds, "PixelRepresentation") or photometric not in _JPEG_GREY_PHOTOMETRICS:
        return None
    levels = reduction_levels(_int(ds, "Rows"), _int(ds, "Columns"), cfg.size, 3) if cfg.reduced_resolution else 0
    grey = cv2.imdecode(np.frombuffer(codestream, dtype=np.uint8), jpeg_grey_flags(levels))
    if grey is None:
        return None
    if photometric.startswith("YBR"):
        return DisplayImage(grey.astype(np.float32) * np.float32(1.0 / 255.0), jpeg_colorfulness(codestream))
    return _display(grey, ds, index, cfg)


def _fast_decoder(ds: Dataset, ts: UID, cfg: DecodeConfig):
    """The frame decoder that beats pydicom's for this dataset, or None."""
    if (_text(ds, "PhotometricInterpretation") or "").upper() == "PALETTE COLOR":
        return None
    if ts in (JPEG2000Lossless, JPEG2000) and cfg.reduced_resolution:
        return _j2k_reduced
    if ts in (JPEGBaseline8Bit, JPEGExtended12Bit):
        return _jpeg_grey
    return None


def _fix_big_endian_palette(ds: Dataset) -> None:
    # pydicom's apply_color_lut reads 16-bit OW palette data as little endian whatever the
    # dataset's byte order (OBXXXX1A_expb.dcm decodes almost black): byte-swap it once here.
    if getattr(ds, "original_encoding", (None, True))[1] is not False:
        return
    for colour in ("Red", "Green", "Blue"):
        keyword = f"{colour}PaletteColorLookupTableData"
        descriptor = _value(ds, f"{colour}PaletteColorLookupTableDescriptor")
        data = _value(ds, keyword)
        if isinstance(data, bytes) and descriptor is not None and int(descriptor[2]) == 16:
            setattr(ds, keyword, np.frombuffer(data, dtype=">u2").astype("<u2").tobytes())


def _no_pixels(ds: Dataset) -> DicomError:
    """Why a dataset without pixel data gives no image: a non-image object, or an image header without its pixels."""
    sop_class = _value(ds, "SOPClassUID")
    if sop_class is None and hasattr(ds, "file_meta"):
        sop_class = _value(ds.file_meta, "MediaStorageSOPClassUID")
    modality = _text(ds, "Modality")
    of_modality = f" (modality {modality})" if modality else ""
    if sop_class is None:
        n = f"{len(ds)} data element{'s' * (len(ds) != 1)}"
        if getattr(ds, "preamble", None) is None and len(getattr(ds, "file_meta", ())) == 0:
            return DicomError(f"not recognisable as DICOM: no preamble, file meta, SOP class or pixel data ({n} parsed)", NOT_DICOM)
        return DicomError(f"no image here: a DICOM file with no pixel data and no SOP class ({n})", NON_IMAGE)
    name = UID(str(sop_class).strip()).name
    if "Image" in name or "Rows" in ds:
        return DicomError(
            f"this {name} object{of_modality} has no pixel data: the image header is there, its pixels were "
            "stripped or never stored", NO_PIXELS,
        )
    return DicomError(f"no image here: this {name} object{of_modality} holds no pixel data", NON_IMAGE)


def _check_decoder(ts: UID) -> None:
    """Refuse, once per file, compressed pixel data that no pydicom decoder exists for (MPEG video, private syntaxes)."""
    try:
        get_decoder(ts)
    except NotImplementedError as exc:
        raise DicomError(f"unsupported compression: no decoder reads {ts.name} pixel data ({exc})", UNSUPPORTED) from exc


def _prepare(ds: Dataset, cfg: DecodeConfig) -> tuple[UID, int]:
    """Check the dataset holds a decodable image within limits; return its transfer syntax and frame count."""
    if not any(keyword in ds for keyword in PIXEL_KEYWORDS):
        raise _no_pixels(ds)
    ts = transfer_syntax(ds)
    if ts is None:
        raise DicomError("no transfer syntax in the file meta and none could be inferred", BAD_HEADER)
    if ts.is_transfer_syntax and ts.is_encapsulated:
        _check_decoder(ts)
    if _value(ds.file_meta, "TransferSyntaxUID") is None:
        ds.file_meta.TransferSyntaxUID = ts  # pydicom decodes only with an explicit transfer syntax
    if (_text(ds, "PhotometricInterpretation") or "").upper() == "PALETTE COLOR":
        _fix_big_endian_palette(ds)
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    if not rows or not cols:
        raise DicomError(f"invalid image size: the header gives Rows={rows}, Columns={cols}", BAD_HEADER)
    if rows * cols > cfg.max_image_pixels:
        raise DicomError(
            f"frame of {rows} x {cols} = {rows * cols} pixels exceeds max_image_pixels={cfg.max_image_pixels} "
            "(decompression-bomb limit)", TOO_LARGE,
        )
    return ts, frame_count(ds) or 1


def _frames_from(ds: Dataset, ts: UID, n: int, cfg: DecodeConfig,
                 keep_colour: bool = False) -> Iterator[tuple[int, DisplayImage | Exception]]:
    """Decode compressed frames one by one, yielding (index, display image) or (index, the frame's error)."""
    colour = (_text(ds, "PhotometricInterpretation") or "").upper() not in ("MONOCHROME1", "MONOCHROME2")
    fast = None if keep_colour and colour else _fast_decoder(ds, ts, cfg)  # the shortcuts decode grey only
    codestreams = generate_frames(ds.PixelData, number_of_frames=n) if fast else None
    for index in range(n):
        try:
            image = None
            if fast is not None:
                try:
                    image = fast(next(codestreams), ds, index, cfg)
                except Exception:  # the shortcut cannot read this file: pydicom decodes it (or reports why not)
                    fast = None
            if image is None:
                image = _display(pixel_array(ds, index=index), ds, index, cfg, keep_colour)
            yield index, image
        except Exception as exc:  # one bad frame becomes one error row; the others still decode
            yield index, _failure(exc, f"frame {index} of {n}: ")


def _native_frames(frames: np.ndarray, ds: Dataset, n: int, cfg: DecodeConfig,
                   keep_colour: bool = False) -> Iterator[tuple[int, DisplayImage | Exception]]:
    for index in range(n):
        try:
            yield index, _display(frames[index], ds, index, cfg, keep_colour)
        except Exception as exc:
            yield index, _failure(exc, f"frame {index} of {n}: ")


def native_frames(ds: Dataset, ts: UID, n: int) -> np.ndarray | None:
    """Uncompressed 8/16-bit one-sample (monochrome, palette) frames straight from the buffer, as (n, rows, cols).

    Values are masked (unsigned) or sign-extended (signed) to BitsStored, as pydicom does, for
    a fraction of pydicom's cost; None for anything else (pydicom decodes it, or says why not),
    including 8-bit big-endian data, which OW stores byte-swapped in 16-bit words.
    """
    allocated, samples = _int(ds, "BitsAllocated"), _int(ds, "SamplesPerPixel") or 1
    stored = _int(ds, "BitsStored") or allocated
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    data = _value(ds, "PixelData")
    big_endian = ts == ExplicitVRBigEndian
    if samples != 1 or allocated not in (8, 16) or not 1 <= stored <= allocated or not isinstance(data, bytes):
        return None
    if big_endian and allocated == 8:
        return None
    count = n * rows * cols
    if len(data) < count * (allocated // 8):
        return None
    signed = _int(ds, "PixelRepresentation") == 1
    dtype = np.dtype(f"{'i' if signed else 'u'}{allocated // 8}").newbyteorder(">" if big_endian else "<")
    values = np.frombuffer(data, dtype=dtype, count=count).astype(dtype.newbyteorder("="))
    if stored < allocated:
        unused = allocated - stored
        if signed:
            values <<= unused
            values >>= unused
        else:
            values &= (1 << stored) - 1
    return values.reshape(n, rows, cols)


def iter_dicom_frames(data: bytes, cfg: DecodeConfig, keep_colour: bool = False) -> Iterator[tuple[int, DisplayImage | Exception]]:
    """Frames of a DICOM file as (frame_index, DisplayImage (grey in [0, 1], colourfulness; with keep_colour
    a colour frame's RGB) or that frame's error).

    File-level failures (unparseable, no pixels, too large, truncated uncompressed data) raise
    here, before any frame is yielded; per-frame failures are yielded in the frame's place.
    """
    ds = _read(data, stop_before_pixels=False)
    ts, n = _prepare(ds, cfg)
    if ts.is_encapsulated:
        return _frames_from(ds, ts, n, cfg, keep_colour)
    samples = _int(ds, "SamplesPerPixel") or 1
    try:
        frames = native_frames(ds, ts, n)
        if frames is None:
            frames = ds.pixel_array
            frames = frames.reshape((n, *frames.shape[-3 if samples > 1 else -2 :]))
    except Exception as exc:
        raise _failure(exc) from exc
    return _native_frames(frames, ds, n, cfg, keep_colour)
