"""The kNN graph and the index built in parts (index.partitioned), run in this process (local_map),
against the single-process graph and exact search."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from enrich_ray.config import IndexConfig
from enrich_ray.index.knn import assign_clusters, clustered_knn_graph, exact_knn_graph, exact_topk, join_clusters, train_centroids
from enrich_ray.index.partitioned import (
    VectorFile, build_graph, build_index_parts, read_graph, search_index_parts, train_groups,
)
from enrich_ray.index.shards import ShardedIndex, merge_topk
from tests.unit.test_index import clustered


def vector_files(x: np.ndarray, folder, n_files: int, seed: int = 0) -> list[VectorFile]:
    """x's rows scattered over n_files Parquet files in a random order, each with one error row (a null embedding)."""
    order = np.random.default_rng(seed).permutation(len(x))
    files = []
    for i, rows in enumerate(np.array_split(order, n_files)):
        values = pa.FixedSizeListArray.from_arrays(pa.array(x[rows].ravel()), x.shape[1])
        column = pa.concat_arrays([values, pa.nulls(1, values.type)])
        pq.write_table(pa.table({"embedding": column}), folder / f"part-{i}.parquet")
        files.append(VectorFile(str(folder / f"part-{i}.parquet"), np.r_[rows, -1]))
    return files


def test_exact_topk_of_files_merged_equals_the_exact_graph():
    x = clustered(1500, components=20)
    exact = exact_knn_graph(x, 7)
    pieces = np.array_split(np.random.default_rng(3).permutation(len(x)), 4)
    queries = np.arange(0, 1500, 7)
    parts = [exact_topk(x, queries, queries, x[p], p, 7) for p in pieces]
    sims, ids = merge_topk(parts, 7)
    np.testing.assert_array_equal(ids, exact.neighbors[queries])
    np.testing.assert_allclose(sims, exact.similarities[queries], atol=1e-6)


def test_groups_of_clusters_joined_apart_equal_the_whole_join():
    """The per-group join (a group's clusters and the rows their lists hold) gives the rows of the whole join."""
    x = clustered(4000, components=40)
    centroids, group_of = train_groups(x, 60, 5)
    assert len(set(group_of.tolist())) == 5
    assign = assign_clusters(x, centroids, 6)
    whole_n, whole_s = join_clusters(x, assign, 10)
    for g in range(5):
        clusters = np.flatnonzero(group_of == g)
        rows = np.flatnonzero(np.isin(assign, clusters).any(axis=1))
        local, sims = join_clusters(x[rows], assign[rows], 10, clusters)
        query = np.flatnonzero(np.isin(assign[rows, 0], clusters))
        np.testing.assert_array_equal(np.where(local[query] >= 0, rows[np.maximum(local[query], 0)], -1), whole_n[rows[query]])
        np.testing.assert_array_equal(sims[query], whole_s[rows[query]])


def test_every_list_joined_is_the_exact_graph():
    """With every frame in every cluster's list the join is exhaustive: the exact graph."""
    x = clustered(1200, components=15)
    centroids = train_centroids(x, 8, 10_000)
    neighbors, sims = join_clusters(x, assign_clusters(x, centroids, 8), 9)
    exact = exact_knn_graph(x, 9)
    np.testing.assert_allclose(sims, exact.similarities, atol=1e-6)
    assert (neighbors == exact.neighbors).mean() > 0.999  # ids differ only where two similarities tie within float error


