"""Is the evaluation's β-VAE the same when trained again? Trains it once, as `enrich-ray evaluate`
does (pipelines/evaluate.embed_training_split on the dataset's training split), and prints the
torch threads and CPU kernel it ran with, the SHA-256 of the weights file and of the unit
embeddings, and the effective dimension. Run it twice, or under other OMP_NUM_THREADS or
ATEN_CPU_CAPABILITY, and compare the hashes:

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python tests/benchmarks/vae_repeat.py \\
        ../shared/data/breastmnist_28/breastmnist.npz --set vae.max_epochs=30
"""
from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import torch

from enrich_ray.config import load_config, packaged_config
from enrich_ray.evaluate.classifier import set_threads
from enrich_ray.pipelines.evaluate import _load, embed_training_split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", help="what enrich-ray evaluate --dataset takes")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="a setting over configs/evaluate.yaml, as the CLI takes it")
    args = ap.parse_args()
    cfg = load_config(packaged_config("evaluate.yaml"), args.set)
    set_threads(cfg.evaluate.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data, _, _ = _load(args.dataset, cfg, Path(tmp))
        t0 = time.perf_counter()
        unit, facts, _ = embed_training_split(data.images[data.rows("train")], "vae", cfg, Path(tmp) / "vae")
        seconds = time.perf_counter() - t0
        weights = hashlib.sha256((Path(tmp) / "vae" / "model.safetensors").read_bytes()).hexdigest()
    print(f"{data.name}: torch threads {torch.get_num_threads()}, CPU kernel {torch.backends.cpu.get_cpu_capability()}, "
          f"vae seed {cfg.vae.seed}; weights sha256 {weights[:16]}, embeddings sha256 "
          f"{hashlib.sha256(unit.tobytes()).hexdigest()[:16]}, effective dimension {facts['effective_dimension']:.4f}; "
          f"{seconds:.0f} s")


if __name__ == "__main__":
    main()
