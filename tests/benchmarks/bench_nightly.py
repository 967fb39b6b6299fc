"""Nightly benchmark: a catalog of `--catalog-frames` embeddings and a night of `--night-frames` new scans.

The catalog's history is synthetic (clustered unit vectors written as committed nights, carrying
the hash of a small β-VAE trained here), so the benchmark measures the nightly machinery at scale:
reading the history, selecting the new images, decoding and embedding tonight's frames on a local
Ray, adding them to the index, duplicates and outliers against the history, ENRICH seeded by the
labeled set, the commit. Beside it, the parts of a full recompute over history + night that can be
measured here (the kNN graph over everything; embedding measured tonight, extrapolated).

    .venv/bin/python tests/benchmarks/bench_nightly.py --catalog-frames 1000000 --night-frames 20000
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_curate import PeakMemory, synthetic_archive  # noqa: E402

from enrich_ray import runtime  # noqa: E402
from enrich_ray.config import load_config  # noqa: E402
from enrich_ray.embed.checkpoint import load_model  # noqa: E402
from enrich_ray.embed.train import train_vae  # noqa: E402
from enrich_ray.index.knn import knn_graph  # noqa: E402
from enrich_ray.index.shards import build_index  # noqa: E402
from enrich_ray.pipelines.curate import _decode, _frames_sample  # noqa: E402
from enrich_ray.pipelines.nightly import nightly  # noqa: E402
from enrich_ray.pipelines.run_folder import RunFolder  # noqa: E402


def clustered_unit(n: int, dim: int, clusters: int, rng: np.random.Generator) -> np.ndarray:
    """n unit vectors around `clusters` random centres (a redundancy structure like an archive's)."""
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = centres[rng.integers(clusters, size=n)] + 0.35 * rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def synthetic_catalog(root: Path, frames: int, nights: int, labeled: int, cfg, rng) -> None:
    """A committed catalog: model, embeddings by night, index, labeled set, catalog.json."""
    synthetic_archive(root / "model_archive", 600, 50, 64, 0.0, seed=1)
    scratch = RunFolder(str(root / "scratch"))
    runtime.init(cfg.runtime)
    _decode(scratch, sorted(str(p) for p in (root / "model_archive").glob("part-*.parquet")), cfg, runtime)
    train_vae(_frames_sample(scratch, 600, 0), cfg.vae, cfg.decode, str(root / "catalog" / "model"))
    model_hash = load_model(str(root / "catalog" / "model")).model_hash
    x = clustered_unit(frames, cfg.vae.latent_dim, max(1, frames // 50), rng)
    per_night = -(-frames // nights)
    entries = []
    for i in range(nights):
        night = f"2026-10-{i + 1:02d}"
        rows = slice(i * per_night, min(frames, (i + 1) * per_night))
        n = rows.stop - rows.start
        ids = [f"{i:02d}{j:062x}" for j in range(n)]
        table = pa.table({
            "image_id": ids, "frame_index": pa.array(np.zeros(n, np.int32)),
            "source_uri": [f"history/{night}/{j}.dcm" for j in range(n)],
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x[rows].ravel()), x.shape[1]),
            "model_hash": [model_hash] * n,
        })
        (root / "catalog" / "embeddings" / f"night={night}").mkdir(parents=True)
        pq.write_table(table, root / "catalog" / "embeddings" / f"night={night}" / "part-00000.parquet")
        entries.append({"night": night, "frames": n})
    # catalog order is night order, each night sorted by frame key: the ids above are already sorted
    build_index(x, cfg.index).save(str(root / "catalog" / "index" / "v00001"))
    (root / "catalog" / "labeled").mkdir()
    pick = np.sort(rng.choice(frames, size=labeled, replace=False))
    pacsv.write_csv(pa.table({"image_id": [f"{p // per_night:02d}{p % per_night:062x}" for p in pick]}),
                     root / "catalog" / "labeled" / "labeled.csv")
    (root / "catalog" / "catalog.json").write_text(json.dumps({"nights": entries, "model_hash": model_hash, "index": "v00001"}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog-frames", type=int, default=1_000_000)
    ap.add_argument("--night-frames", type=int, default=20_000)
    ap.add_argument("--history-nights", type=int, default=10)
    ap.add_argument("--labeled", type=int, default=20_000)
    ap.add_argument("--work", default="runs/bench_nightly")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()

    root = Path(args.work)
    if root.exists():
        import shutil

        shutil.rmtree(root)
    cfg = load_config(None, ["vae.max_epochs=1", "vae.sample_size=600", *args.overrides])
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    synthetic_catalog(root, args.catalog_frames, args.history_nights, args.labeled, cfg, rng)
    synthetic_archive(root / "night", args.night_frames, max(1, args.night_frames // 10), 64, 0.02, seed=2)
    setup_s = time.perf_counter() - t0

    with PeakMemory() as mem:
        t0 = time.perf_counter()
        result = nightly(str(root / "catalog"), str(root / "night"), "2026-11-21", cfg)
        night_s = time.perf_counter() - t0
    summary = json.loads((root / "catalog" / "nights" / "2026-11-21" / "summary.json").read_text())
    print(f"machine: {os.cpu_count()} cores; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')}")
    print(f"set-up (synthetic catalog + night archive): {setup_s:.1f} s")
    print(result.message)
    print(f"counts: {summary['counts']}")
    print(f"night wall time: {night_s:.1f} s; steps (s): {summary['timings_s']}")
    print(f"peak memory: driver {mem.driver / 2**30:.2f} GiB; largest Ray worker {mem.worker / 2**30:.2f} GiB; "
          f"all Ray workers {mem.workers_total / 2**30:.2f} GiB")

    # Full recompute over history + night: the kNN graph over everything, measured; the embedding of
    # every frame, extrapolated from tonight's measured decode + embed rate.
    emb = load_all(root / "catalog")
    t0 = time.perf_counter()
    knn_graph(emb, cfg.index.k, cfg.index)
    graph_s = time.perf_counter() - t0
    per_frame = (summary["timings_s"].get("decode", 0) + summary["timings_s"].get("embed", 0)) / max(1, summary["counts"]["frames_embedded"])
    embed_all_s = per_frame * len(emb)
    print(f"full recompute: kNN graph over {len(emb)} frames {graph_s:.1f} s (measured); decode+embed of every frame "
          f"{embed_all_s:.0f} s (extrapolated from tonight's {per_frame * 1e3:.2f} ms a frame); "
          f"together {graph_s + embed_all_s:.0f} s against the night's {night_s:.1f} s "
          f"({(graph_s + embed_all_s) / night_s:.1f}x)")


def load_all(catalog: Path) -> np.ndarray:
    """Every committed embedding of the catalog."""
    table = pq.read_table(catalog / "embeddings", columns=["embedding"])
    col = table.column("embedding").combine_chunks()
    return col.flatten().to_numpy().reshape(-1, col.type.list_size).copy()  # writable, as torch wants


if __name__ == "__main__":
    main()