def test_a_cluster_holding_most_frames_is_joined_in_bounded_blocks(monkeypatch):
    """One cluster list holding 90% of the frames (a collapsed or a one-view archive) is joined a block of
    query rows at a time: the same graph as one product of its whole list, never a list-squared matrix."""
    from enrich_ray.index import knn

    rng = np.random.default_rng(5)
    x = np.vstack([rng.standard_normal((1800, 16)) * 0.01 + np.eye(16)[0], clustered(200, d=16, components=4)]).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assign = assign_clusters(x, train_centroids(x, 6, 10_000), 2)
    assert np.bincount(assign[:, 0]).max() >= 1500
    whole_n, whole_s = join_clusters(x, assign, 10)
    widest = []
    product = knn.topk_rows
    monkeypatch.setattr(knn, "topk_rows", lambda sims, ids, k: widest.append(sims.shape[0]) or product(sims, ids, k))
    monkeypatch.setattr(knn, "QUERY_BLOCK_BYTES", 4 * 2048 * 97)  # 97 query rows of a 2,048-wide list at a time
    blocked_n, blocked_s = join_clusters(x, assign, 10)
    assert max(widest) <= 97 + 31  # a list of up to 2,048 padded columns: at most 97 rows; shorter lists more
    np.testing.assert_array_equal(blocked_n, whole_n)
    np.testing.assert_array_equal(blocked_s, whole_s)


def test_graph_in_parts_equals_the_single_process_graph(tmp_path):
    x = clustered(3000, components=30)
    files = vector_files(x, tmp_path, 5)
    cfg = IndexConfig(kind="ivf", train_sample=100_000)
    recall = build_graph(files, 10, str(tmp_path / "knn"), cfg, group_rows=700)
    graph = read_graph(str(tmp_path / "knn"))
    single = clustered_knn_graph(x, 10)
    assert recall["method"] == "clustered" and recall["groups"] == 5
    np.testing.assert_array_equal(graph.neighbors, single.neighbors)
    np.testing.assert_array_equal(graph.similarities, single.similarities)
    assert recall["recall_at_k"] >= 0.95
    # a join task reads its own clusters' frames and those in their lists: at least a group's share, at most all
    assert 3000 / 5 <= recall["group_frames_mean"] <= recall["group_frames_max"] <= 3000
    exact = build_graph(files, 10, str(tmp_path / "exact"), IndexConfig(kind="flat"))
    assert exact["method"] == "exact" and exact["recall_at_k"] == 1.0
    np.testing.assert_array_equal(read_graph(str(tmp_path / "exact")).neighbors, exact_knn_graph(x, 10).neighbors)
    rows = np.array([3, 17, 2999])
    np.testing.assert_array_equal(read_graph(str(tmp_path / "knn"), rows=rows).neighbors, single.neighbors[rows])


def test_short_rows_get_their_exact_row(tmp_path):
    """A tiny archive whose cluster lists hold fewer than k others: every row is completed exactly."""
    x = clustered(120, components=3)
    files = vector_files(x, tmp_path, 2)
    build_graph(files, 10, str(tmp_path / "knn"), IndexConfig(kind="ivf"), group_rows=40)
    graph = read_graph(str(tmp_path / "knn"))
    assert (graph.neighbors >= 0).all()
    np.testing.assert_allclose(graph.similarities, clustered_knn_graph(x, 10).similarities, atol=1e-6)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_index_in_parts_searches_as_the_single_process_index(tmp_path, kind):
    x = clustered(2500, components=25)
    files = vector_files(x, tmp_path, 4)
    cfg = IndexConfig(kind=kind, shard_size=1000, nlist=20, nprobe=20)
    build_index_parts(files, cfg, str(tmp_path / "index"))
    index = ShardedIndex.load(str(tmp_path / "index"))
    assert index.stored_ids and index.ntotal == 2500 and len(index.shards) == 2
    queries = x[::50]
    sims, ids = search_index_parts(str(tmp_path / "index"), queries, 5)
    np.testing.assert_array_equal((sims, ids), index.search(queries, 5))
    exact = exact_knn_graph(x, 4)
    found = (ids[:, 0] == np.arange(0, 2500, 50)).mean()
    assert found > 0.95 if kind != "flat" else found == 1.0
    if kind == "flat":
        np.testing.assert_array_equal(ids[:, 1:], exact.neighbors[::50])
    index.add(x[:10])  # nightly: the next rows get the next ids
    assert index.ntotal == 2510
    if kind != "hnsw":
        assert [sorted(r) for r in index.search(x[:3], 2)[1].tolist()] == [[0, 2500], [1, 2501], [2, 2502]]
