"""The embedding stage: frames (Arrow) in, unit embeddings and error rows (Arrow) out; no Ray here.

The runtime runs embedders on a pool of Ray actors; each actor builds one (the model is loaded
once, from its folder) and calls `embed_batch` batch after batch. The β-VAE embedding of a frame is
its posterior mean, centred on the training sample's mean posterior mean (stored with the
weights, see beta_vae.py), L2-normalised.

Zero-vector rule: a vector whose norm is below ZERO_NORM becomes the fixed unit vector
(1, ..., 1)/√d, so a blank frame never yields NaN and all such frames share one embedding.
A frame whose pixels are missing or not finite becomes an error row (stage 'embed').
On CPU the model runs in float32, and every forward pass has the same shape (batch_size
frames, zero-padded): same input + same checkpoint + same batch_size = the same embedding,
bit for bit, on every run and for any split of the input into batches.

Fault injection (tests of actor restarts): with EmbedConfig.fail_after_batches = k and the
environment variable ENRICH_RAY_FAULT_MARKER naming a file that does not exist yet, the
embedder creates that file (atomically) and kills its own process before its (k+1)-th batch;
the file then exists, so exactly one actor dies once per run.
"""
from __future__ import annotations

import abc
import dataclasses
import logging
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from enrich_ray import schema
from enrich_ray.config import DecodeConfig, EmbedConfig, StorageConfig
from enrich_ray.embed.beta_vae import INPUT_SIZE
from enrich_ray.embed.checkpoint import load_model
from enrich_ray.embed.device import autocast, frames_to_device, select_device

log = logging.getLogger(__name__)

ZERO_NORM = 1e-12
FAULT_MARKER_ENV = "ENRICH_RAY_FAULT_MARKER"


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows L2-normalised to float32; a row of (near) zero norm becomes (1, ..., 1)/√d."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    zero = norms[:, 0] < ZERO_NORM
    out = x / np.where(zero[:, None], 1.0, norms)
    out[zero] = 1.0 / np.sqrt(x.shape[1])
    return out.astype(np.float32)


def fixed_list_rows(
    table: pa.Table, column: str, width: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """The usable rows of a list-of-floats column as an (M, width) float32 array, their row numbers,
    and (row, reason) for each row that is null, of another length than `width`, or not finite."""
    if column not in table.column_names:
        raise ValueError(f"input has no column {column!r} (columns: {', '.join(table.column_names)})")
    col = table.column(column).combine_chunks()
    n = len(col)
    reasons: dict[int, str] = {}
    if pa.types.is_fixed_size_list(col.type):
        have = col.type.list_size
        values = col.values.slice(col.offset * have, n * have).to_numpy(zero_copy_only=False)
        dense = values.astype(np.float32, copy=False).reshape(n, have)
        if width is not None and have != width:
            reasons = {i: f"{column} has {have} values, expected {width}" for i in range(n)}
            dense = np.zeros((n, width), np.float32)
    elif pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        present = ~col.is_null().to_numpy(zero_copy_only=False)
        if width is None:
            width = int(lengths[present][0]) if present.any() else 0
        starts = np.concatenate([[0], np.cumsum(lengths[present])[:-1]]).astype(np.int64)
        flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32)  # null lists dropped
        dense = np.zeros((n, width), dtype=np.float32)
        good = lengths[present] == width
        dense[np.flatnonzero(present)[good]] = flat[starts[good][:, None] + np.arange(width)]
        for i in np.flatnonzero(present & (lengths != width)):
            reasons[int(i)] = f"{column} has {lengths[i]} values, expected {width}"
    else:
        raise ValueError(f"column {column!r} has type {col.type}, expected a list of floats")
    for i in np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False)):
        reasons[int(i)] = f"{column} is null"
    for i in np.flatnonzero(~np.isfinite(dense).all(axis=1)):
        reasons.setdefault(int(i), f"{column} holds NaN or infinite values")
    rows = np.array([i for i in range(n) if i not in reasons], dtype=np.int64)
    return dense[rows], rows, sorted(reasons.items())


def _column_or_null(table: pa.Table, name: str, rows: np.ndarray, typ: pa.DataType) -> pa.Array:
    if name in table.column_names:
        return table.column(name).take(pa.array(rows, pa.int64())).combine_chunks().cast(typ)
    return pa.nulls(len(rows), typ)


def embeddings_table(table: pa.Table, rows: np.ndarray, emb: np.ndarray, model_hash: str) -> pa.Table:
    """Embedding rows for the given input rows: frame keys, unit embedding, model hash, group columns."""
    out_schema = schema.embeddings_schema(emb.shape[1])
    columns = []
    for field in out_schema:
        if field.name == "embedding":
            flat = pa.array(np.ascontiguousarray(emb, dtype=np.float32).reshape(-1), pa.float32())
            columns.append(pa.FixedSizeListArray.from_arrays(flat, emb.shape[1]))
        elif field.name == "model_hash":
            columns.append(pa.array([model_hash] * len(rows), pa.string()))
        else:
            columns.append(_column_or_null(table, field.name, rows, field.type))
    return pa.Table.from_arrays(columns, schema=out_schema)


