"""The decode stage: archive rows in, one frames row per image or cine frame out, failures as error rows.

A plain function over Arrow tables (no Ray): runtime.py maps it over the archive's batches.
Every input row ends as frames rows or error rows (per file, or per frame), never as a crash;
an error row's error_type names its cause (causes.py: 'no image here' apart from unreadable).
Each frame's pixel_hash is taken here, on the display image every format's decoder hands over
(before crop and resize), so pixel-identical files of any container or lossless encoding hash
equal. Where decode.reduced_resolution decodes a large JPEG or JPEG 2000 frame at reduced size,
the hash is of that reduced image: equal for copies of the same codestream, not for an
uncompressed twin (set reduced_resolution false for that).
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np
import pyarrow as pa

from enrich_ray import schema
from enrich_ray.config import DecodeConfig, StorageConfig
from enrich_ray.decode.causes import NOT_AN_IMAGE_FILE, DecodeError
from enrich_ray.decode.dicom import iter_dicom_frames
from enrich_ray.decode.preprocess import DisplayImage, preprocess
from enrich_ray.decode.raster import decode_raster, raster_facts
from enrich_ray.decode.sniff import sniff_format

STAGE = "decode"
RASTER_FORMATS = ("png", "jpeg")
# Header fields the frames table carries from the archive row.
_CARRIED = [name for name, _ in schema.HEADER_FIELDS if name in schema.GROUP_KEYS or name in schema.FRAME_FACTS]


def pixel_hash(image: np.ndarray) -> str:
    """Hex SHA-256 of an array's shape, dtype and values (C order): equal exactly when the pixels are."""
    image = np.ascontiguousarray(image)
    digest = hashlib.sha256(f"{image.shape}|{image.dtype.str}|".encode())
    digest.update(memoryview(image).cast("B"))
    return digest.hexdigest()


def _cause_name(exc: BaseException) -> str | None:
    """The error_type of a failure: its cause (causes.py) for decode's own errors, else None (the exception's type)."""
    return exc.cause.name if isinstance(exc, DecodeError) else None


def display_frames(data: bytes, fmt: str, cfg: DecodeConfig,
                   keep_colour: bool = False) -> Iterable[tuple[int, DisplayImage | Exception]]:
    """(frame_index, display image (before crop and resize) or that frame's error) for one archive row's
    bytes; file-level failures raise. The decode stage and the export's renderings (keep_colour: a colour
    frame's RGB too) read frames through it."""
    if fmt == "dicom":
        return iter_dicom_frames(data, cfg, keep_colour)
    if fmt in RASTER_FORMATS:
        return [(0, decode_raster(data, cfg, keep_colour))]
    raise DecodeError(f"unsupported format {fmt!r} (expected dicom, png or jpeg)", NOT_AN_IMAGE_FILE)


def decode_batch(batch: pa.Table, cfg: DecodeConfig) -> tuple[pa.Table, pa.Table]:
    """Decode and preprocess archive rows (schema.ARCHIVE) into (frames, errors) tables.

    frames follow schema.frames_schema(cfg.size); errors follow schema.ERRORS with stage 'decode'.
    """
    n = batch.num_rows
    columns = {
        name: batch.column(name).to_pylist() if name in batch.column_names else [None] * n
        for name in ["image_id", "source_uri", "format", *_CARRIED]
    }
    data_column = batch.column("data")
    out: dict[str, list] = {
        name: [] for name in ["image_id", "frame_index", "source_uri", "format", "is_constant", "pixel_hash", "colorfulness", *_CARRIED]
    }
    pixels: list[np.ndarray] = []
    errors: list[dict] = []
    for row in range(n):
        image_id, source_uri = columns["image_id"][row], columns["source_uri"][row]
        fmt = (columns["format"][row] or "").lower()
        try:
            data = data_column[row].as_py()
            if not data:
                raise DecodeError("empty file: no bytes to decode", NOT_AN_IMAGE_FILE)
            header = {name: columns[name][row] for name in _CARRIED}
            if fmt in RASTER_FORMATS:
                header.update(raster_facts(data))
            for frame_index, image in display_frames(data, fmt, cfg):
                if not isinstance(image, Exception):
                    try:
                        digest = pixel_hash(image.image)
                        frame, is_constant = preprocess(image.image, cfg)
                    except Exception as exc:  # one bad frame is one error row
                        image = exc
                if isinstance(image, Exception):
                    errors.append(schema.error_row(STAGE, image, image_id=image_id, source_uri=source_uri,
                                                   frame_index=frame_index, error_type=_cause_name(image)))
                    continue
                pixels.append(frame)
                record = {"image_id": image_id, "frame_index": frame_index, "source_uri": source_uri,
                          "format": fmt, "is_constant": is_constant, "pixel_hash": digest,
                          "colorfulness": image.colorfulness, **header}
                for name, value in record.items():
                    out[name].append(value)
        except Exception as exc:  # a file that cannot be read at all is one error row
            errors.append(schema.error_row(STAGE, exc, image_id=image_id, source_uri=source_uri, error_type=_cause_name(exc)))
    values = np.stack(pixels).reshape(-1) if pixels else np.empty(0, dtype=np.float32)
    out["pixels"] = pa.FixedSizeListArray.from_arrays(pa.array(values, type=pa.float32()), cfg.size * cfg.size)
    frames_schema = schema.frames_schema(cfg.size)
    frames = pa.Table.from_pydict({f.name: out[f.name] for f in frames_schema}, schema=frames_schema)
    return frames, pa.Table.from_pylist(errors, schema=schema.ERRORS)


def decode_files(uris: list[str], cfg: DecodeConfig, storage: StorageConfig | None = None) -> pa.Table:
    """Frames (schema.frames_schema) of the image files under the given folders, files or s3:// prefixes,
    decoded as curate decodes an archive; files that are not images, and undecodable ones, are left out."""
    from enrich_ray.io.pack import list_sources

    rows = []
    for loc, uri in list_sources(uris, storage):
        data = loc.fs.cat_file(loc.path)
        fmt = sniff_format(data, uri)
        if fmt:
            rows.append({"image_id": hashlib.sha256(data).hexdigest(), "source_uri": uri, "source_uris": [uri],
                         "format": fmt, "size_bytes": len(data), "data": data})
    frames, _ = decode_batch(pa.Table.from_pylist(rows, schema=schema.ARCHIVE), cfg)
    return schema.result_rows(frames)
