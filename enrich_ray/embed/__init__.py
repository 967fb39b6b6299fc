"""Frames to unit embeddings: the β-VAE (model, training, checkpoints) and the embedder registry."""
from enrich_ray.embed.checkpoint import CheckpointError, LoadedModel, load_model
from enrich_ray.embed.registry import (
    PixelState,
    PrecomputedState,
    fit_state,
    make_embedder,
    state_from_json,
)
from enrich_ray.embed.train import TrainResult, sample_indices, train_vae

__all__ = [
    "CheckpointError",
    "LoadedModel",
    "PixelState",
    "PrecomputedState",
    "TrainResult",
    "fit_state",
    "load_model",
    "make_embedder",
    "sample_indices",
    "state_from_json",
    "train_vae",
]
