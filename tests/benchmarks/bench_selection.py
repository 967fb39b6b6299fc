"""Benchmark of the ENRICH greedy: the plain loop against the exact clustered path (not collected by pytest).

For each case: wall time of both, their ratio (measured in the same run), the fast path's peak
memory beyond the embeddings (tracemalloc: numpy allocations), and whether the outputs agree:
the orders are identical, or they first differ where the reference met a near-tie (two rows
within 1e-6), with scores within 1e-6 up to there. At 1M the plain loop is timed on a prefix
of picks and extrapolated linearly (its cost per pick is constant: one N x d product); its
outputs are compared on that prefix.

Data: clustered synthetic unit vectors (1000 centres, each a 16-d Gaussian patch plus isotropic
noise, lognormal cluster sizes, d = 128) and raw-pixel unit embeddings of all 5,856
PneumoniaMNIST 28x28 images (mean image removed, d = 784).

  .venv/bin/python tests/benchmarks/bench_selection.py              # everything (about an hour here)
  .venv/bin/python tests/benchmarks/bench_selection.py --quick      # 20k synthetic + real, a minute or two
  .venv/bin/python tests/benchmarks/bench_selection.py --n 100000   # one size only (0: the real images only)
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, action="append", help="synthetic sizes to run (repeatable; 0: none)")
    p.add_argument("--quick", action="store_true", help="20k synthetic rows and the real images only")
    p.add_argument("--threads", type=int, default=1, help="BLAS threads for both paths (the machine is shared)")
    p.add_argument("--plain-prefix", type=int, default=2000, help="picks of the plain loop timed at 1M")
    p.add_argument("--no-real", action="store_true", help="skip the PneumoniaMNIST case")
    return p.parse_args()


ARGS = parse()
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)
sys.path.insert(0, str(ROOT))

# numpy is imported after the thread settings above, so that they take effect
import numpy as np

from enrich_ray.selection.enrich import enrich_greedy


def clustered_vectors(n: int, d: int = 128, centres: int = 1000, patch: int = 16, seed: int = 0) -> np.ndarray:
    """Unit vectors around `centres` random directions: a 16-d Gaussian patch each, plus noise."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    sizes = rng.lognormal(0.0, 1.0, centres)
    label = np.sort(rng.choice(centres, size=n, p=sizes / sizes.sum()))
    basis = (rng.standard_normal((centres, patch, d)) / np.sqrt(d)).astype(np.float32)
    out = np.empty((n, d), dtype=np.float32)
    step = 65536
    for a in range(0, n, step):
        lab = label[a : a + step]
        z = rng.standard_normal((lab.size, patch)).astype(np.float32) * 0.12
        noise = rng.standard_normal((lab.size, d)).astype(np.float32) * (0.05 * np.sqrt(patch / d))
        out[a : a + step] = c[lab] + np.einsum("ni,nid->nd", z, basis[lab]) + noise
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out[rng.permutation(n)]


def pneumonia_pixels() -> np.ndarray:
    """All PneumoniaMNIST images as raw-pixel unit vectors, the mean image removed."""
    z = np.load(DATA / "pneumoniamnist_28" / "pneumoniamnist.npz")
    x = np.concatenate([z[f"{s}_images"] for s in ("train", "val", "test")]).reshape(-1, 784).astype(np.float64)
    x -= x.mean(axis=0)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def timed(fn, memory: bool = False):
    """(result, seconds, peak MiB allocated during the call or None)."""
    if memory:
        tracemalloc.start()
    t = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t
    peak = None
    if memory:
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    return out, seconds, peak


def agreement(ref, fast, upto: int | None = None) -> str:
    """'identical' or where the orders first differ and whether it is a near-tie there."""
    a, b = ref.order[:upto], fast.order[:upto]
    score_diff = float(np.nanmax(np.abs(ref.score[: a.size] - fast.score[: a.size]))) if a.size > ref.n_seed else 0.0
    if np.array_equal(a, b):
        return f"identical ({a.size} positions, max score difference {score_diff:.1e})"
    i = int(np.flatnonzero(a != b)[0])
    gap = abs(float(ref.score[i]) - float(fast.score[i]))
    kind = "a near-tie (within 1e-6): valid" if gap <= 1e-6 else "NOT a near-tie: MISMATCH"
    prefix = float(np.nanmax(np.abs(ref.score[:i] - fast.score[:i]))) if i > ref.n_seed else 0.0
    return f"identical for {i} positions (scores within {prefix:.1e}), then {kind} (gap {gap:.1e})"


def case(name: str, x: np.ndarray, k: int | None, plain_prefix: int | None = None) -> None:
    """Time plain and clustered on the same input; plain on a prefix when plain_prefix is set."""
    seed = np.array([0])
    n = x.shape[0]
    picks = (n - 1) if k is None else k
    print(f"\n[{name}] N={n} d={x.shape[1]} picks={picks}", flush=True)
    fast, t_fast, mem = timed(lambda: enrich_greedy(x, seed, k, method="clustered"), memory=True)
    print(f"  clustered: {t_fast:8.1f} s   peak {mem:.0f} MiB beyond the embeddings ({x.nbytes / 2**20:.0f} MiB)", flush=True)
    if plain_prefix is None:
        ref, t_plain, _ = timed(lambda: enrich_greedy(x, seed, k, method="plain"))
        print(f"  plain:     {t_plain:8.1f} s   ({1e3 * t_plain / picks:.2f} ms a pick)", flush=True)
        print(f"  speed-up:  {t_plain / t_fast:8.1f}x   outputs: {agreement(ref, fast)}", flush=True)
    else:
        ref, t_pre, _ = timed(lambda: enrich_greedy(x, seed, plain_prefix, method="plain"))
        t_plain = t_pre / plain_prefix * picks
        print(
            f"  plain:     {t_plain:8.1f} s   EXTRAPOLATED from {plain_prefix} picks in {t_pre:.1f} s"
            f" ({1e3 * t_pre / plain_prefix:.2f} ms a pick)",
            flush=True,
        )
        print(f"  speed-up:  {t_plain / t_fast:8.1f}x   outputs on the prefix: {agreement(ref, fast, plain_prefix + 1)}", flush=True)


def main() -> None:
    sizes = [20_000] if ARGS.quick else (ARGS.n or [100_000, 1_000_000])
    print(f"BLAS threads {ARGS.threads}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}; load {os.getloadavg()}")
    if not ARGS.no_real:
        x = pneumonia_pixels()
        if ARGS.quick:
            x = x[:2000]
        case("PneumoniaMNIST raw pixels, full ranking", x, None)
    for n in sizes:
        if n <= 0:
            continue
        x = clustered_vectors(n)
        if n >= 1_000_000:
            case("clustered synthetic, first 10%", x, n // 10, plain_prefix=ARGS.plain_prefix)
            case("clustered synthetic, full ranking", x, None, plain_prefix=ARGS.plain_prefix)
        else:
            case("clustered synthetic, full ranking", x, None)
    print(f"\nload at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
