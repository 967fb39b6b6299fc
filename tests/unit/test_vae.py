"""The β-VAE: architecture, losses, diagnostics against plain references, training, checkpoints, devices."""
from __future__ import annotations

import hashlib
import json
import logging
import shutil

import cv2
import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from enrich_ray.config import DecodeConfig, VAEConfig
from enrich_ray.embed import diagnostics
from enrich_ray.embed.beta_vae import (
    build_model,
    capacity_at,
    kl_per_unit,
    vae_loss,
)
from enrich_ray.embed.checkpoint import (
    WEIGHTS,
    CheckpointError,
    load_model,
    save_checkpoint,
)
from enrich_ray.embed.device import amp_dtype, autocast, frames_to_device, select_device
from enrich_ray.embed.train import _split, sample_indices, train_vae

DECODE = DecodeConfig()


@pytest.mark.parametrize("latent", [128, 16])
def test_architecture_and_shapes(latent):
    model = build_model(VAEConfig(latent_dim=latent))
    convs = [m for m in model.encoder if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [(32, (4, 4), (2, 2))] * 4
    linears = [m.out_features for m in model.encoder if isinstance(m, torch.nn.Linear)]
    assert linears == [256, 256, 2 * latent]
    x = torch.rand(5, 1, 64, 64)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (5, latent)
    logits, mu2, _ = model(x, torch.Generator().manual_seed(0))
    assert logits.shape == (5, 1, 64, 64)
    torch.testing.assert_close(mu2, mu)


def test_initialisation_is_seeded_and_leaves_global_rng_alone():
    a, b, c = build_model(VAEConfig(seed=0)), build_model(VAEConfig(seed=0)), build_model(VAEConfig(seed=1))
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name])
    assert not torch.equal(a.encoder[0].weight, c.encoder[0].weight)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    build_model(VAEConfig())
    assert torch.equal(torch.rand(3), expected)


def test_kl_and_losses_match_their_definitions():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    ref = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0))
    torch.testing.assert_close(kl_per_unit(mu, logvar), ref)
    np.testing.assert_allclose(diagnostics.mean_kl_per_unit(mu.numpy(), logvar.numpy()), ref.mean(0).numpy(), rtol=1e-5)

    x = torch.rand(6, 1, 64, 64, generator=g)
    logits = torch.randn(6, 1, 64, 64, generator=g)
    bce = -(x * torch.log(torch.sigmoid(logits)) + (1 - x) * torch.log(1 - torch.sigmoid(logits))).sum() / 6
    kl = ref.sum(1).mean()
    beta = vae_loss(logits, x, mu, logvar, VAEConfig(loss="beta", beta=0.25), step=0)
    torch.testing.assert_close(beta.recon, bce, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(beta.total, beta.recon + 0.25 * kl)
    cap = VAEConfig(loss="capacity", gamma=10.0, capacity_max=20.0, capacity_iters=100)
    assert [capacity_at(s, cap) for s in (0, 50, 100, 1000)] == [0.0, 10.0, 20.0, 20.0]
    capacity = vae_loss(logits, x, mu, logvar, cap, step=50)
    torch.testing.assert_close(capacity.total, capacity.recon + 10.0 * (kl - 10.0).abs())
    with pytest.raises(ValueError, match="unknown loss"):
        vae_loss(logits, x, mu, logvar, VAEConfig(loss="mse"), step=0)  # type: ignore[arg-type]


def test_diagnostics_match_plain_references():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 12)) * np.linspace(0.1, 3.0, 12)
    lam = np.linalg.eigvalsh(np.cov(x, rowvar=False))
    assert diagnostics.participation_ratio(x) == pytest.approx(lam.sum() ** 2 / (lam**2).sum(), rel=1e-9)
    assert diagnostics.participation_ratio(np.outer(rng.normal(size=50), rng.normal(size=8))) == pytest.approx(1.0)
    assert diagnostics.participation_ratio(np.ones((10, 4))) == 0.0

    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    ref = [max(float(unit[i] @ unit[j]) for j in range(len(unit)) if j != i) for i in range(len(unit))]
    np.testing.assert_allclose(diagnostics.nn_similarity(unit, chunk=64), ref, atol=1e-6)
    assert diagnostics.active_units(np.array([0.0, 0.005, 0.02, 3.0])) == 2
    d = diagnostics.embedding_diagnostics(unit)
    assert d["nn_similarity"]["q00"] == pytest.approx(min(ref), abs=1e-6)
    assert d["nn_similarity"]["q100"] == pytest.approx(max(ref), abs=1e-6)


