"""Column names and Arrow schemas of every table the pipeline writes (docs/architecture.md §2).

One home for the data contracts: stages build their outputs from these schemas, so a
column is named once and the archive, frames, errors, embeddings and manifest agree.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


FRAME_SIZE = 64  # the autoencoder's input side, in pixels
EMBED_DIM = 128  # default latent size of the β-VAE

# Header fields copied from the DICOM header into the archive and carried by every frame.
HEADER_FIELDS: list[tuple[str, pa.DataType]] = [
    ("patient_key", pa.string()),
    ("study_uid", pa.string()),
    ("series_uid", pa.string()),
    ("sop_uid", pa.string()),
    ("modality", pa.string()),
    ("n_frames", pa.int32()),
    ("rows", pa.int32()),
    ("cols", pa.int32()),
    ("photometric", pa.string()),
    ("transfer_syntax", pa.string()),
    ("body_part", pa.string()),  # BodyPartExamined
    # the site and scanner: a keyed hash of 'InstitutionName / StationName', or of the one the header
    # has, as for the patient key (decode.dicom.station); null without the key
    ("station", pa.string()),
]
HEADER_NAMES = [name for name, _ in HEADER_FIELDS]

# The keys every frame-level table carries.
FRAME_KEYS = ["image_id", "frame_index"]
# Grouping keys a person reads (patient/study/series, modality, station), carried from archive to manifest.
GROUP_KEYS = ["patient_key", "study_uid", "series_uid", "modality", "station"]
# Header facts every frame also carries (what makes a frame foreign to an archive); PNG and JPEG
# fill them from the file: rows, cols, and 'RGB' or 'MONOCHROME2' by channels.
FRAME_FACTS = ["rows", "cols", "photometric", "body_part"]
# The columns that name a frame in every table after embedding (the manifest's first columns).
FRAME_COLUMNS = [*FRAME_KEYS, "source_uri", *GROUP_KEYS]

ARCHIVE = pa.schema(
    [
        ("image_id", pa.string()),  # hex SHA-256 of the file bytes
        ("source_uri", pa.string()),  # first path (sorted) with these bytes
        ("source_uris", pa.list_(pa.string())),  # every path with these bytes
        ("format", pa.string()),  # dicom | png | jpeg
        ("size_bytes", pa.int64()),
        ("data", pa.binary()),
        *HEADER_FIELDS,
    ]
)


def pixels_type(size: int = FRAME_SIZE) -> pa.DataType:
    """Arrow type of one preprocessed frame: size*size float32 values, row-major."""
    return pa.list_(pa.float32(), size * size)


def embedding_type(dim: int = EMBED_DIM) -> pa.DataType:
    """Arrow type of one embedding: a fixed-size list keeps its shape outside Ray."""
    return pa.list_(pa.float32(), dim)


def frames_schema(size: int = FRAME_SIZE) -> pa.Schema:
    """Schema of the decode stage's output: one row per image or cine frame."""
    return pa.schema(
        [
            ("image_id", pa.string()),
            ("frame_index", pa.int32()),
            ("source_uri", pa.string()),
            ("format", pa.string()),
            ("pixels", pixels_type(size)),
            ("is_constant", pa.bool_()),  # a blank frame: valid, flagged
            ("pixel_hash", pa.string()),  # hex SHA-256 of the full display image, its shape and dtype
            ("colorfulness", pa.float32()),  # mean (max - min channel) of the source, 0-1; 0 when grey
            *[(n, t) for n, t in HEADER_FIELDS if n in GROUP_KEYS or n in FRAME_FACTS],
        ]
    )


ERRORS = pa.schema(
    [
        ("image_id", pa.string()),
        ("source_uri", pa.string()),
        ("frame_index", pa.int32()),
        ("stage", pa.string()),  # pack | decode | embed
        ("error_type", pa.string()),
        ("message", pa.string()),
    ]
)


