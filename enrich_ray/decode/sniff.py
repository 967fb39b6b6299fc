"""Which image format a file holds, from its bytes first and its name second.

Pack calls this on every file it lists: a DICOM, PNG or JPEG file becomes an archive row;
a file that only claims to be one (by its extension) still does, so that decoding later
turns it into an error row instead of it silently vanishing; anything else is skipped.
"""
from __future__ import annotations

from io import BytesIO
from pathlib import PurePosixPath

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
DICOM_MAGIC = b"DICM"  # at byte 128, after the preamble

CLAIMED_FORMATS = {".dcm": "dicom", ".dicom": "dicom", ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}

# A DICOM dataset written without preamble starts with a group 0x0002 or 0x0008 tag, in little-
# or big-endian byte order; only such files are worth a trial parse.
_NO_PREAMBLE_STARTS = (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")
# Elements every image-bearing dataset has; a trial parse of unrelated bytes has none of them.
_DICOM_EVIDENCE = ("SOPClassUID", "SOPInstanceUID", "Modality", "StudyInstanceUID", "Rows")


def sniff_format(data: bytes, name: str) -> str | None:
    """'dicom', 'png' or 'jpeg' for the file's bytes (or, failing those, what its name claims); None otherwise."""
    if len(data) >= 132 and data[128:132] == DICOM_MAGIC:
        return "dicom"
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(JPEG_SIGNATURE):
        return "jpeg"
    if data[:2] in _NO_PREAMBLE_STARTS and _parses_as_dicom(data):
        return "dicom"
    return CLAIMED_FORMATS.get(PurePosixPath(name).suffix.lower())


def _parses_as_dicom(data: bytes) -> bool:
    """True when pydicom reads a dataset without preamble from data and it looks like an image object."""
    import pydicom

    try:
        ds = pydicom.dcmread(BytesIO(data), force=True, stop_before_pixels=True)
        return any(keyword in ds for keyword in _DICOM_EVIDENCE)
    except Exception:  # any parse failure means: not a DICOM dataset
        return False