def test_sample_is_seeded_sorted_and_capped():
    vae = VAEConfig(sample_size=100, seed=5)
    a = sample_indices(1000, vae)
    assert len(a) == 100 and len(set(a)) == 100 and (np.diff(a) > 0).all() and a.max() < 1000
    np.testing.assert_array_equal(a, sample_indices(1000, vae))
    assert not np.array_equal(a, sample_indices(1000, VAEConfig(sample_size=100, seed=6)))
    np.testing.assert_array_equal(sample_indices(40, vae), np.arange(40))


def test_device_selection_and_mixed_precision(monkeypatch, caplog):
    assert select_device(0).type == "cpu"
    assert amp_dtype(torch.device("cuda"), True) is torch.bfloat16
    assert amp_dtype(torch.device("cuda"), False) is None
    assert amp_dtype(torch.device("cpu"), True) is None
    with autocast(torch.device("cpu"), True):
        assert torch.nn.Linear(4, 4)(torch.rand(2, 4)).dtype == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING):
        assert select_device(1).type == "cpu"
    assert "no CUDA device" in caplog.text
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device(0.5).type == "cuda" and select_device(0).type == "cpu"


def test_device_preprocessing_matches_opencv():
    rng = np.random.default_rng(1)
    big = rng.random((3, 128, 128), dtype=np.float32)
    small = rng.random((3, 28, 28), dtype=np.float32)
    down = frames_to_device(big.reshape(3, -1), torch.device("cpu"), 64)[:, 0].numpy()
    up = frames_to_device(small, torch.device("cpu"), 64)[:, 0].numpy()
    np.testing.assert_allclose(down, [cv2.resize(f, (64, 64), interpolation=cv2.INTER_AREA) for f in big], atol=1e-6)
    np.testing.assert_allclose(up, [cv2.resize(f, (64, 64), interpolation=cv2.INTER_LINEAR) for f in small], atol=1e-5)
    clipped = frames_to_device(np.full((1, 64, 64), 1.5, np.float32), torch.device("cpu"), 64)
    assert float(clipped.max()) == 1.0
    with pytest.raises(ValueError, match="not square"):
        frames_to_device(np.zeros((2, 60), np.float32), torch.device("cpu"), 64)


def _xrays(npz, start: int, n: int) -> np.ndarray:
    d = np.load(npz)
    imgs = np.concatenate([d["train_images"], d["val_images"], d["test_images"]])[start : start + n]
    return np.stack([cv2.resize(i, (64, 64), interpolation=cv2.INTER_LINEAR) for i in imgs]).astype(np.float32) / 255


def test_training_on_pneumoniamnist_beats_the_mean_image(pneumonia_npz, tmp_path, caplog):
    frames = _xrays(pneumonia_npz, 0, 1000)
    held_out = _xrays(pneumonia_npz, 5000, 200)
    vae = VAEConfig(max_epochs=3, sample_size=1000, batch_size=16, lr=2e-3)  # small batches: ~190 steps
    with caplog.at_level(logging.INFO, logger="enrich_ray.embed.train"):
        result = train_vae(frames, vae, DECODE, str(tmp_path / "model"))
    assert len([r for r in caplog.records if r.getMessage().startswith("epoch ")]) == result.metrics["epochs"] == 3

    out = tmp_path / "model"
    assert {"model.safetensors", "model.json", "decode.json", "metrics.json", "loss_curve.png"} <= {
        p.name for p in out.iterdir()
    }
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.model_hash == hashlib.sha256((out / WEIGHTS).read_bytes()).hexdigest()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model_hash"] == result.model_hash
    assert len(metrics["kl_per_unit"]) == 128
    assert metrics["active_units"] == diagnostics.active_units(np.array(metrics["kl_per_unit"]))
    for key in ("val_recon", "val_kl", "participation_ratio", "val_mse", "val_mse_mean_image"):
        assert np.isfinite(metrics[key])
    assert json.loads((out / "decode.json").read_text())["size"] == 64

    loaded = load_model(str(out))
    train_rows, _ = _split(len(frames), vae)
    with torch.no_grad():  # the latent centre is the training split's mean posterior mean
        center = loaded.model.encode(torch.from_numpy(frames[train_rows, None]))[0].mean(0)
    torch.testing.assert_close(loaded.model.latent_center, center, atol=1e-4, rtol=1e-4)
    assert float(loaded.model.latent_center.norm()) == pytest.approx(metrics["latent_center_norm"], rel=1e-5)
    with torch.no_grad():
        x = torch.from_numpy(held_out[:, None])
        recon = torch.sigmoid(loaded.model.decode(loaded.model.encode(x)[0])).numpy()[:, 0]
    mse_model = float(((recon - held_out) ** 2).mean())
    mse_mean = float(((frames.mean(axis=0) - held_out) ** 2).mean())
    assert mse_model < mse_mean, (mse_model, mse_mean)


