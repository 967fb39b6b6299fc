"""Benchmark: the 10-NN graph of N clustered 128-d unit vectors, our clustered join vs faiss IVF.

For N = 100k and 1M (100k only with --quick), on the same data in the same run: wall time, peak
memory and recall@10 against the exact neighbours of 1,000 sampled frames, for
`clustered_knn_graph` (defaults) and for faiss IndexIVFFlat (nlist 4·sqrt(N), trained on
max(100k, 39·nlist) frames, nprobe 8 and 16) searching every frame for its k+1 nearest.
Each method runs in its own child process; its peak resident memory (VmHWM, reset after the
imports and the data load) is its own.

    .venv/bin/python tests/benchmarks/bench_knn.py [--quick] [--nprobe 8,16] [--skip-faiss] [--isotropic]

--isotropic uses unit vectors drawn uniformly on the sphere instead (no cluster structure: the
hard case for any clustered search).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from enrich_ray.index.knn import clustered_knn_graph, graph_clusters

D = 128
K = 10
SAMPLE = 1000


def clustered_unit_vectors(n: int, d: int = D, components: int | None = None, seed: int = 0) -> np.ndarray:
    """A Gaussian mixture on the sphere (N/1000 components): each a random centre plus spread along
    its own 16-d subspace and a little isotropic noise (embeddings have low intrinsic dimension)."""
    rng = np.random.default_rng(seed)
    components = components or max(10, n // 1000)
    centres = rng.standard_normal((components, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    bases = rng.standard_normal((components, d, 16)).astype(np.float32) / np.sqrt(d)
    label = rng.integers(0, components, n)
    x = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 50_000):
        lab = label[start : start + 50_000]
        z = rng.standard_normal((len(lab), 16)).astype(np.float32)
        spread = np.einsum("nij,nj->ni", bases[lab], z)
        noise = rng.standard_normal((len(lab), d)).astype(np.float32) * (0.15 / np.sqrt(d))
        x[start : start + len(lab)] = centres[lab] + 0.5 * spread + noise
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def exact_neighbors(x: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact k nearest other rows of the sampled queries (faiss flat search, self removed by index)."""
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    _, ids = index.search(x[queries], k + 1)
    return strip_self(ids, queries, k)


def strip_self(ids: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Drop each query's own id (by index) from its k+1 search result."""
    return np.array([[j for j in found if j != r][:k] for r, found in zip(rows, ids)])


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of the true k neighbours found."""
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def rss_gib(field: str) -> float:
    """This process's resident memory now (VmRSS) or its peak (VmHWM), from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> None:
    """Start the peak (VmHWM) afresh, so it measures the method and not the imports before it."""
    Path("/proc/self/clear_refs").write_text("5")


def child_clustered(x: np.ndarray, rows: np.ndarray, truth: np.ndarray) -> dict:
    t0 = time.perf_counter()
    graph = clustered_knn_graph(x, K)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "recall": recall(graph.neighbors[rows], truth), "clusters": graph_clusters(len(x))}


def child_faiss(x: np.ndarray, rows: np.ndarray, truth: np.ndarray, nprobes: list[int]) -> dict:
    n, d = x.shape
    nlist = int(4 * np.sqrt(n))
    t0 = time.perf_counter()
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    sample = np.random.default_rng(1).choice(n, min(n, max(100_000, 39 * nlist)), replace=False)
    index.train(x[np.sort(sample)])
    index.add(x)
    out = {"nlist": nlist, "build_s": time.perf_counter() - t0, "searches": {}}
    for nprobe in nprobes:
        index.nprobe = nprobe
        t0 = time.perf_counter()
        _, ids = index.search(x, K + 1)
        seconds = time.perf_counter() - t0
        out["searches"][nprobe] = {"search_s": seconds, "recall": recall(strip_self(ids[rows], rows, K), truth)}
    return out


