"""Benchmark: the 10-NN graph of N clustered 128-d unit vectors, our clustered join vs faiss IVF.

For N = 100k and 1M (100k only with --quick): wall time, memory, and recall@10 against the exact
neighbours of 1,000 sampled frames, for `clustered_knn_graph` and, in the same run on the same data,
for faiss IndexIVFFlat (nlist 4*sqrt(N)... as given, nprobe 8 and 16) searching every frame.

    .venv/bin/python tests/benchmarks/bench_knn.py [--quick] [--nprobe 8,16] [--skip-faiss]
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from enrich_ray.index.knn import clustered_knn_graph, graph_clusters, train_centroids  # noqa: E402

D = 128
K = 10
SAMPLE = 1000


def clustered_unit_vectors(n: int, d: int = D, components: int | None = None, seed: int = 0) -> np.ndarray:
    """A Gaussian mixture on the sphere: each component a random centre plus spread along its own
    16-d subspace and a little isotropic noise (embeddings have low intrinsic dimension)."""
    rng = np.random.default_rng(seed)
    components = components or max(10, n // 1000)
    centres = rng.standard_normal((components, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    bases = rng.standard_normal((components, d, 16)).astype(np.float32) / np.sqrt(d)
    label = rng.integers(0, components, n)
    x = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 100_000):
        lab = label[start : start + 100_000]
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
    return np.array([[j for j in row if j != q][:k] for q, row in zip(queries, ids)])


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of the true k neighbours found."""
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def rss_gib() -> float:
    """The process's peak resident memory so far (ru_maxrss, a high-water mark)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def faiss_ivf_graph(x: np.ndarray, nlist: int, nprobes: list[int], k: int, train_sample: int) -> tuple[float, dict]:
    """faiss IVF-Flat (inner product): train on a sample, add all, search every row for k+1."""
    t0 = time.perf_counter()
    quantizer = faiss.IndexFlatIP(x.shape[1])
    index = faiss.IndexIVFFlat(quantizer, x.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(1)
    sample = x[rng.choice(len(x), min(len(x), train_sample), replace=False)]
    index.train(sample)
    index.add(x)
    build = time.perf_counter() - t0
    out = {}
    for nprobe in nprobes:
        index.nprobe = nprobe
        t0 = time.perf_counter()
        _, ids = index.search(x, k + 1)
        out[nprobe] = (time.perf_counter() - t0, ids)
    return build, out


def strip_self(ids: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Drop each row's own id (by index) from a k+1 search result."""
    return np.array([[j for j in ids[r] if j != r][:k] for r in rows])


def run(n: int, nprobes: list[int], skip_faiss: bool) -> None:
    print(f"\n== N = {n:,} vectors, d = {D}, k = {K} ==")
    t0 = time.perf_counter()
    x = clustered_unit_vectors(n)
    print(f"data: {time.perf_counter() - t0:.1f} s to generate ({x.nbytes / 2**20:.0f} MiB)")
    rows = np.random.default_rng(7).choice(n, SAMPLE, replace=False)
    t0 = time.perf_counter()
    truth = exact_neighbors(x, rows, K)
    print(f"exact reference for {SAMPLE} sampled frames: {time.perf_counter() - t0:.1f} s")

    tracemalloc.start()
    t0 = time.perf_counter()
    graph = clustered_knn_graph(x, K)
    ours = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 2**30
    tracemalloc.stop()
    ours_recall = recall(graph.neighbors[rows], truth)
    print(
        f"clustered join ({graph_clusters(n)} clusters): {ours:.1f} s wall, recall@10 {ours_recall:.3f}, "
        f"peak traced allocations {peak:.2f} GiB, process max RSS {rss_gib():.2f} GiB"
    )
    if skip_faiss:
        return
    nlist = int(4 * np.sqrt(n))
    build, searches = faiss_ivf_graph(x, nlist, nprobes, K, 100_000)
    print(f"faiss IVF-Flat nlist {nlist}: train+add {build:.1f} s")
    for nprobe, (seconds, ids) in searches.items():
        r = recall(strip_self(ids, rows, K), truth)
        total = build + seconds
        print(
            f"  nprobe {nprobe}: search {seconds:.1f} s (total {total:.1f} s), recall@10 {r:.3f}; "
            f"clustered join is {total / ours:.1f}x faster"
        )
    print(f"process max RSS {rss_gib():.2f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 100k only")
    parser.add_argument("--nprobe", default="8,16", help="faiss IVF nprobe values (comma-separated)")
    parser.add_argument("--skip-faiss", action="store_true", help="time the clustered join only")
    args = parser.parse_args()
    print(
        f"cores {os.cpu_count()}, faiss threads {faiss.omp_get_max_threads()}, "
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}, load average {os.getloadavg()}"
    )
    nprobes = [int(v) for v in args.nprobe.split(",")]
    for n in [100_000] if args.quick else [100_000, 1_000_000]:
        run(n, nprobes, args.skip_faiss)


if __name__ == "__main__":
    main()
