"""Benchmark: the recall that every run measures (index/knn.graph_recall), on clustered and on
isotropic unit vectors, for the clustered join at its defaults and for index.kind=auto (which
widens the join, then falls back to the exact graph, until recall@10 >= 0.95).

The auto path is forced through the clustered join (exact_max_rows=0), as on a large archive.

    .venv/bin/python tests/benchmarks/bench_knn_recall.py [--n 30000]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from enrich_ray.config import IndexConfig  # noqa: E402
from enrich_ray.index.knn import clustered_knn_graph, graph_recall, knn_graph  # noqa: E402
from tests.benchmarks.bench_knn import D, K, clustered_unit_vectors, isotropic_unit_vectors  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30_000, help="vectors (128-d)")
    n = parser.parse_args().n
    for name, make in (("clustered", clustered_unit_vectors), ("isotropic", isotropic_unit_vectors)):
        x = make(n)
        t0 = time.perf_counter()
        plain = graph_recall(x, clustered_knn_graph(x, K))
        t1 = time.perf_counter()
        auto = knn_graph(x, K, IndexConfig(kind="auto"), exact_max_rows=0)
        t2 = time.perf_counter()
        r = auto.recall
        print(
            f"{name:<9} N={n:,} d={D}: clustered join at defaults recall@{K} {plain['recall_at_k']:.3f} "
            f"(1-NN underestimate max {plain['nn_underestimate_max']:.3f}, mean {plain['nn_underestimate_mean']:.4f}; "
            f"{t1 - t0:.1f} s) | auto: {r['method']} graph, recall@{K} {r['recall_at_k']:.3f}, "
            f"underestimate max {r['nn_underestimate_max']:.3f}, tried {[t['n_assign'] for t in r.get('tried', [])]} "
            f"lists per frame ({t2 - t1:.1f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