def errors_table(table: pa.Table, problems: list[tuple[int, str]], error_type: str) -> pa.Table:
    """Error rows (stage 'embed') for input rows that could not be embedded."""
    if not problems:
        return schema.empty_errors()
    rows = np.array([i for i, _ in problems], dtype=np.int64)
    keys = {
        name: _column_or_null(table, name, rows, schema.ERRORS.field(name).type).to_pylist()
        for name in ("image_id", "source_uri", "frame_index")
    }
    records = [
        schema.error_row(
            "embed", message, error_type=error_type,
            image_id=keys["image_id"][j], source_uri=keys["source_uri"][j], frame_index=keys["frame_index"][j],
        )
        for j, (_, message) in enumerate(problems)
    ]
    return pa.Table.from_pylist(records, schema=schema.ERRORS)


class FaultInjector:
    """Kills its own process once per run before batch k+1 (EmbedConfig.fail_after_batches = k)."""

    def __init__(self, fail_after_batches: int | None):
        self.fail_after = fail_after_batches
        self.batches = 0

    def before_batch(self) -> None:
        """Count a batch; die first if the count is reached and the marker file can be claimed."""
        marker = os.environ.get(FAULT_MARKER_ENV)
        if self.fail_after is not None and marker and self.batches >= self.fail_after:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                log.error("fault injection: process %d exits after %d batches (%s)", os.getpid(), self.batches, marker)
                os._exit(1)
        self.batches += 1


class Embedder(abc.ABC):
    """Shared stage logic: Arrow rows in, (embeddings, errors) out; subclasses supply embed_array."""

    model_hash: str
    dim: int
    input_column = "pixels"
    input_width: int | None = None  # None: any square frame
    error_type = "InvalidFrame"

    def __init__(self, cfg: EmbedConfig):
        self.cfg = cfg
        self.faults = FaultInjector(cfg.fail_after_batches)

    @abc.abstractmethod
    def embed_array(self, frames: np.ndarray) -> np.ndarray:
        """(N, dim) float32 unit rows for N inputs."""

    def embed_batch(self, frames: pa.Table) -> tuple[pa.Table, pa.Table]:
        """Embeddings (schema.embeddings_schema(dim)) and error rows (schema.ERRORS) of one batch of rows."""
        self.faults.before_batch()
        values, rows, problems = fixed_list_rows(frames, self.input_column, self.input_width)
        emb = self.embed_array(values) if len(rows) else np.zeros((0, self.dim), np.float32)
        return embeddings_table(frames, rows, emb, self.model_hash), errors_table(frames, problems, self.error_type)


class VAEEmbedder(Embedder):
    """The β-VAE posterior mean of each frame, centred and L2-normalised; the model is loaded once."""

    def __init__(self, cfg: EmbedConfig, decode: DecodeConfig, storage: StorageConfig | None = None):
        super().__init__(cfg)
        if not cfg.model:
            raise ValueError("embed.model is not set: train a model (train-vae) and name its folder")
        loaded = load_model(cfg.model, storage)
        differ = [
            f.name for f in dataclasses.fields(DecodeConfig)
            if f.name not in ("batch_size", "max_image_pixels")
            and getattr(decode, f.name) != getattr(loaded.decode, f.name)
        ]
        if differ:
            log.warning("decode settings %s differ from those %s was trained with", differ, loaded.uri)
        self.device = select_device(cfg.num_gpus)
        if self.device.type == "cuda":
            torch.backends.cudnn.deterministic = True  # same kernels on every run
            torch.backends.cudnn.benchmark = False
        self.model = loaded.model.to(self.device)
        self.model_hash = loaded.model_hash
        self.dim = loaded.vae.latent_dim

    @torch.inference_mode()
    def embed_array(self, frames: np.ndarray) -> np.ndarray:
        """Unit centred posterior means of (N, s, s) or (N, s*s) frames in [0, 1].

        Every forward pass sees exactly batch_size frames (the last chunk zero-padded): the
        kernels then compute each frame the same way whatever its neighbours, so the result
        does not depend on how the input was split into batches.
        """
        out = np.zeros((len(frames), self.dim), np.float32)
        step = max(1, self.cfg.batch_size)
        for start in range(0, len(frames), step):
            x = frames_to_device(frames[start : start + step], self.device, INPUT_SIZE)
            n = x.shape[0]
            if n < step:
                x = torch.cat([x, x.new_zeros((step - n, *x.shape[1:]))])
            with autocast(self.device, self.cfg.amp):
                z = self.model.embed(x)
            out[start : start + n] = unit_rows(z[:n].float().cpu().numpy())
        return out
