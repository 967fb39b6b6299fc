"""Train the β-VAE on a seeded sample of frames and write a model folder (see checkpoint.py).

Seeded throughout: the sample, the validation split, the initial weights, the batch order
and the reparameterisation noise. Stops when the validation objective has not improved for
`patience` epochs (with the capacity loss, only once C has reached its cap), at max_epochs, or
at the step budget max_steps (its last epoch then cut short and validated like the others),
and keeps the best epoch's weights. GPU when there is one (bfloat16 autocast), CPU otherwise.
Beside the checkpoint: metrics.json (validation reconstruction and KL, KL per latent unit,
active units, participation ratio and nearest-neighbour cosine quantiles of the embeddings,
centred as the encoder centres them, and of the uncentred posterior means) and loss_curve.png.

Defaults (VAEConfig) and why: the β form with β = 0.1. β = 1 left 4-8 effective dimensions
of 128 and β = 4 about 2 nats of KL; β = 0.1 kept 128/128 units active on BUSI (KL ~95 nats
after 30 epochs). Adam at lr 1e-3, batch 32: the model needs a few hundred steps to leave
the mean image, and 5,000 frames give ~140 steps an epoch; at most 30 epochs, patience 4.
The capacity form (loss='capacity') raises C to 100 nats, about the KL β = 0.1 settles at,
over 2,000 steps; with the capacity form early stopping waits until C has reached its cap.
"""
from __future__ import annotations

import copy
import io
import json
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from enrich_ray.config import DecodeConfig, StorageConfig, VAEConfig
from enrich_ray.embed import checkpoint, diagnostics
from enrich_ray.embed.beta_vae import (
    INPUT_SIZE,
    BetaVAE,
    build_model,
    capacity_at,
    vae_loss,
)
from enrich_ray.embed.device import autocast, best_device, frames_to_device
from enrich_ray.embed.encoder import unit_rows
from enrich_ray.io.fs import resolve

log = logging.getLogger(__name__)

MIN_IMPROVEMENT = 1e-4  # relative: a smaller gain in validation loss counts as a plateau
EVAL_BATCH = 512


@dataclass
class TrainResult:
    """Where the model went, its hash, and the figures of its training run."""

    model_hash: str
    out: str
    metrics: dict


def sample_indices(n_total: int, vae: VAEConfig) -> np.ndarray:
    """Sorted, seeded random indices of the frames to train on: sample_size of them, or all if fewer."""
    rng = np.random.default_rng(vae.seed)
    k = min(n_total, vae.sample_size)
    return np.sort(rng.choice(n_total, size=k, replace=False))


def _split(n: int, vae: VAEConfig) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, validation) index split; at least one frame on each side."""
    order = np.random.default_rng(vae.seed + 1).permutation(n)
    n_val = min(n - 1, max(1, round(n * vae.val_fraction)))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


@torch.no_grad()
def _evaluate(model: BetaVAE, x: torch.Tensor, vae: VAEConfig, step: int, amp: bool) -> dict:
    """Validation objective, reconstruction and KL (per image), with fixed noise so epochs compare."""
    model.eval()
    gen = torch.Generator(device=x.device).manual_seed(vae.seed + 2)
    sums = {"loss": 0.0, "recon": 0.0, "kl": 0.0, "mse": 0.0}
    for start in range(0, len(x), EVAL_BATCH):
        xb = x[start : start + EVAL_BATCH]
        with autocast(x.device, amp):
            logits, mu, logvar = model(xb, gen)
            mean_logits = model.decode(mu)
        terms = vae_loss(logits, xb, mu, logvar, vae, step)
        sums["loss"] += float(terms.total) * len(xb)
        sums["recon"] += float(terms.recon) * len(xb)
        sums["kl"] += float(terms.kl) * len(xb)
        sums["mse"] += float(((torch.sigmoid(mean_logits.float()) - xb) ** 2).mean(dim=(1, 2, 3)).sum())
    model.train()
    return {k: v / len(x) for k, v in sums.items()}


@torch.no_grad()
def _posterior(model: BetaVAE, x: torch.Tensor, amp: bool) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means and log-variances of all frames, as float64 arrays."""
    model.eval()
    mus, logvars = [], []
    for start in range(0, len(x), EVAL_BATCH):
        with autocast(x.device, amp):
            mu, logvar = model.encode(x[start : start + EVAL_BATCH])
        mus.append(mu.double().cpu().numpy())
        logvars.append(logvar.double().cpu().numpy())
    return np.concatenate(mus), np.concatenate(logvars)


def _loss_curve(history: list[dict]) -> bytes:
    """PNG of training and validation loss, and validation reconstruction and KL, per epoch."""
    # imported here: embedding actors import this package and never plot
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.5))
    FigureCanvasAgg(fig)
    epochs = [h["epoch"] for h in history]
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], label="validation")
    ax1.set(xlabel="epoch", ylabel="loss per image", title="objective")
    ax1.legend()
    recon = ax2.plot(epochs, [h["val_recon"] for h in history], label="reconstruction", color="C2")
    ax2.set(xlabel="epoch", ylabel="reconstruction (nats)", title="validation")
    ax3 = ax2.twinx()
    kl = ax3.plot(epochs, [h["val_kl"] for h in history], label="KL", color="C3")
    ax3.set_ylabel("KL (nats)")
    ax2.legend(handles=recon + kl, loc="upper center")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim != 3 or frames.shape[1] != frames.shape[2]:
        raise ValueError(f"train_vae: expected frames of shape (N, size, size), got {frames.shape}")
    if len(frames) < 2:
        raise ValueError(f"train_vae: need at least 2 frames (one to train on, one to validate), got {len(frames)}")
    if not np.isfinite(frames).all():
        raise ValueError("train_vae: frames hold NaN or infinite values")
    return frames


