"""What the labeling tools import, from the selected manifest rows: Label Studio tasks, CVAT's dataset
manifest, and the CSV a labeling team fills in (plain values in and out, no I/O).

- Label Studio (its "Basic Label Studio JSON format"): a list of tasks, each {"data": {...}} with
  `image` (the URI of the frame's PNG: s3://... for a bucket an S3 source storage covers, or
  /data/local-files/?d=PATH under LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT for local files) and the
  frame's ranking fields, which come back in Label Studio's JSON export (image_id first of all).
- CVAT: manifest.jsonl (format 1.1, type images) beside the PNGs: one line per image with name
  (without extension), extension, width, height and checksum (MD5 of the pixels), in rank order.
- CSV: the ranking fields, source_uri and an empty `label` column to fill in.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from urllib.parse import quote

import numpy as np
import pandas as pd

from enrich_ray.config import ConfigError
from enrich_ray.export.render import pixel_md5
from enrich_ray.io.fs import Location

# The frame's fields in every export, in this order.
FIELDS = ["rank", "image_id", "frame_index", "score", "is_seed", "patient_key", "study_uid", "series_uid",
          "sop_uid", "modality", "duplicate_group", "outlier_flag"]
TABLE_COLUMNS = [*FIELDS, "source_uri", "label"]
CVAT_MANIFEST_VERSION = "1.1"
LOCAL_FILES = "/data/local-files/?d="  # Label Studio's URL of a file under its local-files document root
IMAGE_ID = re.compile(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")  # an image_id (SHA-256, hex) inside a file name


def frame_name(rank: int, image_id: str, frame_index: int) -> str:
    """A frame's file name without extension: rank first (names sort in the order to label), then the
    image_id a tool's export is mapped back by, then the frame."""
    return f"{int(rank):06d}_{image_id}_{int(frame_index)}"


def image_id_in(name: str | None) -> str | None:
    """The image_id in a file name or URI written by frame_name, or None."""
    found = IMAGE_ID.findall(os.path.basename(str(name or "")).lower())
    return found[0] if found else None


def plain(value):
    """A table value as JSON has it: null for NaN and missing, Python numbers and booleans for numpy's."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, np.generic):
        return plain(value.item())
    return value


def frame_fields(row: pd.Series) -> dict:
    """The frame's ranking fields (FIELDS) as plain values."""
    return {name: plain(row.get(name)) for name in FIELDS}


def label_studio_tasks(rows: pd.DataFrame, image_uris: Sequence[str]) -> list[dict]:
    """One Label Studio task per row, in rank order: data.image is the frame's PNG, the rest its fields."""
    return [{"data": {"image": uri, **frame_fields(row)}} for (_, row), uri in zip(rows.iterrows(), image_uris)]


def label_studio_uri(png: Location, document_root: str) -> str:
    """The URI Label Studio reads a PNG by: the object's own s3:// (or other store's) URI, which a source
    storage on that bucket serves; for a local file, its local-files URL under the document root."""
    if not png.is_local:
        return png.uri()
    root = os.path.abspath(document_root)
    relative = os.path.relpath(png.path, root)
    if relative.split(os.sep, 1)[0] == os.pardir:
        raise ConfigError(f"{png.path} is not under the Label Studio document root {root} "
                          "(--document-root, or LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT)")
    return LOCAL_FILES + quote(relative.replace(os.sep, "/"))


def cvat_manifest(names: Sequence[str], images: Sequence[np.ndarray]) -> str:
    """CVAT's dataset manifest (manifest.jsonl) for PNG images of these names, in this order."""
    lines = [{"version": CVAT_MANIFEST_VERSION}, {"type": "images"}]
    lines += [{"name": name, "extension": ".png", "width": int(image.shape[1]), "height": int(image.shape[0]),
               "checksum": pixel_md5(image)} for name, image in zip(names, images)]
    return "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines)


def labeling_table(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows a labeling team works through: the frame's fields, where its file came from, and an empty label."""
    return rows.reindex(columns=TABLE_COLUMNS[:-1]).reset_index(drop=True).assign(label="")
