"""Benchmark: the embedding-health figures (embed/diagnostics.embedding_health) on real archives,
for a healthy β-VAE, the pixel baseline and collapsed models, so the report's collapse rule
(report/html.py collapse_warnings) stands on measured figures.

Archives: 30 and 200 BUSI PNGs (../shared/data/busi_256, skipped when absent), the demo's
pydicom test files (mostly copies by construction). Models: the β-VAE trained on the archive
(defaults, as curate does), the same VAE with its encoder's output weights zeroed (the same mean
for every input), a VAE trained with β = 1000 (posterior collapse), random unit vectors (an
embedding unrelated to content) and the raw-pixel embedder.

    .venv/bin/python tests/benchmarks/bench_health.py
"""
from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from enrich_ray.config import DecodeConfig, EmbedConfig, VAEConfig  # noqa: E402
from enrich_ray.decode.stage import decode_files  # noqa: E402
from enrich_ray.embed.diagnostics import embedding_health, health_sample_rows, participation_ratio  # noqa: E402
from enrich_ray.embed.registry import fit_state, make_embedder  # noqa: E402
from enrich_ray.embed.train import train_vae  # noqa: E402
from enrich_ray.pipelines.demo import demo_sources  # noqa: E402
from enrich_ray.report.html import collapse_warnings  # noqa: E402

BUSI = Path(__file__).resolve().parents[3] / "shared" / "data" / "busi_256"
DECODE = DecodeConfig()


def decode_pixels(paths: list[str]) -> np.ndarray:
    """Every frame of the given files, decoded as curate decodes them: (n, size, size)."""
    frames = decode_files(paths, DECODE)
    flat = frames.column("pixels").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(frames.num_rows, DECODE.size, DECODE.size).astype(np.float32)


def vae_embeddings(frames: np.ndarray, folder: str, vae: VAEConfig, zero_encoder: bool = False) -> tuple[np.ndarray, int]:
    """Train a β-VAE on the frames; its embeddings of them and its active units (as recorded)."""
    result = train_vae(frames, vae, DECODE, folder, progress=False)
    embedder = make_embedder(EmbedConfig(embedder="vae", model=folder), DECODE)
    if zero_encoder:
        last = [m for m in embedder.model.encoder.modules() if isinstance(m, torch.nn.Linear)][-1]
        with torch.no_grad():
            last.weight.zero_()
    return embedder.embed_array(frames), result.metrics["active_units"]


def report(archive: str, model: str, emb: np.ndarray, active: int | None, frames: np.ndarray) -> None:
    """One line: the health figures and whether the report's collapse rule fires."""
    rows = health_sample_rows(len(emb))
    fig = embedding_health(emb[rows], frames[rows])
    summary = {**fig, "participation_ratio": participation_ratio(emb)}
    if active is not None:
        summary["active_units"] = active
    fires = collapse_warnings(summary)
    print(
        f"{archive:<22} {model:<26} frames {len(emb):>4}  distinct {fig['distinct_frames']:>4}  "
        f"rho {fig.get('content_correlation', float('nan')):+.3f}  PR all {summary['participation_ratio']:6.2f}  "
        f"PR distinct {fig.get('participation_ratio_distinct', float('nan')):6.2f}  "
        f"pixel PR distinct {fig.get('pixel_participation_ratio_distinct', float('nan')):6.2f}  "
        f"active units {'-' if active is None else active}  collapse rule: {'FIRES' if fires else 'quiet'}",
        flush=True,
    )


def run_archive(name: str, frames: np.ndarray) -> None:
    vae = VAEConfig()
    with tempfile.TemporaryDirectory() as tmp:
        report(name, "beta-VAE (defaults)", *vae_embeddings(frames, f"{tmp}/vae", vae), frames)
        report(name, "beta-VAE, encoder zeroed", *vae_embeddings(frames, f"{tmp}/vae0", vae, zero_encoder=True), frames)
        report(name, "beta-VAE, beta=1000", *vae_embeddings(frames, f"{tmp}/vaeb", dataclasses.replace(vae, beta=1000.0)), frames)
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((len(frames), 128)).astype(np.float32)
    report(name, "random unit vectors", noise / np.linalg.norm(noise, axis=1, keepdims=True), None, frames)
    pixels = EmbedConfig(embedder="pixels")
    emb = make_embedder(pixels, DECODE, state=fit_state(pixels, DECODE, frames)).embed_array(frames)
    report(name, "raw pixels", emb, None, frames)


def main() -> None:
    torch.manual_seed(0)
    if BUSI.exists():
        pngs = sorted(str(p) for p in BUSI.rglob("*.png") if "_mask" not in p.name)
        picked = [pngs[i] for i in np.sort(np.random.default_rng(0).choice(len(pngs), 200, replace=False))]
        run_archive("BUSI 30", decode_pixels(picked[:30]))
    else:
        print(f"{BUSI} absent: BUSI archives skipped")
    run_archive("demo (pydicom files)", decode_pixels(demo_sources()))
    if BUSI.exists():
        run_archive("BUSI 200", decode_pixels(picked))


if __name__ == "__main__":
    main()
