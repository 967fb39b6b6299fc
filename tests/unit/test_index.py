"""The sharded index and the kNN graph, checked against plain numpy brute force."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from enrich_ray.config import IndexConfig
from enrich_ray.index import KnnGraph, ShardedIndex, build_index, clustered_knn_graph, exact_knn_graph, knn_graph
from enrich_ray.index.knn import EXACT_MAX_ROWS, RECALL_TARGET, graph_recall, resolve_kind, topk_rows
from enrich_ray.index.shards import merge_topk


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, d: int = 128, components: int = 50, seed: int = 0) -> np.ndarray:
    """A Gaussian mixture on the sphere, each component spread along its own 16-d subspace."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((components, d)))
    bases = rng.standard_normal((components, d, 16)).astype(np.float32) / np.sqrt(d)
    label = rng.integers(0, components, n)
    z = rng.standard_normal((n, 16)).astype(np.float32)
    spread = np.einsum("nij,nj->ni", bases[label], z)
    return unit(centres[label] + 0.5 * spread + 0.15 / np.sqrt(d) * rng.standard_normal((n, d)).astype(np.float32))


def brute_force(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain reference: the full similarity matrix, self removed by index, each row sorted by (-sim, id)."""
    sims = x @ x.T
    n = len(x)
    neighbors = np.full((n, k), -1, np.int64)
    out = np.full((n, k), -np.inf, np.float32)
    for i in range(n):
        others = [(-sims[i, j], j) for j in range(n) if j != i]
        for r, (s, j) in enumerate(sorted(others)[:k]):
            neighbors[i, r], out[i, r] = j, -s
    return neighbors, out


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def test_exact_graph_equals_brute_force_with_ties_and_duplicates():
    rng = np.random.default_rng(1)
    # Coarse values make many exact ties; rows 7 and 8 repeat row 3.
    x = unit(np.round(rng.standard_normal((300, 8)) * 2) + 0.01)
    x[7] = x[3]
    x[8] = x[3]
    neighbors, sims = brute_force(x, 12)
    graph = exact_knn_graph(x, 12)
    # Ties in real arithmetic differ in the last float32 bit between matrix-product kernels, so ids
    # are compared where the reference's similarity is apart (1e-6) from every other in its row.
    apart = np.array([[np.sum(np.abs(row - v) <= 1e-6) == 1 for v in row] for row in sims])
    np.testing.assert_array_equal(graph.neighbors[apart], neighbors[apart])
    assert apart.mean() > 0.5
    np.testing.assert_allclose(graph.similarities, sims, atol=1e-6)
    assert (graph.neighbors != np.arange(300)[:, None]).all()
    assert {7, 8} <= set(graph.neighbors[3, :2]) and graph.similarities[3, 1] >= 1 - 1e-6


def test_exact_graph_pads_when_fewer_others_than_k():
    x = unit(np.random.default_rng(2).standard_normal((4, 5)))
    graph = exact_knn_graph(x, 6)
    neighbors, _ = brute_force(x, 6)
    np.testing.assert_array_equal(graph.neighbors, neighbors)
    assert (graph.neighbors[:, 3:] == -1).all() and np.isneginf(graph.similarities[:, 3:]).all()
    single = exact_knn_graph(x[:1], 3)
    assert (single.neighbors == -1).all() and np.isneginf(single.nn_similarity).all()


@pytest.mark.parametrize("m", [64, 96, 320, 50])
def test_topk_rows_matches_a_full_sort(m):
    rng = np.random.default_rng(m)
    sims = np.round(rng.standard_normal((40, m)), 1).astype(np.float32)  # many ties
    sims[0, :] = -np.inf
    sims[1, 5:] = -np.inf
    ids = rng.permutation(1000)[:m].astype(np.int64)
    got_s, got_i = topk_rows(sims, ids, 10)
    for r in range(40):
        ref = sorted((-s, i) for s, i in zip(sims[r], ids) if np.isfinite(s))[:10]
        ref_i = [i for _, i in ref] + [-1] * (10 - len(ref))
        np.testing.assert_array_equal(got_i[r], ref_i)
        np.testing.assert_array_equal(got_s[r][: len(ref)], [-s for s, _ in ref])


def test_exact_duplicate_stays_a_neighbour_at_similarity_one():
    x = clustered(5000, d=32, components=10, seed=3)
    x[4000] = x[17]
    for graph in (exact_knn_graph(x, 10), clustered_knn_graph(x, 10)):
        assert graph.neighbors[17, 0] == 4000 and graph.neighbors[4000, 0] == 17
        assert graph.similarities[17, 0] >= 1 - 1e-6 and graph.similarities[4000, 0] >= 1 - 1e-6
        assert (graph.neighbors != np.arange(len(x))[:, None]).all()


def test_clustered_graph_recall_at_default_settings():
    x = clustered(50_000, seed=4)
    graph = knn_graph(x, 10, IndexConfig(kind="ivf"))
    queries = np.random.default_rng(5).choice(len(x), 500, replace=False)
    sims = x[queries] @ x.T
    sims[np.arange(500), queries] = -np.inf
    truth = np.argpartition(-sims, 10, axis=1)[:, :10]
    assert recall(graph.neighbors[queries], truth) >= 0.95
    # Its similarities are the true ones, sorted.
    np.testing.assert_allclose(
        graph.similarities[queries], np.einsum("qd,qkd->qk", x[queries], x[graph.neighbors[queries]]), atol=1e-5
    )
    assert (np.diff(graph.similarities, axis=1) <= 0).all()


def test_ivf_index_recall_and_shards_agree():
    x = clustered(20_000, seed=6)
    index = build_index(x, IndexConfig(kind="ivf", shard_size=8_000))
    assert [s.ntotal for s in index.shards] == [8_000, 8_000, 4_000]
    centroids = [index.shards[i].quantizer.reconstruct_n(0, index.shards[i].nlist) for i in range(3)]
    assert all(np.array_equal(centroids[0], c) for c in centroids[1:])
    queries = np.random.default_rng(7).choice(len(x), 300, replace=False)
    _, ids = index.search(x[queries], 11)
    exact = x[queries] @ x.T
    truth = np.argpartition(-exact, 11, axis=1)[:, :11]
    assert recall(ids, truth) >= 0.95
    assert (ids[:, 0] == queries).all()


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_index_search_save_load_and_add(tmp_path, kind):
    x = clustered(3000, d=32, components=8, seed=8)
    index = build_index(x[:2000], IndexConfig(kind=kind, shard_size=700, nlist=16, nprobe=16))
    assert index.kind == kind and len(index.shards) == 3 and index.ntotal == 2000
    new_ids = index.add(x[2000:])
    np.testing.assert_array_equal(new_ids, np.arange(2000, 3000))
    assert [s.ntotal for s in index.shards] == [700, 700, 700, 700, 200]
    sims, ids = index.search(x[:50], 5)
    exact = x[:50] @ x.T
    truth = np.argsort(-exact, axis=1)[:, :5]
    if kind == "flat":
        np.testing.assert_array_equal(ids, truth)
        np.testing.assert_allclose(sims, np.take_along_axis(exact, truth, axis=1), atol=1e-5)
    else:
        assert recall(ids, truth) >= 0.9
    for uri in (str(tmp_path / "index"), f"memory://test-index-{kind}"):
        index.save(uri)
        again = ShardedIndex.load(uri)
        assert again.kind == kind and again.ntotal == 3000
        sims2, ids2 = again.search(x[:50], 5)
        np.testing.assert_array_equal(ids2, ids)
        np.testing.assert_allclose(sims2, sims)


def test_add_keeps_the_coarse_quantiser():
    x = clustered(4000, d=32, components=8, seed=9)
    index = build_index(x[:3000], IndexConfig(kind="ivf", shard_size=1000, nlist=20))
    before = index.template.quantizer.reconstruct_n(0, 20)
    index.add(x[3000:] * 1.0)
    for shard in index.shards:
        np.testing.assert_array_equal(shard.quantizer.reconstruct_n(0, 20), before)
    _, ids = index.search(x[3500:3510], 1)
    np.testing.assert_array_equal(ids[:, 0], np.arange(3500, 3510))


def test_search_pads_and_checks_input():
    x = unit(np.random.default_rng(10).standard_normal((3, 16)))
    index = build_index(x, IndexConfig())
    sims, ids = index.search(x[:1], 5)
    assert ids[0, 3:].tolist() == [-1, -1] and np.isneginf(sims[0, 3:]).all()
    with pytest.raises(ValueError, match="dimension"):
        index.search(np.ones((1, 8), np.float32), 2)
    bad = x.copy()
    bad[1] = np.nan
    with pytest.raises(ValueError, match="rows \\[1\\]"):
        build_index(bad, IndexConfig())
    with pytest.raises(ValueError, match="rows \\[0, 1\\]"):
        exact_knn_graph(np.zeros((2, 4)), 1)
    with pytest.raises(FileNotFoundError):
        ShardedIndex.load("memory://no-such-index")


def test_merge_topk_takes_the_best_across_shards():
    a = (np.array([[0.9, 0.5]], np.float32), np.array([[3, 1]]))
    b = (np.array([[0.7, -np.inf]], np.float32), np.array([[8, -1]]))
    sims, ids = merge_topk([a, b], 3)
    assert ids.tolist() == [[3, 8, 1]] and sims.tolist() == [[pytest.approx(0.9), pytest.approx(0.7), 0.5]]


def test_auto_rule():
    assert resolve_kind("auto", EXACT_MAX_ROWS) == "flat"
    assert resolve_kind("auto", EXACT_MAX_ROWS + 1) == "ivf"
    assert resolve_kind("hnsw", 10) == "hnsw"
    with pytest.raises(ValueError, match="unknown index kind"):
        resolve_kind("lsh", 10)


def test_graph_arrow_and_parquet_round_trip(tmp_path):
    graph = exact_knn_graph(unit(np.random.default_rng(11).standard_normal((30, 8))), 4)
    table = graph.to_arrow()
    assert table.schema.field("neighbors").type == pa.list_(pa.int64(), 4)
    assert table.schema.field("similarities").type == pa.list_(pa.float32(), 4)
    pq.write_table(table, tmp_path / "graph.parquet")
    shuffled = pq.read_table(tmp_path / "graph.parquet").take(np.random.default_rng(0).permutation(30))
    back = KnnGraph.from_arrow(shuffled)
    np.testing.assert_array_equal(back.neighbors, graph.neighbors)
    np.testing.assert_array_equal(back.similarities, graph.similarities)
    variable = pa.table({"row": [1, 0], "neighbors": [[0], [1]], "similarities": [[0.5], [0.5]]})
    assert KnnGraph.from_arrow(variable).neighbors.tolist() == [[1], [0]]
    empty = KnnGraph(np.zeros((3, 0), np.int64), np.zeros((3, 0), np.float32))
    assert KnnGraph.from_arrow(empty.to_arrow()).neighbors.shape == (3, 0)
    with pytest.raises(ValueError, match="each of 0..N-1"):
        KnnGraph.from_arrow(pa.table({"row": [0, 0], "neighbors": [[1], [0]], "similarities": [[0.5], [0.5]]}))


def isotropic(n: int, d: int = 128, seed: int = 0) -> np.ndarray:
    return unit(np.random.default_rng(seed).standard_normal((n, d)))


def plain_recall(x: np.ndarray, graph: KnnGraph, rows: np.ndarray) -> tuple[float, np.ndarray]:
    """Reference: share of each sampled row's exact k nearest (by a full sort) that the graph holds,
    and the exact 1-NN similarity minus the graph's."""
    k = graph.k
    shares, gaps = [], []
    for i in rows:
        sims = x[i] @ x.T
        sims[i] = -np.inf
        truth = set(np.argsort(-sims, kind="stable")[:k].tolist())
        shares.append(len(truth & set(graph.neighbors[i].tolist())) / k)
        gaps.append(sims.max() - graph.similarities[i, 0])
    return float(np.mean(shares)), np.array(gaps)


def test_graph_recall_matches_a_plain_reference():
    x = isotropic(4000, d=32, seed=12)
    graph = clustered_knn_graph(x, 10, n_assign=2)  # deliberately poor
    got = graph_recall(x, graph, sample=200, seed=3)
    rows = np.sort(np.random.default_rng(3).choice(len(x), 200, replace=False))
    share, gaps = plain_recall(x, graph, rows)
    assert got["recall_at_k"] == pytest.approx(share, abs=1e-3) and got["recall_at_k"] < 0.9
    assert got["nn_underestimate_max"] == pytest.approx(gaps.max(), abs=1e-4)
    assert got["nn_underestimate_mean"] == pytest.approx(gaps.mean(), abs=1e-4)
    assert got["k"] == 10 and got["sample"] == 200
    exact = graph_recall(x, exact_knn_graph(x, 10), sample=200, seed=3)
    assert exact["recall_at_k"] == 1.0 and exact["nn_underestimate_max"] == 0.0


def test_auto_reaches_the_target_on_isotropic_data():
    x = isotropic(12_000, seed=13)
    graph = knn_graph(x, 10, IndexConfig(kind="auto"), exact_max_rows=1000)
    assert graph.recall["tried"][0]["recall_at_k"] < 0.5  # the default clustered join fails here
    assert graph.recall["recall_at_k"] >= RECALL_TARGET
    rows = np.sort(np.random.default_rng(0).choice(len(x), 100, replace=False))
    assert plain_recall(x, graph, rows)[0] >= RECALL_TARGET


def test_auto_keeps_the_clustered_join_on_clustered_data_and_fixed_kinds_warn(caplog):
    x = clustered(20_000, seed=14)
    graph = knn_graph(x, 10, IndexConfig(kind="auto"), exact_max_rows=1000)
    assert graph.recall["method"] == "clustered" and graph.recall["recall_at_k"] >= RECALL_TARGET
    assert len(graph.recall["tried"]) == 1
    with caplog.at_level("WARNING"):
        fixed = knn_graph(isotropic(5000, d=64, seed=15), 10, IndexConfig(kind="ivf"))
    assert fixed.recall["method"] == "clustered" and fixed.recall["recall_at_k"] < RECALL_TARGET
    assert any("recall@10" in r.getMessage() and "index.kind=auto" in r.getMessage() for r in caplog.records)
    small = knn_graph(x[:500], 5, IndexConfig(kind="auto"))
    assert small.recall["method"] == "exact" and small.recall["recall_at_k"] == 1.0


def test_index_stage_records_the_recall_in_its_marker(tmp_path):
    from enrich_ray.config import Config
    from enrich_ray.pipelines import curate
    from enrich_ray.pipelines.run_folder import RunFolder

    x = clustered(600, d=16, components=6, seed=16)
    run = RunFolder(str(tmp_path / "run"))
    run.loc.fs.makedirs(run.path("embeddings").path, exist_ok=True)
    table = pa.table({
        "image_id": [f"img{i:04d}" for i in range(len(x))],
        "frame_index": pa.array(np.zeros(len(x), np.int32)),
        "source_uri": [f"/data/{i}.png" for i in range(len(x))],
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1]),
        "stage": pa.nulls(len(x), pa.string()),  # result rows, as the embed stage writes them
    })
    run.write_table("embeddings/part-0.parquet", table)
    info = curate._index(run, Config(), runtime=None)  # below index.distributed_min_frames: no Ray tasks
    assert info["recall"]["recall_at_k"] == 1.0 and info["recall"]["k"] == 10 and info["recall"]["method"] == "exact"
    assert info["recall"]["sample"] == 300 and set(info["recall"]) >= {"nn_underestimate_max", "nn_underestimate_mean"}
