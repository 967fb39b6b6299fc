"""Benchmark and quality check of the embedding stage (not collected by pytest).

  throughput: encoder images/s on CPU (batch 256, float32 and bfloat16 autocast), training step time
  quality:    train the β-VAE on PneumoniaMNIST and BUSI, print active units, participation ratio
              and nearest-neighbour cosine quantiles; the raw-pixel baseline with and without centring

  .venv/bin/python tests/benchmarks/bench_embed.py --threads 2 [--quick] [--quality] [--beta 0.1] ...
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"


def blas_kernel() -> str:
    """Which BLAS/threading ran, for the record."""
    try:
        from threadpoolctl import threadpool_info

        return "; ".join(f"{i['internal_api']} {i.get('architecture', '')} x{i['num_threads']}" for i in threadpool_info())
    except ImportError:
        return f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}"


def pneumonia_frames() -> np.ndarray:
    """All PneumoniaMNIST images (train, val, test), 28 px upsampled to 64 with INTER_LINEAR, in [0, 1]."""
    import cv2

    d = np.load(DATA / "pneumoniamnist_28" / "pneumoniamnist.npz")
    imgs = np.concatenate([d["train_images"], d["val_images"], d["test_images"]])
    return np.stack([cv2.resize(i, (64, 64), interpolation=cv2.INTER_LINEAR) for i in imgs]).astype(np.float32) / 255


def busi_frames() -> np.ndarray:
    """The BUSI PNGs, grey, INTER_AREA-resized to 64x64, in [0, 1] (sorted by path)."""
    import cv2

    paths = sorted((DATA / "busi_256" / "Dataset_BUSI_with_GT").glob("*/*.png"))
    imgs = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in paths]
    return np.stack([cv2.resize(i, (64, 64), interpolation=cv2.INTER_AREA) for i in imgs]).astype(np.float32) / 255


def throughput(args) -> None:
    import torch

    from enrich_ray.config import VAEConfig
    from enrich_ray.embed.beta_vae import build_model, vae_loss

    model = build_model(VAEConfig()).eval()
    n = 1024 if args.quick else 4096
    x = torch.rand((n, 1, 64, 64), generator=torch.Generator().manual_seed(0))
    for name, ctx in [
        ("float32", lambda: torch.autocast("cpu", enabled=False)),
        ("bfloat16 autocast", lambda: torch.autocast("cpu", dtype=torch.bfloat16)),
    ]:
        with torch.inference_mode(), ctx():
            model.encode(x[:256])  # warm-up
            t = time.perf_counter()
            for s in range(0, n, 256):
                model.encode(x[s : s + 256])
            dt = time.perf_counter() - t
        print(f"encoder {name:18s} batch 256: {n / dt:8.0f} images/s ({n} images, {dt:.2f} s)")

    vae = VAEConfig()
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=vae.lr)
    gen = torch.Generator().manual_seed(1)
    times = []
    for i in range(6 if args.quick else 20):
        xb = x[i * 64 : (i + 1) * 64]
        t = time.perf_counter()
        logits, mu, logvar = model(xb, gen)
        loss = vae_loss(logits, xb, mu, logvar, vae, i).total
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    step = float(np.median(times[1:]))
    print(f"training step (batch {vae.batch_size}, float32): {step * 1000:.0f} ms median = {vae.batch_size / step:.0f} images/s")


def quality(args) -> None:
    from enrich_ray.config import DecodeConfig, EmbedConfig, VAEConfig
    from enrich_ray.embed import diagnostics
    from enrich_ray.embed.encoder import unit_rows
    from enrich_ray.embed.registry import fit_state, make_embedder
    from enrich_ray.embed.train import sample_indices, train_vae

    overrides = {k: v for k, v in vars(args).items() if k in {f.name for f in dataclasses.fields(VAEConfig)} and v is not None}
    vae = VAEConfig(**overrides)
    print("VAEConfig:", json.dumps(dataclasses.asdict(vae)))
    for name, load in [("pneumoniamnist", pneumonia_frames), ("busi", busi_frames)]:
        if args.only and name != args.only:
            continue
        frames = load()
        print(f"\n== {name}: {len(frames)} frames")
        for center in (False, True):
            cfg = EmbedConfig(embedder="pixels", pixel_size=16, pixel_center=center)
            emb = make_embedder(cfg, DecodeConfig(), state=fit_state(cfg, DecodeConfig(), frames)).embed_array(frames)
            d = diagnostics.embedding_diagnostics(emb)
            print(f"pixels 16x16 center={center!s:5s}: participation ratio {d['participation_ratio']:.1f}, "
                  f"nn cosine {fmt(d['nn_similarity'])}, share > 0.9: {d['nn_share_above_0.9']:.2f}")
        sample = frames[sample_indices(len(frames), vae)]
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(args.out or tmp, name)
            r = train_vae(sample, vae, DecodeConfig(), out, progress=True)
            emb = make_embedder(EmbedConfig(model=out), DecodeConfig()).embed_array(frames)
            mu = embed_means(out, frames)
        m = r.metrics
        print(f"vae: {m['epochs']} epochs ({m['stopped']}, best {m['best_epoch']}), {m['seconds']:.0f} s, "
              f"val recon {m['val_recon']:.1f} KL {m['val_kl']:.1f} nats, val mse {m['val_mse']:.5f} "
              f"(mean image {m['val_mse_mean_image']:.5f})")
        print(f"vae: active units {m['active_units']}/{m['latent_dim']}, participation ratio {m['participation_ratio']:.1f} "
              f"(of means: {m['participation_ratio_mean']:.1f}), nn cosine {fmt(m['nn_similarity'])}, "
              f"share > 0.9: {m['nn_share_above_0.9']:.2f}")
        for label, x in [("all frames", emb), ("all frames, means centred", mu - mu.mean(axis=0))]:
            d = diagnostics.embedding_diagnostics(unit_rows(x))
            print(f"vae embeddings ({label}): participation ratio {d['participation_ratio']:.1f}, "
                  f"nn cosine {fmt(d['nn_similarity'])}, share > 0.9: {d['nn_share_above_0.9']:.2f}")


def embed_means(model_dir: str, frames: np.ndarray) -> np.ndarray:
    """Raw posterior means (before normalisation) of frames, for the centring comparison."""
    import torch

    from enrich_ray.embed.checkpoint import load_model

    model = load_model(model_dir).model
    with torch.inference_mode():
        return np.concatenate([model.encode(torch.from_numpy(frames[s : s + 512, None]))[0].numpy()
                               for s in range(0, len(frames), 512)])


def fmt(q: dict) -> str:
    return " ".join(f"{k}={v:.3f}" for k, v in q.items())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer images and steps")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quality", action="store_true", help="train on PneumoniaMNIST and BUSI and print diagnostics")
    p.add_argument("--only", choices=["pneumoniamnist", "busi"])
    p.add_argument("--out", help="keep the trained model folders here (default: a temporary folder)")
    for name, typ in [("beta", float), ("loss", str), ("lr", float), ("max_epochs", int), ("sample_size", int),
                      ("gamma", float), ("capacity_max", float), ("capacity_iters", int), ("batch_size", int),
                      ("patience", int), ("latent_dim", int)]:
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=typ)
    args = p.parse_args()

    import logging

    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {blas_kernel()}")
    if args.quality:
        quality(args)
    else:
        throughput(args)


if __name__ == "__main__":
    main()