def embeddings_schema(dim: int = EMBED_DIM) -> pa.Schema:
    """Schema of the embed stage's output: the frame keys, the unit embedding, the model hash."""
    return pa.schema(
        [
            ("image_id", pa.string()),
            ("frame_index", pa.int32()),
            ("source_uri", pa.string()),
            ("embedding", embedding_type(dim)),
            ("model_hash", pa.string()),
            *[(n, t) for n, t in HEADER_FIELDS if n in GROUP_KEYS],
        ]
    )


def error_row(
    stage: str,
    exc: BaseException | str,
    *,
    image_id: str | None = None,
    source_uri: str | None = None,
    frame_index: int | None = None,
    error_type: str | None = None,
) -> dict:
    """One row of the errors table, from an exception or a message."""
    if isinstance(exc, BaseException):
        error_type = error_type or type(exc).__name__
        message = str(exc) or type(exc).__name__
    else:
        message = exc
    return {
        "image_id": image_id,
        "source_uri": source_uri,
        "frame_index": frame_index,
        "stage": stage,
        "error_type": error_type or "Error",
        "message": message[:2000],
    }


def empty_errors() -> pa.Table:
    """An errors table with no rows."""
    return ERRORS.empty_table()


ERROR_COLUMNS = ["stage", "error_type", "message"]


def combine(results: pa.Table, errors: pa.Table) -> pa.Table:
    """One table holding a stage's result rows and its error rows (error columns null on results).

    A Ray Data step has one output; this lets a stage write results and errors in one pass.
    """
    return pa.concat_tables([results, errors], promote_options="default")


def result_rows(table: pa.Table) -> pa.Table:
    """The result rows of a combined table, without the error columns."""
    if "stage" not in table.column_names:
        return table
    keep = table.filter(pc.is_null(table["stage"]))
    return keep.drop_columns([c for c in ERROR_COLUMNS if c in keep.column_names])


def error_rows(table: pa.Table) -> pa.Table:
    """The error rows of a combined table, in the errors schema."""
    if "stage" not in table.column_names:
        return empty_errors()
    errs = table.filter(pc.is_valid(table["stage"]))
    return pa.table({f.name: errs[f.name].cast(f.type) for f in ERRORS}, schema=ERRORS)


def frames_and_vectors(table: pa.Table) -> tuple[pd.DataFrame, np.ndarray]:
    """Frame keys (and group columns) and vectors of an embeddings table's result rows, sorted by frame
    key: the row order every analysis and the manifest address."""
    table = result_rows(table)
    frames = table.select([c for c in FRAME_COLUMNS if c in table.column_names]).to_pandas()
    for column in GROUP_KEYS:  # a table written before a key column existed (station): unknown there
        if column not in frames:
            frames[column] = pd.Series([None] * len(frames), dtype=object)
    if table.num_rows == 0:
        return frames, np.zeros((0, 0), np.float32)
    col = table.column("embedding").combine_chunks()
    lengths = set(pc.list_value_length(col).to_pylist())
    if len(lengths) != 1 or col.null_count:
        raise ValueError(f"embeddings must all have one length and none may be null: found lengths {sorted(map(str, lengths))}")
    emb = col.flatten().to_numpy(zero_copy_only=False).reshape(-1, lengths.pop()).astype(np.float32)
    order = np.lexsort((frames["frame_index"].to_numpy(), frames["image_id"].to_numpy()))
    return frames.iloc[order].reset_index(drop=True), np.ascontiguousarray(emb[order])


def with_keys(df: pd.DataFrame, frames: pd.DataFrame) -> pd.DataFrame:
    """An analysis table (a `row` column) with the frame keys and source_uri of each row appended."""
    keys = frames[["image_id", "frame_index", "source_uri"]].iloc[df["row"].to_numpy()].reset_index(drop=True)
    return pd.concat([df.reset_index(drop=True), keys], axis=1)
