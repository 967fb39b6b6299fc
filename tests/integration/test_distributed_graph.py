"""The kNN graph and the index built by Ray tasks (index.partitioned through runtime.map_tasks) on the
tests' shared cluster equal the single-process graph and index."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from enrich_ray import runtime
from enrich_ray.config import IndexConfig
from enrich_ray.index.knn import clustered_knn_graph, exact_knn_graph, graph_recall
from enrich_ray.index.partitioned import build_graph, build_index_parts, read_graph, search_index_parts
from enrich_ray.index.shards import ShardedIndex
from tests.unit.test_index import clustered
from tests.unit.test_partitioned import vector_files

pytestmark = pytest.mark.ray


def in_tasks_only(monkeypatch) -> tuple[list[str], object]:
    """A map that runs each step as Ray tasks and records its name; Parquet reading made to fail in this
    process, so that every embedding is read by a task (the workers import pyarrow afresh)."""
    steps: list[str] = []

    def refuse(*args, **kwargs):
        raise AssertionError("the driver read a Parquet file")

    monkeypatch.setattr(pq, "read_table", refuse)
    monkeypatch.setattr(pq, "ParquetFile", refuse)
    return steps, lambda fn, calls: steps.append(fn.__name__) or runtime.map_tasks(fn, calls)


def test_graph_by_ray_tasks_equals_the_single_process_graph(ray_cluster, tmp_path, monkeypatch):
    x = clustered(4000, components=40)
    files = vector_files(x, tmp_path, 6)  # frames scattered over the files, an error row in each
    single = clustered_knn_graph(x, 10)
    with monkeypatch.context() as patch:
        steps, tasks = in_tasks_only(patch)
        figures = build_graph(files, 10, str(tmp_path / "knn"), IndexConfig(kind="ivf"), map=tasks, group_rows=1000)
    assert {"read_vectors", "train_groups", "assign_file", "join_group", "scan_file"} <= set(steps)
    graph = read_graph(str(tmp_path / "knn"))
    assert figures["groups"] == 4 and figures["n_assign"] == 12
    # The centroids come from k-means run in a task (one thread) rather than here: the same sample, but
    # the float sums of k-means may round apart; rows whose clusters match are the same rows.
    same = (graph.neighbors == single.neighbors).all(axis=1)
    assert same.mean() > 0.97, same.mean()
    np.testing.assert_allclose(graph.similarities[same], single.similarities[same], atol=1e-6)
    assert figures["recall_at_k"] == graph_recall(x, graph)["recall_at_k"] >= 0.95
    assert abs(figures["recall_at_k"] - graph_recall(x, single)["recall_at_k"]) <= 0.01

    exact = build_graph(files, 10, str(tmp_path / "exact"), IndexConfig(kind="flat"), map=runtime.map_tasks)
    truth = exact_knn_graph(x, 10)
    assert exact["method"] == "exact" and exact["recall_at_k"] == 1.0
    found = read_graph(str(tmp_path / "exact"))
    np.testing.assert_allclose(found.similarities, truth.similarities, atol=1e-6)
    assert (found.neighbors == truth.neighbors).mean() > 0.999  # ids apart only at float ties


def test_index_by_ray_tasks_searches_as_the_single_process_index(ray_cluster, tmp_path, monkeypatch):
    x = clustered(3000, components=30)
    files = vector_files(x, tmp_path, 3)
    cfg = IndexConfig(kind="ivf", shard_size=1000, nlist=30, nprobe=8)
    queries = x[::40]
    with monkeypatch.context() as patch:
        steps, tasks = in_tasks_only(patch)
        build_index_parts(files, cfg, str(tmp_path / "index"), map=tasks)
        sims, ids = search_index_parts(str(tmp_path / "index"), queries, 6, map=tasks)
    assert steps == ["read_vectors", "_template", "build_shard", "search_file"]
    index = ShardedIndex.load(str(tmp_path / "index"))
    here_sims, here_ids = index.search(queries, 6)
    np.testing.assert_array_equal(ids, here_ids)
    np.testing.assert_allclose(sims, here_sims, atol=1e-6)
    assert (ids[:, 0] == np.arange(0, 3000, 40)).mean() > 0.95 and len(index.shards) == 3


def _length(values, offset):
    return len(values) + offset


def test_map_tasks_puts_a_shared_argument_once(ray_cluster, monkeypatch):
    """A list every call shares (each file's row ids, in the exact scan) goes to the object store once,
    not pickled into each call; a list of one call travels inside it."""
    import ray

    put = []
    real_put = ray.put
    monkeypatch.setattr(ray, "put", lambda value: put.append(value) or real_put(value))
    shared = [np.arange(10)] * 5
    assert runtime.map_tasks(_length, [(shared, i) for i in range(4)]) == [5, 6, 7, 8]
    assert len(put) == 1 and put[0] is shared
    assert runtime.map_tasks(_length, [([1, 2], 0)]) == [2] and len(put) == 1
