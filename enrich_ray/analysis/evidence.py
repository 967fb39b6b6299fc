"""A frame's model-free evidence: header facts, pixel hash, appearance statistics and thumbnail.

The judgments that need no model stand on it: exact duplicates (pixel hash), the near-duplicate
content check (thumbnails) and the outlier table's header and appearance terms. Curate computes
it from the decoded frames; the nightly catalog keeps it for every committed frame
(`evidence_table`), so a night is judged against the history the way curate judges an archive.
An evidence dict holds, in the order of a frame table: `header` (a DataFrame of FACT_COLUMNS),
`pixel_hash` (str or None), `appearance` (float32 rows) and `thumbnail` (float16 rows).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa

from enrich_ray import schema
from enrich_ray.analysis.duplicates import THUMBNAIL_SIDE, thumbnails
from enrich_ray.analysis.outliers import APPEARANCE_NAMES, appearance_features

FACT_COLUMNS = ["image_id", "frame_index", "modality", *schema.FRAME_FACTS, "colorfulness", "is_constant"]
# The decoded frames' columns frame_evidence reads.
DECODED_COLUMNS = [*FACT_COLUMNS, "pixel_hash", "pixels"]
ARRAYS = {"appearance": np.float32, "thumbnail": np.float16}
WIDTHS = {"appearance": len(APPEARANCE_NAMES), "thumbnail": THUMBNAIL_SIDE ** 2}


class MissingFrames(ValueError):
    """The decoded frames lack frames the embeddings hold."""


def empty_evidence() -> dict:
    """The evidence of no frame."""
    return {"header": pd.DataFrame(columns=FACT_COLUMNS), "pixel_hash": [],
            **{name: np.zeros((0, WIDTHS[name]), dtype) for name, dtype in ARRAYS.items()}}


def frame_evidence(decoded: Iterable[pa.Table], frames: pd.DataFrame) -> dict:
    """The evidence of each row of `frames`, computed batch by batch over the decoded frames'
    result rows (DECODED_COLUMNS), so the pixels never sit in memory whole."""
    if not len(frames):
        return empty_evidence()
    facts, features, thumbs = [], [], []
    for batch in decoded:
        pixels = batch.column("pixels").combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(batch.num_rows, -1)
        features.append(appearance_features(pixels))
        thumbs.append(thumbnails(pixels))
        facts.append(batch.drop_columns(["pixels"]).to_pandas())
    if not facts:
        raise MissingFrames(f"no decoded frame for the {len(frames)} embedded frame(s)")
    table = pd.concat(facts, ignore_index=True).astype({"frame_index": "int64"})
    keys = frames[["image_id", "frame_index"]].astype({"frame_index": "int64"}).reset_index(names="_row")
    found = keys.merge(table.reset_index(names="_decoded"), on=["image_id", "frame_index"], how="left")
    found = found.sort_values("_row").drop_duplicates("_row")
    if found["_decoded"].isna().any():
        raise MissingFrames(f"{int(found['_decoded'].isna().sum())} embedded frame(s) are not among the decoded frames")
    where = found["_decoded"].to_numpy(np.int64)
    header = table.iloc[where].reset_index(drop=True)
    return {"header": header[FACT_COLUMNS], "pixel_hash": [h if isinstance(h, str) else None for h in header["pixel_hash"]],
            "appearance": np.concatenate(features)[where].astype(np.float32), "thumbnail": np.concatenate(thumbs)[where]}


def evidence_table(frames: pd.DataFrame, evidence: dict) -> pa.Table:
    """The evidence as one Arrow table, a row per frame, keyed (what the catalog keeps)."""
    header = evidence["header"].drop(columns=["image_id", "frame_index"], errors="ignore").reset_index(drop=True)
    table = pa.Table.from_pandas(pd.concat([frames[["image_id", "frame_index"]].reset_index(drop=True), header], axis=1),
                                 preserve_index=False)
    table = table.append_column("pixel_hash", pa.array(evidence["pixel_hash"], pa.string()))
    for name, dtype in ARRAYS.items():
        values = np.ascontiguousarray(evidence[name], dtype=dtype).reshape(len(frames), WIDTHS[name])
        table = table.append_column(name, pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), WIDTHS[name]))
    return table


def evidence_of(table: pa.Table | None, frames: pd.DataFrame) -> dict:
    """The evidence of these frames from an evidence_table (None: none kept); a frame the table lacks
    has unknown facts (None) and NaN rows."""
    n = len(frames)
    out = {name: np.full((n, WIDTHS[name]), np.nan, dtype) for name, dtype in ARRAYS.items()}
    keys = frames[["image_id", "frame_index"]].astype({"frame_index": "int64"}).reset_index(drop=True)
    if table is None or not table.num_rows:
        return {**out, "header": keys.copy(), "pixel_hash": [None] * n}
    facts = table.drop_columns(list(ARRAYS)).to_pandas().astype({"frame_index": "int64"})
    found = keys.merge(facts.reset_index(names="_at"), on=["image_id", "frame_index"], how="left")
    at = found.pop("_at").to_numpy(np.float64)
    known = np.flatnonzero(np.isfinite(at))
    for name in ARRAYS:
        values = table.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False)
        out[name][known] = values.reshape(table.num_rows, WIDTHS[name])[at[known].astype(np.int64)]
    hashes = found.pop("pixel_hash")
    return {**out, "header": found, "pixel_hash": [h if isinstance(h, str) else None for h in hashes]}


def join_evidence(earlier: dict, later: dict) -> dict:
    """Two frame tables' evidence, one after the other."""
    header = pd.concat([earlier["header"], later["header"]], ignore_index=True)
    arrays = {name: np.concatenate([earlier[name], later[name].astype(earlier[name].dtype)]) for name in ARRAYS}
    return {"header": header, "pixel_hash": list(earlier["pixel_hash"]) + list(later["pixel_hash"]), **arrays}
