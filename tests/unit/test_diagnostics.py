"""Embedding health: the figures (embed/diagnostics.embedding_health) and the report's collapse
rule on them, on real BUSI PNGs and on synthetic archives with planted structure."""
from __future__ import annotations

import numpy as np
import pytest

from enrich_ray.config import DecodeConfig, EmbedConfig, VAEConfig
from enrich_ray.embed.diagnostics import distinct_rows, embedding_health, health_sample_rows
from enrich_ray.embed.registry import fit_state, make_embedder
from enrich_ray.report.html import collapse_warnings
from tests.benchmarks.bench_health import decode_pixels

DECODE = DecodeConfig()


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def blobs(n: int, seed: int = 0, side: int = 64) -> np.ndarray:
    """Synthetic frames with content: one to three bright Gaussian blobs at random places and sizes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side]
    frames = np.zeros((n, side, side), np.float32)
    for f in frames:
        for _ in range(rng.integers(1, 4)):
            cy, cx, r = rng.uniform(8, side - 8), rng.uniform(8, side - 8), rng.uniform(3, 12)
            f += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)).astype(np.float32)
    return np.clip(frames / frames.max(axis=(1, 2), keepdims=True), 0, 1)


def pixel_embeddings(frames: np.ndarray) -> np.ndarray:
    cfg = EmbedConfig(embedder="pixels")
    return make_embedder(cfg, DECODE, state=fit_state(cfg, DECODE, frames)).embed_array(frames)


def judge(emb: np.ndarray, frames: np.ndarray) -> tuple[dict, list[str]]:
    rows = health_sample_rows(len(emb))
    figures = embedding_health(emb[rows], frames[rows])
    return figures, collapse_warnings(figures)


def test_distinct_rows_drops_near_identical_frames():
    frames = blobs(20, seed=1)
    copies = np.concatenate([frames, frames[:5] * 0.9 + 0.05, frames[:5]])  # brightness shift, exact copy
    copies[-1] = 0.5  # one blank frame, then another
    copies = np.concatenate([copies, np.full((1, 64, 64), 0.2, np.float32)])
    kept = distinct_rows(copies)
    assert kept.tolist() == [*range(20), 29]


def test_healthy_synthetic_archive_is_not_collapsed_and_a_content_free_one_is():
    frames = blobs(200, seed=2)
    figures, reasons = judge(pixel_embeddings(frames), frames)
    assert figures["distinct_frames"] >= 150 and figures["content_correlation"] > 0.8 and reasons == []
    noise = unit(np.random.default_rng(3).standard_normal((200, 128)))
    figures, reasons = judge(noise, frames)
    assert abs(figures["content_correlation"]) < 0.1 and len(reasons) == 1 and "track image content" in reasons[0]
    same = np.tile(unit(np.ones((1, 128))), (200, 1))  # one output for every input
    assert judge(same, frames)[0]["content_correlation"] == 0.0 and judge(same, frames)[1]


def test_an_archive_of_copies_is_judged_on_its_distinct_frames():
    frames = blobs(20, seed=4)
    archive = np.repeat(frames, 15, axis=0)  # 300 frames, 20 distinct
    figures, reasons = judge(pixel_embeddings(archive), archive)
    assert figures["distinct_frames"] == 20 and reasons == []


def test_too_few_distinct_frames_or_no_active_unit():
    frames = blobs(5, seed=5)
    noise = unit(np.random.default_rng(6).standard_normal((5, 16)))
    assert collapse_warnings(embedding_health(noise, frames)) == []  # 5 distinct frames: too few to judge
    assert collapse_warnings({"active_units": 0}) and collapse_warnings({"active_units": 3}) == []
    assert collapse_warnings({}) == []


@pytest.fixture(scope="module")
def busi_30(busi_dir) -> np.ndarray:
    pngs = sorted(str(p) for p in busi_dir.rglob("*.png") if "_mask" not in p.name)
    picked = [pngs[i] for i in np.sort(np.random.default_rng(0).choice(len(pngs), 30, replace=False))]
    return decode_pixels(picked)


def test_healthy_small_busi_archive_is_not_collapsed_and_a_zeroed_encoder_is(busi_30, tmp_path):
    import torch

    from enrich_ray.embed.train import train_vae

    assert len(busi_30) == 30
    assert judge(pixel_embeddings(busi_30), busi_30)[1] == []
    train_vae(busi_30, VAEConfig(max_epochs=3), DECODE, str(tmp_path / "vae"), progress=False)
    vae = make_embedder(EmbedConfig(embedder="vae", model=str(tmp_path / "vae")), DECODE)
    figures, reasons = judge(vae.embed_array(busi_30), busi_30)
    assert figures["distinct_frames"] >= 25 and reasons == [], figures
    last = [m for m in vae.model.encoder.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()  # the same posterior mean for every input
    figures, reasons = judge(vae.embed_array(busi_30), busi_30)
    assert figures["content_correlation"] == 0.0 and reasons, figures