def test_training_is_deterministic(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.random((40, 64, 64), dtype=np.float32)
    vae = VAEConfig(max_epochs=1, batch_size=16)
    a = train_vae(frames, vae, DECODE, str(tmp_path / "a"), progress=False)
    b = train_vae(frames, vae, DECODE, str(tmp_path / "b"), progress=False)
    assert a.model_hash == b.model_hash
    with pytest.raises(ValueError, match="at least 2 frames"):
        train_vae(frames[:1], vae, DECODE, str(tmp_path / "c"))
    with pytest.raises(ValueError, match="NaN"):
        train_vae(np.full((4, 64, 64), np.nan, np.float32), vae, DECODE, str(tmp_path / "d"))


def test_the_step_budget_cuts_the_last_epoch_short(tmp_path):
    frames = np.random.default_rng(1).random((84, 64, 64), dtype=np.float32)  # 76 to train on: 5 steps an epoch
    vae = VAEConfig(max_epochs=10, batch_size=16, max_steps=7)
    metrics = train_vae(frames, vae, DECODE, str(tmp_path / "m"), progress=False).metrics
    assert (metrics["steps"], metrics["epochs"], metrics["stopped"]) == (7, 2, "max_steps")
    unbounded = train_vae(frames, VAEConfig(max_epochs=2, batch_size=16), DECODE, str(tmp_path / "u"), progress=False)
    assert (unbounded.metrics["steps"], unbounded.metrics["stopped"]) == (10, "max_epochs")


@pytest.fixture
def saved(tmp_path):
    out = tmp_path / "m128"
    save_checkpoint(build_model(VAEConfig()), VAEConfig(), DECODE, str(out))
    return out


def test_checkpoint_round_trip_without_pickle(saved):
    raw = (saved / WEIGHTS).read_bytes()
    header = int.from_bytes(raw[:8], "little")
    assert json.loads(raw[8 : 8 + header])  # a safetensors JSON header, no pickle
    loaded = load_model(str(saved))
    for name, tensor in build_model(VAEConfig()).state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor)
    assert loaded.vae == VAEConfig() and loaded.decode == DECODE
    assert not loaded.model.training


def test_truncated_checkpoint_is_a_clear_error(saved):
    path = saved / WEIGHTS
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=f"{path}.*truncated or corrupted"):
        load_model(str(saved))


def test_corrupted_checkpoint_is_a_clear_error(saved):
    path = saved / WEIGHTS
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 16] = b"\xff" * 16  # inside the tensor data: still parses
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=f"{path}.*corrupted or was replaced"):
        load_model(str(saved))
    path.write_bytes(b"\x00garbage" * 4)
    with pytest.raises(CheckpointError, match=str(path)):
        load_model(str(saved))


def test_checkpoint_of_another_latent_size_is_a_clear_error(saved, tmp_path):
    other = tmp_path / "m16"
    save_checkpoint(build_model(VAEConfig(latent_dim=16)), VAEConfig(latent_dim=16), DECODE, str(other))
    shutil.copy(other / WEIGHTS, saved / WEIGHTS)
    with pytest.raises(CheckpointError, match=f"{saved / WEIGHTS}.*latent_dim=128"):
        load_model(str(saved))


def test_missing_or_broken_model_json_is_a_clear_error(saved, tmp_path):
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'nowhere' / 'model.json'}: not found"):
        load_model(str(tmp_path / "nowhere"))
    (saved / "model.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=f"{saved / 'model.json'}: not valid JSON"):
        load_model(str(saved))
