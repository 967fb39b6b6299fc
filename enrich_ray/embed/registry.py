"""The embedders by name (EmbedConfig.embedder): 'vae', 'pixels' and 'precomputed'.

'pixels' is the raw-pixel baseline: frames area-resized to pixel_size, optionally centred
on a mean image, L2-normalised. The mean image must be the same for every batch and actor,
so it is fitted once (`fit_state` over the frames or a sample, on the driver), saved with
the run (`PixelState.to_json`) and handed to every actor. 'precomputed' reads vectors from
a Parquet column (EmbedConfig.precomputed_column) and only normalises them; its state
records their dimension. 'vae' needs no state.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from enrich_ray.config import DecodeConfig, EmbedConfig, StorageConfig
from enrich_ray.embed.device import frames_to_device, select_device
from enrich_ray.embed.encoder import Embedder, VAEEmbedder, fixed_list_rows, unit_rows

FIT_BATCH = 4096


@dataclass
class PixelState:
    """The raw-pixel baseline's fitted state: side, centring, and the mean image (pixel_size² values)."""

    size: int
    center: bool
    mean: np.ndarray | None

    def to_json(self) -> str:
        """JSON text to store with the run."""
        mean = None if self.mean is None else [float(v) for v in self.mean]
        return json.dumps({"kind": "pixels", "size": self.size, "center": self.center, "mean": mean})

    def digest(self) -> str:
        """SHA-256 of the state, the model hash its embeddings carry."""
        h = hashlib.sha256(f"pixels:{self.size}:{self.center}:".encode())
        if self.mean is not None:
            h.update(np.asarray(self.mean, dtype="<f8").tobytes())
        return h.hexdigest()


@dataclass
class PrecomputedState:
    """The precomputed embeddings' dimension, learned from a sample of the column."""

    column: str
    dim: int

    def to_json(self) -> str:
        """JSON text to store with the run."""
        return json.dumps({"kind": "precomputed", "column": self.column, "dim": self.dim})


def state_from_json(text: str) -> PixelState | PrecomputedState:
    """A state written by `to_json`."""
    data = json.loads(text)
    if data.get("kind") == "pixels":
        mean = None if data["mean"] is None else np.asarray(data["mean"], dtype=np.float64)
        return PixelState(int(data["size"]), bool(data["center"]), mean)
    if data.get("kind") == "precomputed":
        return PrecomputedState(str(data["column"]), int(data["dim"]))
    raise ValueError(f"not an embedder state: kind {data.get('kind')!r}")


class PixelEmbedder(Embedder):
    """Frames area-resized to pixel_size x pixel_size, minus the fitted mean image if centring, L2-normalised."""

    def __init__(self, cfg: EmbedConfig, state: PixelState):
        super().__init__(cfg)
        self.state = state
        self.device = select_device(cfg.num_gpus)
        self.dim = state.size * state.size
        self.model_hash = state.digest()
        self.mean = None if state.mean is None else torch.as_tensor(state.mean, dtype=torch.float64, device=self.device)

    @torch.inference_mode()
    def embed_array(self, frames: np.ndarray) -> np.ndarray:
        """Unit raw-pixel vectors of (N, s, s) or (N, s*s) frames; resize and centring on the device."""
        out = np.zeros((len(frames), self.dim), np.float32)
        step = max(1, self.cfg.batch_size)
        for start in range(0, len(frames), step):
            x = frames_to_device(frames[start : start + step], self.device, self.state.size)
            x = x.reshape(x.shape[0], -1).double()
            if self.state.center:
                x = x - self.mean
            out[start : start + step] = unit_rows(x.cpu().numpy())
        return out


class PrecomputedEmbedder(Embedder):
    """Vectors read from a column and L2-normalised; a null, short or non-finite vector is an error row."""

    error_type = "InvalidEmbedding"

    def __init__(self, cfg: EmbedConfig, state: PrecomputedState):
        super().__init__(cfg)
        self.input_column = cfg.precomputed_column
        self.dim = self.input_width = state.dim
        self.model_hash = f"precomputed:{cfg.precomputed_column}:{state.dim}"

    def embed_array(self, frames: np.ndarray) -> np.ndarray:
        """The given (N, dim) vectors as unit rows."""
        vectors = np.asarray(frames, dtype=np.float64)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected (N, {self.dim}) vectors, got shape {vectors.shape}")
        return unit_rows(vectors)


def fit_state(cfg: EmbedConfig, decode: DecodeConfig, sample: np.ndarray | pa.Table | None = None):
    """The state an embedder needs from the data, fitted once on the driver (None for 'vae').

    'pixels': the mean image of `sample` frames, (N, s, s) or (N, s*s) in [0, 1], at pixel_size.
    'precomputed': the vector dimension, from a sample table's column.
    """
    if cfg.embedder == "vae":
        return None
    if cfg.embedder == "pixels":
        if not cfg.pixel_center:
            return PixelState(cfg.pixel_size, False, None)
        if sample is None or len(sample) == 0:
            raise ValueError("embed.pixel_center needs frames to compute the mean image from")
        device = select_device(cfg.num_gpus)
        total = np.zeros(cfg.pixel_size * cfg.pixel_size, np.float64)
        with torch.inference_mode():
            for start in range(0, len(sample), FIT_BATCH):
                x = frames_to_device(np.asarray(sample[start : start + FIT_BATCH]), device, cfg.pixel_size)
                total += x.reshape(x.shape[0], -1).double().sum(dim=0).cpu().numpy()
        return PixelState(cfg.pixel_size, True, total / len(sample))
    if cfg.embedder == "precomputed":
        if not isinstance(sample, pa.Table):
            raise ValueError("precomputed embeddings: pass a sample table to learn their dimension from")
        values, _, _ = fixed_list_rows(sample, cfg.precomputed_column)
        if values.shape[1] == 0:
            raise ValueError(f"column {cfg.precomputed_column!r} holds no vectors in the sample")
        return PrecomputedState(cfg.precomputed_column, int(values.shape[1]))
    raise ValueError(f"embed.embedder: unknown embedder {cfg.embedder!r} (known: vae, pixels, precomputed)")


def make_embedder(
    cfg: EmbedConfig,
    decode: DecodeConfig,
    storage: StorageConfig | None = None,
    state: PixelState | PrecomputedState | None = None,
) -> Embedder:
    """The embedder named by cfg.embedder, ready for embed_batch / embed_array."""
    if cfg.embedder == "vae":
        return VAEEmbedder(cfg, decode, storage)
    if cfg.embedder == "pixels":
        if state is None and not cfg.pixel_center:
            state = PixelState(cfg.pixel_size, False, None)
        if not isinstance(state, PixelState):
            raise ValueError("embed.pixel_center needs the mean image: fit_state(cfg, decode, frames) first")
        if (state.size, state.center) != (cfg.pixel_size, cfg.pixel_center):
            raise ValueError(
                f"pixel state (size {state.size}, center {state.center}) does not match embed.pixel_size "
                f"{cfg.pixel_size}, embed.pixel_center {cfg.pixel_center}"
            )
        return PixelEmbedder(cfg, state)
    if cfg.embedder == "precomputed":
        if not isinstance(state, PrecomputedState):
            raise ValueError("precomputed embeddings need their dimension: fit_state(cfg, decode, sample_table) first")
        return PrecomputedEmbedder(cfg, state)
    raise ValueError(f"embed.embedder: unknown embedder {cfg.embedder!r} (known: vae, pixels, precomputed)")