def run_child(method: str, folder: str, nprobes: list[int]) -> dict:
    """Run one method in a fresh process on the saved data; its result as a dict."""
    cmd = [sys.executable, __file__, "--child", method, "--data", folder, "--nprobe", ",".join(map(str, nprobes))]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def child_main(method: str, folder: str, nprobes: list[int]) -> None:
    x = np.load(Path(folder) / "x.npy")
    saved = np.load(Path(folder) / "truth.npz")
    rss_data = rss_gib("VmRSS")
    reset_peak_rss()
    if method == "clustered":
        result = child_clustered(x, saved["rows"], saved["truth"])
    else:
        result = child_faiss(x, saved["rows"], saved["truth"], nprobes)
    result.update({"peak_rss_gib": rss_gib("VmHWM"), "rss_with_data_gib": rss_data})
    print(json.dumps(result))


def isotropic_unit_vectors(n: int, d: int = D, seed: int = 0) -> np.ndarray:
    """Unit vectors uniform on the sphere."""
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def run(n: int, nprobes: list[int], skip_faiss: bool, isotropic: bool = False) -> None:
    print(f"\n== N = {n:,} {'isotropic' if isotropic else 'clustered'} vectors, d = {D}, k = {K} ==", flush=True)
    t0 = time.perf_counter()
    x = isotropic_unit_vectors(n) if isotropic else clustered_unit_vectors(n)
    print(f"data: {x.nbytes / 2**20:.0f} MiB, {time.perf_counter() - t0:.1f} s to generate", flush=True)
    rows = np.random.default_rng(7).choice(n, SAMPLE, replace=False)
    t0 = time.perf_counter()
    truth = exact_neighbors(x, rows, K)
    print(f"exact reference for {SAMPLE} sampled frames: {time.perf_counter() - t0:.1f} s", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        np.save(Path(folder) / "x.npy", x)
        np.savez(Path(folder) / "truth.npz", rows=rows, truth=truth)
        del x
        ours = run_child("clustered", folder, nprobes)
        print(
            f"clustered join ({ours['clusters']} clusters): {ours['wall_s']:.1f} s wall, recall@10 {ours['recall']:.3f}, "
            f"peak RSS {ours['peak_rss_gib']:.2f} GiB (RSS {ours['rss_with_data_gib']:.2f} GiB before, data loaded); "
            f"load average now {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        if skip_faiss:
            return
        base = run_child("faiss", folder, nprobes)
    print(
        f"faiss IVF-Flat nlist {base['nlist']}: train+add {base['build_s']:.1f} s, "
        f"peak RSS {base['peak_rss_gib']:.2f} GiB (RSS {base['rss_with_data_gib']:.2f} GiB before, data loaded)",
        flush=True,
    )
    for nprobe, r in base["searches"].items():
        total = base["build_s"] + r["search_s"]
        print(
            f"  nprobe {nprobe}: search {r['search_s']:.1f} s (with train+add {total:.1f} s), recall@10 {r['recall']:.3f}; "
            f"faiss/clustered wall-time ratio {total / ours['wall_s']:.2f}; load average now {os.getloadavg()[0]:.1f}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 100k only")
    parser.add_argument("--nprobe", default="8,16", help="faiss IVF nprobe values (comma-separated)")
    parser.add_argument("--skip-faiss", action="store_true", help="time the clustered join only")
    parser.add_argument("--isotropic", action="store_true", help="uniform unit vectors instead of clustered ones")
    parser.add_argument("--child", choices=["clustered", "faiss"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    nprobes = [int(v) for v in args.nprobe.split(",")]
    if args.child:
        child_main(args.child, args.data, nprobes)
        return
    print(
        f"cores {os.cpu_count()}, faiss threads {faiss.omp_get_max_threads()}, "
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}, load average {os.getloadavg()[0]:.1f}"
    )
    for n in [100_000] if args.quick else [100_000, 1_000_000]:
        run(n, nprobes, args.skip_faiss, args.isotropic)


if __name__ == "__main__":
    main()
