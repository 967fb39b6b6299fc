"""Benchmark of the ENRICH greedy: the plain loop against the exact clustered path (not collected by pytest).

For each case: wall and CPU time of both, their ratio (measured in the same run), the fast
path's peak memory beyond the embeddings (tracemalloc: numpy allocations, in a run of its own:
MEMORY_PICKS), and whether the outputs agree: the orders are identical, or they first differ
where the reference met a near-tie (two rows within 1e-6), with scores within 1e-6 up to there. From 100k rows the plain loop is timed
on --plain-prefix picks after the fast path and half as many before it, and extrapolated linearly
(its cost per pick is constant: one N x d product); outputs are compared on that prefix.
The header names the BLAS library, its kernel (OpenBLAS's core name) and threads; each case line
the load average, since the machine may be shared: on a loaded machine CPU time is nearer what a
quiet one would take than wall time is.

Data: clustered synthetic unit vectors (1000 centres, each a 16-d Gaussian patch plus isotropic
noise, lognormal cluster sizes, d = 128) and raw-pixel unit embeddings of all 5,856
PneumoniaMNIST 28x28 images (mean image removed, d = 784).

  .venv/bin/python tests/benchmarks/bench_selection.py              # everything (about an hour here)
  .venv/bin/python tests/benchmarks/bench_selection.py --quick      # 20k synthetic + real, a minute or two
  .venv/bin/python tests/benchmarks/bench_selection.py --n 100000   # one size only (0: the real images only)
  .venv/bin/python tests/benchmarks/bench_selection.py --n 1000000 --no-full   # 1M: the first 10% only
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
    p.add_argument("--blas-kernel", help="OPENBLAS_CORETYPE for this run (e.g. SkylakeX, Haswell); default: the environment's")
    p.add_argument("--plain-prefix", type=int, default=2000, help="picks of the plain loop timed from 100k rows")
    p.add_argument("--no-full", action="store_true", help="at 1M, the first 10%% only")
    p.add_argument("--no-real", action="store_true", help="skip the PneumoniaMNIST case")
    return p.parse_args()


ARGS = parse()
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)
if ARGS.blas_kernel:
    os.environ["OPENBLAS_CORETYPE"] = ARGS.blas_kernel
sys.path.insert(0, str(ROOT))

# numpy is imported after the thread and kernel settings above, so that they take effect
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


# The fast path is timed without tracemalloc (which slows its Python loops: it traces every object), and
# its memory measured in a run of its own, of at most this many picks (the peak comes while the
# index is built and in the first batches; a longer run adds only its longer ranking arrays).
MEMORY_PICKS = 100_000


def blas() -> str:
    """The BLAS numpy calls, its kernel and threads, as the library itself reports them."""
    from threadpoolctl import threadpool_info

    return "; ".join(f"{i['internal_api']} {i.get('version')} kernel {i.get('architecture')} x{i['num_threads']}"
                     for i in threadpool_info() if i["user_api"] == "blas")


def timed(fn, memory: bool = False):
    """(result, wall seconds, CPU seconds, peak MiB allocated during the call or None)."""
    if memory:
        tracemalloc.start()
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    seconds, cpu = time.perf_counter() - t, time.process_time() - c
    peak = None
    if memory:
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    return out, seconds, cpu, peak


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


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
    """Time plain and clustered on the same input; plain on a prefix, around the fast path, when plain_prefix is set."""
    seed = np.array([0])
    n = x.shape[0]
    picks = (n - 1) if k is None else k
    print(f"\n[{name}] N={n} d={x.shape[1]} picks={picks}   {load()}", flush=True)
    if plain_prefix is not None:
        half = plain_prefix // 2
        _, t_a, c_a, _ = timed(lambda: enrich_greedy(x, seed, half, method="plain"))
    fast, t_fast, c_fast, _ = timed(lambda: enrich_greedy(x, seed, k, method="clustered"))
    print(f"  clustered: {t_fast:8.1f} s wall, {c_fast:8.1f} s CPU   {load()}", flush=True)
    k_mem = picks if picks <= MEMORY_PICKS else MEMORY_PICKS
    _, _, _, mem = timed(lambda: enrich_greedy(x, seed, k_mem, method="clustered"), memory=True)
    print(f"             peak {mem:.0f} MiB beyond the embeddings ({x.nbytes / 2**20:.0f} MiB), a run of its own"
          f" ({'all the' if k_mem == picks else f'the first {k_mem} of the'} picks)", flush=True)
    if plain_prefix is None:
        ref, t_plain, c_plain, _ = timed(lambda: enrich_greedy(x, seed, k, method="plain"))
        print(f"  plain:     {t_plain:8.1f} s wall, {c_plain:8.1f} s CPU   ({1e3 * t_plain / picks:.2f} ms a pick)   {load()}", flush=True)
        print(f"  speed-up:  {t_plain / t_fast:8.1f}x wall, {c_plain / c_fast:.1f}x CPU   outputs: {agreement(ref, fast)}", flush=True)
        return
    ref, t_b, c_b, _ = timed(lambda: enrich_greedy(x, seed, plain_prefix, method="plain"))
    timed_picks = half + plain_prefix
    t_plain, c_plain = (t_a + t_b) / timed_picks * picks, (c_a + c_b) / timed_picks * picks
    print(
        f"  plain:     {t_plain:8.1f} s wall, {c_plain:8.1f} s CPU   EXTRAPOLATED from {timed_picks} picks"
        f" ({half} before the fast path in {t_a:.1f} s, {plain_prefix} after in {t_b:.1f} s;"
        f" {1e3 * (t_a + t_b) / timed_picks:.2f} ms a pick)   {load()}",
        flush=True,
    )
    print(f"  speed-up:  {t_plain / t_fast:8.1f}x wall, {c_plain / c_fast:.1f}x CPU   outputs on the prefix:"
          f" {agreement(ref, fast, ref.order.size)}", flush=True)


def main() -> None:
    sizes = [20_000] if ARGS.quick else (ARGS.n or [100_000, 1_000_000])
    print(f"{os.cpu_count()} cores; BLAS: {blas()}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')};"
          f" load {os.getloadavg()}")
    if not ARGS.no_real:
        x = pneumonia_pixels()
        if ARGS.quick:
            x = x[:2000]
        case("PneumoniaMNIST raw pixels, full ranking", x, None)
    for n in sizes:
        if n <= 0:
            continue
        x = clustered_vectors(n)
        prefix = ARGS.plain_prefix if n >= 100_000 else None
        if n >= 1_000_000:
            case("clustered synthetic, first 10%", x, n // 10, plain_prefix=prefix)
            if not ARGS.no_full:
                case("clustered synthetic, full ranking", x, None, plain_prefix=prefix)
        else:
            case("clustered synthetic, full ranking", x, None, plain_prefix=prefix)
    print(f"\nload at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
