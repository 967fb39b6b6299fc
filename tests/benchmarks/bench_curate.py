"""End-to-end curate benchmark on a synthetic archive with a known redundancy structure.

Generates N small grey PNG frames: `--prototypes` distinct images (a smooth texture, a dark
lesion, a gain), each repeated with mild noise (near-duplicates), plus a share of byte-identical
copies (exact duplicates). Smooth textures alone left the β-VAE at the edge of posterior collapse:
a 50,000-frame run trained 0 of 128 active units (every embedding one vector). Writes them
straight into archive shards (the archive contract of enrich_ray.schema), runs the curate job on
a local Ray, and prints per-stage wall time, frames/s, the β-VAE's training steps, peak memory of the
driver and of the Ray workers and the range of the 1-minute load average (both sampled every 0.5 s),
and the BLAS numpy runs with its kernel (OPENBLAS_CORETYPE is left as the environment sets it).

    .venv/bin/python tests/benchmarks/bench_curate.py --frames 200000
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from enrich_ray import schema
from enrich_ray.config import load_config
from enrich_ray.pipelines.curate import curate


def synthetic_archive(out: Path, frames: int, prototypes: int, side: int, exact_share: float, seed: int) -> dict:
    """Write the archive; returns the ground truth of its redundancy."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side] / side
    protos = []
    for _ in range(prototypes):  # a textured field, a dark lesion and a gain: something for the β-VAE to encode
        a, b, c, d = rng.uniform(1, 6, 4)
        img = 0.45 + 0.3 * np.sin(a * np.pi * xx + b) * np.cos(c * np.pi * yy + d)
        cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.08, 0.25)
        img = np.where((xx - cx) ** 2 + (yy - cy) ** 2 < r * r, rng.uniform(0.0, 0.15), img)
        protos.append(img * rng.uniform(0.6, 1.3))
    out.mkdir(parents=True, exist_ok=True)
    images: dict[str, dict] = {}  # one row per image_id, as pack writes it; copies keep their paths
    exact = 0
    previous: bytes | None = None
    for i in range(frames):
        uri = f"synthetic/{i:07d}.png"
        if previous is not None and rng.random() < exact_share:
            data, exact = previous, exact + 1
        else:
            img = protos[rng.integers(prototypes)] + rng.normal(0, 0.03, (side, side))
            data = cv2.imencode(".png", np.clip(img * 255, 0, 255).astype(np.uint8))[1].tobytes()
        previous = data
        image_id = hashlib.sha256(data).hexdigest()
        if image_id in images:
            images[image_id]["source_uris"].append(uri)
            continue
        images[image_id] = {"image_id": image_id, "source_uri": uri, "source_uris": [uri], "format": "png",
                            "size_bytes": len(data), "data": data}
    rows = list(images.values())
    for shard, start in enumerate(range(0, len(rows), 50_000)):
        table = pa.Table.from_pylist(rows[start : start + 50_000], schema=schema.ARCHIVE)
        pq.write_table(table, out / f"part-{shard:05d}.parquet", row_group_size=4096)
    return {"frames_generated": frames, "distinct_images": len(rows), "exact_copies": exact, "prototypes": prototypes}


def _rss_by_process() -> list[tuple[str, int]]:
    """(command line, resident bytes) of every process, read from /proc (Linux)."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out.append((cmd, pages * os.sysconf("SC_PAGE_SIZE")))
    return out


class PeakMemory:
    """Samples the resident memory of this process and of every Ray worker process, and the 1-minute
    load average (every 0.5 s)."""

    def __init__(self) -> None:
        self.load = [os.getloadavg()[0]] * 2  # lowest, highest
        self.driver = 0
        self.worker = 0
        self.workers_total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = str(os.getpid())
        while not self._stop.is_set():
            self.driver = max(self.driver, int(Path(f"/proc/{me}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
            workers = [rss for cmd, rss in _rss_by_process() if "ray::" in cmd]
            if workers:
                self.worker = max(self.worker, max(workers))
                self.workers_total = max(self.workers_total, sum(workers))
            load = os.getloadavg()[0]
            self.load = [min(self.load[0], load), max(self.load[1], load)]
            time.sleep(0.5)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def blas() -> str:
    """The BLAS numpy calls, its kernel and threads, as the library itself reports them."""
    from threadpoolctl import threadpool_info

    return "; ".join(f"{i['internal_api']} {i.get('version')} kernel {i.get('architecture')} x{i['num_threads']}"
                     for i in threadpool_info() if i["user_api"] == "blas")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=200_000)
    ap.add_argument("--prototypes", type=int, default=2_000)
    ap.add_argument("--side", type=int, default=32, help="side of each synthetic PNG, pixels")
    ap.add_argument("--exact-share", type=float, default=0.05)
    ap.add_argument("--work", default="runs/bench_curate")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()

    work = Path(args.work)
    t0 = time.perf_counter()
    truth = synthetic_archive(work / "archive", args.frames, args.prototypes, args.side, args.exact_share, seed=0)
    gen_s = time.perf_counter() - t0
    cfg = load_config(None, args.overrides)
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        result = curate(str(work / "archive"), str(work / "run"), cfg, force=True)
        total_s = time.perf_counter() - t0
    summary = json.loads((work / "run" / "summary.json").read_text())
    n = summary["counts"]["frames_embedded"]
    print(f"machine: {os.cpu_count()} cores; BLAS (the driver's numpy): {blas()}; "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')}")
    print(f"load average (1 min) during curate: {mem.load[0]:.1f} to {mem.load[1]:.1f}")
    print(f"archive: {truth} generated in {gen_s:.1f} s")
    print(f"counts: {summary['counts']}")
    print(f"checks: {summary['checks']}")
    print("stage wall times (s):")
    for stage, s in summary["timings_s"].items():
        print(f"  {stage:8s} {s:9.1f} s   {n / s if s else float('inf'):9.0f} frames/s")
    trained = work / "run" / "model" / "metrics.json"
    if trained.exists():
        m = json.loads(trained.read_text())
        print(f"training: {m['steps']} steps ({m['epochs']} epochs of {m['n_train']} frames, stopped at {m['stopped']}), "
              f"median step {1000 * m['step_seconds_median']:.0f} ms, {m['active_units']}/{m['latent_dim']} active units, "
              f"val MSE {m['val_mse']:.5f} against {m['val_mse_mean_image']:.5f} for the mean image")
    print(f"total: {total_s:.1f} s, {n / total_s:.0f} frames/s end to end")
    print(f"peak memory: driver {mem.driver / 2**30:.2f} GiB (getrusage {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB), "
          f"largest Ray worker {mem.worker / 2**30:.2f} GiB, all Ray workers together {mem.workers_total / 2**30:.2f} GiB")
    red = summary.get("redundancy", {})
    print(f"redundancy: {json.dumps({k: v for k, v in red.items() if 'share' in k or k.startswith('above')}, default=str)[:400]}")
    print(f"exit code {result.exit_code}; report {result.report}")


if __name__ == "__main__":
    main()