def train_vae(
    frames: np.ndarray,
    vae: VAEConfig,
    decode: DecodeConfig,
    out: str,
    storage: StorageConfig | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train on (N, size, size) float32 frames in [0, 1] and write the model folder to `out`."""
    frames = _check_frames(frames)
    t0 = time.perf_counter()
    device = best_device()
    amp = device.type == "cuda"
    train_idx, val_idx = _split(len(frames), vae)
    x_train = frames_to_device(frames[train_idx], device, INPUT_SIZE)
    x_val = frames_to_device(frames[val_idx], device, INPUT_SIZE)

    model = build_model(vae).to(device)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=vae.lr)
    order_gen = torch.Generator().manual_seed(vae.seed)
    noise_gen = torch.Generator(device=device).manual_seed(vae.seed + 3)
    level = logging.INFO if progress else logging.DEBUG

    history: list[dict] = []
    best = (float("inf"), 0, copy.deepcopy(model.state_dict()))
    step, stale, stopped = 0, 0, "max_epochs"
    step_seconds = []
    budget = vae.max_steps if vae.max_steps is not None else float("inf")
    for epoch in range(1, vae.max_epochs + 1):
        te = time.perf_counter()
        order = torch.randperm(len(x_train), generator=order_gen).to(device)
        total, seen = 0.0, 0
        for start in range(0, len(order), vae.batch_size):
            if step >= budget:
                break
            xb = x_train[order[start : start + vae.batch_size]]
            ts = time.perf_counter()
            with autocast(device, amp):
                logits, mu, logvar = model(xb, noise_gen)
            terms = vae_loss(logits, xb, mu, logvar, vae, step)
            opt.zero_grad(set_to_none=True)
            terms.total.backward()
            opt.step()
            step_seconds.append(time.perf_counter() - ts)
            step += 1
            total += terms.total.item() * len(xb)
            seen += len(xb)
        val = _evaluate(model, x_val, vae, step, amp)
        row = {
            "epoch": epoch, "train_loss": total / seen, "val_loss": val["loss"], "val_recon": val["recon"],
            "val_kl": val["kl"], "val_mse": val["mse"], "capacity": capacity_at(step, vae) if vae.loss == "capacity" else None,
            "seconds": time.perf_counter() - te,
        }
        history.append(row)
        log.log(
            level, "epoch %d/%d  train %.2f  val %.2f  recon %.2f  KL %.2f  mse %.5f  (%.1f s)",
            epoch, vae.max_epochs, row["train_loss"], val["loss"], val["recon"], val["kl"], val["mse"], row["seconds"],
        )
        ramped = vae.loss != "capacity" or step >= vae.capacity_iters
        improved = epoch == 1 or val["loss"] < best[0] - MIN_IMPROVEMENT * abs(best[0])
        if improved or not ramped:
            best, stale = (val["loss"], epoch, copy.deepcopy(model.state_dict())), 0
        else:
            stale += 1
            if stale >= vae.patience:
                stopped = "plateau"
                break
        if step >= budget:
            stopped = "max_steps"
            break

    model.load_state_dict(best[2])
    val = _evaluate(model, x_val, vae, step, amp)
    mu, logvar = _posterior(model, torch.cat([x_train, x_val]), amp)
    center = mu[: len(x_train)].mean(axis=0)
    model.latent_center.copy_(torch.from_numpy(center))
    kl_unit = diagnostics.mean_kl_per_unit(mu, logvar)
    mean_image = x_train.mean(dim=0, keepdim=True)
    emb = diagnostics.embedding_diagnostics(unit_rows(mu - center))
    uncentred = diagnostics.embedding_diagnostics(unit_rows(mu))
    metrics = {
        "val_recon": val["recon"],
        "val_kl": val["kl"],
        "val_mse": val["mse"],
        "val_mse_mean_image": float(((x_val - mean_image) ** 2).mean()),
        "active_units": diagnostics.active_units(kl_unit),
        "latent_dim": vae.latent_dim,
        "participation_ratio": emb["participation_ratio"],
        "participation_ratio_mean": diagnostics.participation_ratio(mu),
        "nn_similarity": emb["nn_similarity"],
        "nn_share_above_0.9": emb["nn_share_above_0.9"],
        "latent_center_norm": float(np.linalg.norm(center)),
        "uncentred": uncentred,
        "kl_per_unit": [float(v) for v in kl_unit],
        "epochs": len(history),
        "best_epoch": best[1],
        "stopped": stopped,
        "steps": step,
        "step_seconds_median": float(np.median(step_seconds)) if step_seconds else None,
        "n_train": len(train_idx),
        "n_val": len(val_idx),
        "device": device.type,
        "seconds": time.perf_counter() - t0,
        "history": history,
    }
    model_hash = checkpoint.save_checkpoint(model, vae, decode, out, storage)
    loc = resolve(out, storage)
    checkpoint.write_file(loc, checkpoint.METRICS_JSON, json.dumps({"model_hash": model_hash, **metrics}, indent=2).encode())
    checkpoint.write_file(loc, checkpoint.LOSS_CURVE, _loss_curve(history))
    log.log(
        level, "trained %s: val recon %.2f, KL %.2f nats, %d/%d active units, participation ratio %.1f, nn cosine median %.3f",
        loc.uri(), val["recon"], val["kl"], metrics["active_units"], vae.latent_dim,
        metrics["participation_ratio"], emb["nn_similarity"].get("q50", float("nan")),
    )
    return TrainResult(model_hash=model_hash, out=loc.uri(), metrics=metrics)
