"""A trained model folder: weights without pickle, its config, its preprocessing, its hash.

Layout (local path or any fsspec URI):
  model.safetensors  the weights (safetensors: loads without pickle)
  model.json         format version, VAEConfig, input size, model_hash
  decode.json        the DecodeConfig the training frames were made with
  metrics.json, loss_curve.png  written by training
model_hash is the SHA-256 of model.safetensors' bytes; every embedding row carries it, and
loading checks it, so a corrupted, truncated or swapped weights file is a clear error.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from enrich_ray.config import DecodeConfig, StorageConfig, VAEConfig
from enrich_ray.embed.beta_vae import INPUT_SIZE, BetaVAE
from enrich_ray.io.fs import Location, resolve

FORMAT = "enrich_ray.beta_vae"
VERSION = 1
WEIGHTS = "model.safetensors"
MODEL_JSON = "model.json"
DECODE_JSON = "decode.json"
METRICS_JSON = "metrics.json"
LOSS_CURVE = "loss_curve.png"


class CheckpointError(RuntimeError):
    """A model folder that cannot be used; the message names the file."""


@dataclass
class LoadedModel:
    """A model ready to embed (eval mode, on the CPU) with what it was trained with."""

    model: BetaVAE
    vae: VAEConfig
    decode: DecodeConfig
    model_hash: str
    uri: str


def weights_hash(data: bytes) -> str:
    """The model hash: hex SHA-256 of the weights file's bytes."""
    return hashlib.sha256(data).hexdigest()


def write_file(loc: Location, name: str, data: bytes) -> None:
    """Write one file below a (local or remote) folder, whole or not at all."""
    loc.join(name).write_bytes(data)


def save_checkpoint(
    model: BetaVAE, vae: VAEConfig, decode: DecodeConfig, out: str, storage: StorageConfig | None = None
) -> str:
    """Write weights, model.json and decode.json to a folder; return the model hash."""
    loc = resolve(out, storage)
    loc.fs.makedirs(loc.path, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    weights = save_safetensors(state)
    model_hash = weights_hash(weights)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "input_size": INPUT_SIZE,
        "latent_dim": model.latent_dim,
        "vae": dataclasses.asdict(vae),
        "model_hash": model_hash,
    }
    write_file(loc, WEIGHTS, weights)
    write_file(loc, MODEL_JSON, json.dumps(meta, indent=2).encode())
    write_file(loc, DECODE_JSON, json.dumps(dataclasses.asdict(decode), indent=2).encode())
    return model_hash


def _read(loc: Location, name: str) -> bytes:
    path = loc.join(name).uri()
    try:
        with loc.fs.open(loc.join(name).path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found (is {loc.uri()} a model folder written by train-vae?)") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read: {exc}") from None


def _read_json(loc: Location, name: str) -> dict:
    try:
        data = json.loads(_read(loc, name))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{loc.join(name).uri()}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{loc.join(name).uri()}: expected a JSON object")
    return data


def _dataclass_from(cls: type, data: dict, where: str):
    known = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in data.items() if k in known})
    except TypeError as exc:
        raise CheckpointError(f"{where}: {exc}") from None


def load_model(uri: str, storage: StorageConfig | None = None) -> LoadedModel:
    """Load a model folder; CheckpointError (naming the file) if anything is missing or does not match."""
    loc = resolve(uri, storage)
    meta = _read_json(loc, MODEL_JSON)
    meta_uri = loc.join(MODEL_JSON).uri()
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CheckpointError(
            f"{meta_uri}: format {meta.get('format')!r} version {meta.get('version')!r} "
            f"is not {FORMAT!r} version {VERSION}"
        )
    if meta.get("input_size") != INPUT_SIZE:
        raise CheckpointError(f"{meta_uri}: input_size {meta.get('input_size')!r}, this code reads {INPUT_SIZE}")
    vae = _dataclass_from(VAEConfig, meta.get("vae") or {}, meta_uri)
    decode = _dataclass_from(DecodeConfig, _read_json(loc, DECODE_JSON), loc.join(DECODE_JSON).uri())

    weights_uri = loc.join(WEIGHTS).uri()
    weights = _read(loc, WEIGHTS)
    try:
        state = load_safetensors(weights)
    except SafetensorError as exc:
        raise CheckpointError(f"{weights_uri}: not a readable safetensors file (truncated or corrupted): {exc}") from None
    model = BetaVAE(vae.latent_dim)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{weights_uri}: tensors do not match the model in {MODEL_JSON} "
            f"(missing: {missing[:3]}, unexpected: {unexpected[:3]})"
        )
    for name, tensor in expected.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{weights_uri}: {name} has shape {tuple(state[name].shape)}, but {MODEL_JSON} describes "
                f"latent_dim={vae.latent_dim}, which needs {tuple(tensor.shape)}: weights from another model?"
            )
    model_hash = weights_hash(weights)
    if model_hash != meta.get("model_hash"):
        raise CheckpointError(
            f"{weights_uri}: SHA-256 {model_hash[:16]}… differs from the model_hash "
            f"{str(meta.get('model_hash'))[:16]}… recorded in {MODEL_JSON}: the file is corrupted or was replaced"
        )
    model.load_state_dict(state)
    model.eval()
    return LoadedModel(model=model, vae=vae, decode=decode, model_hash=model_hash, uri=loc.uri())
