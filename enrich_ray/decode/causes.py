"""Why a file or frame gave no image: the causes that decode's error rows name in `error_type`.

Two kinds. *No image here*: the file is a valid DICOM object that stores no pixels (an RT plan,
a structured report, an ECG waveform, a DICOMDIR, or an image header whose pixels were stripped):
skipped and counted, not an error. *Unreadable*: an image that cannot be decoded (truncated,
corrupt, an unsupported compression, a broken header, over the size limit). The report groups
the rows by these causes; `cause_of` reads an error_type back, including those of pack and embed.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Cause:
    """One reason a file or frame gave no frame: its error_type, plain words, and whether it is an error."""

    name: str  # the error_type written to errors.parquet
    label: str  # what happened, in plain words (the report's row)
    short: str  # the same in two or three words (the report's summary)
    no_image: bool = False  # True: the file holds no image; skipped and counted, not an error


NON_IMAGE = Cause("NonImageObject", "DICOM objects that are not images (plans, structure sets, reports, waveforms, directories)",
                  "not images", True)
NO_PIXELS = Cause("ImageWithoutPixels", "image headers whose pixel data is absent (stripped or never stored)",
                  "image headers without pixels", True)
NOT_DICOM = Cause("NotDicom", "not readable as DICOM", "not DICOM")
NOT_AN_IMAGE_FILE = Cause("NotAnImageFile", "not a DICOM, PNG or JPEG file, or an empty one", "not an image file")
TRUNCATED = Cause("Truncated", "truncated: the file or its pixel data ends early", "truncated")
CORRUPT = Cause("CorruptPixelData", "corrupt pixel data: the decoder rejects it", "corrupt")
UNSUPPORTED = Cause("UnsupportedCompression", "compressed in a way no installed decoder reads", "unsupported compression")
BAD_HEADER = Cause("InvalidHeader", "the header gives no usable image size or pixel description", "invalid header")
TOO_LARGE = Cause("TooLarge", "over the size limit (decode.max_image_pixels, against decompression bombs)", "too large")

CAUSES = {c.name: c for c in (NON_IMAGE, NO_PIXELS, NOT_DICOM, NOT_AN_IMAGE_FILE, TRUNCATED, CORRUPT, UNSUPPORTED,
                              BAD_HEADER, TOO_LARGE)}
# What failed, for error types written outside decode: pack's read failures, embed's rejected frames.
STAGE_WORDS = {"pack": "could not be read from storage", "embed": "decoded, but the embedder rejected the frame"}


class DecodeError(ValueError):
    """A file or frame that cannot be turned into an image, with the cause its error row names."""

    def __init__(self, message: str, cause: Cause):
        super().__init__(message)
        self.cause = cause


def cause_of(error_type: str | None, stage: str | None = None) -> Cause:
    """The cause an error row names: decode's own by error_type, else unreadable, in words by stage (pack, embed)."""
    if error_type in CAUSES:
        return CAUSES[error_type]
    name = str(error_type or "Error")
    return Cause(name, f"{STAGE_WORDS.get(stage or '', 'other failures')} ({name})", name)


def error_counts(errors) -> dict[str, int]:
    """Rows of an errors table (pandas, with error_type and stage): all, unreadable, and holding no image
    (skipped, not broken): the counts a run's summary.json carries."""
    no_image = int(sum(cause_of(t, st).no_image for t, st in zip(errors["error_type"], errors["stage"])))
    return {"error_rows": len(errors), "unreadable_rows": len(errors) - no_image, "no_image_rows": no_image}
