"""The kNN graph and the similarity index of an archive too large for one process, built in parts.

The embeddings stay where the embed stage wrote them: Parquet files on local disk or an object
store (`VectorFile`: a file's URI and the frame row of each of its rows). Every step is a plain
function of a few files that returns small numpy results, run by the `map` the caller passes:
`runtime.map_tasks` (one Ray task a call) or `local_map` (a plain loop). The caller never reads an
embedding beyond the samples below; the graph comes out as Parquet parts.

The graph (`build_graph`) is index.knn's clustered join split by groups of clusters:

1. train: the seeded sample of frames knn.train_centroids would take (knn.train_rows), read file
   by file, trains the coarse centroids in one task; k-means over the centroids then puts them in
   groups of neighbouring clusters (about GROUP_ROWS frames a group), so the n_assign nearest
   clusters of a frame mostly fall in one group.
2. assign, a task per file: each frame's n_assign nearest centroids (knn.assign_clusters); the
   file's frames written again, once for each group their clusters touch, one row group per
   group, under a scratch folder.
3. join, a task per group: its row groups of every file; for each of its clusters the frames whose
   nearest centroid it is against every frame in its list (knn.join_clusters), written as one
   Parquet part of the graph. Rows left short (fewer than min(k, N-1) others in their lists) and the
   rows of the recall sample come back.
4. complete and measure: the short rows' and the recall sample's exact neighbours by a scan (a
   task per file, knn.exact_topk, merged by shards.merge_topk), the short rows written as one more
   part, the recall as knn.graph_recall measures it (same seeded sample). With index.kind 'auto'
   a join below knn.RECALL_TARGET is redone with WIDEN_FACTOR times the lists per frame, as
   knn.knn_graph does; once that would scan EXACT_SHARE of the clusters, or for kind 'flat' (and
   'auto' up to EXACT_GRAPH_MAX_ROWS frames), every file's rows get their exact rows by the scan.

Given the same centroids (a k-means of one sample) the parts hold the rows clustered_knn_graph
returns; the tests check it on the shared Ray cluster. The index (`build_index_parts`): the
template (IVF: the coarse quantiser trained on shards.ivf_train_rows, in a task), then a task per
shard of whole files, about shard_size frames, each adding its frames with their row ids
(ShardedIndex.stored_ids) and writing its shard; `search_index_parts` searches the shards in
parallel, a task each, and merges their top-k.
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from enrich_ray.config import IndexConfig, StorageConfig
from enrich_ray.index.knn import (
    EXACT_GRAPH_MAX_ROWS, EXACT_SHARE, GRAPH_ASSIGN, RECALL_SAMPLE, RECALL_TARGET, WIDEN_FACTOR, KnnGraph,
    assign_clusters, exact_topk, graph_clusters, join_clusters, recall_rows, resolve_kind, sampled_recall,
    short_rows, train_centroids, train_rows, unit_rows,
)
from enrich_ray.index.shards import (
    MANIFEST, ShardedIndex, index_template, ivf_train_rows, merge_topk, read_index, search_shard, shard_file,
)
from enrich_ray.io.fs import resolve

log = logging.getLogger(__name__)

# Frames whose nearest cluster falls in one join task's group, about. The task reads these and every other
# frame with a list among its clusters: on tests/benchmarks/bench_distributed.py --n 1000000 nearly every
# frame (build_graph's group_frames_mean), so a task's memory grows with the archive, not with this.
GROUP_ROWS = 250_000
Map = Callable[[Callable, Sequence[tuple]], list]


def local_map(fn: Callable, calls: Sequence[tuple]) -> list:
    """fn(*call) for every call, one after the other in this process."""
    return [fn(*call) for call in calls]


@dataclass(frozen=True)
class VectorFile:
    """A Parquet file with an `embedding` column (fixed-size lists of float32): rows[i] is the frame
    row of its i-th row, -1 for a row that is not a frame (an error row of the embed stage)."""

    uri: str
    rows: np.ndarray

    @property
    def frames(self) -> int:
        return int((self.rows >= 0).sum())


def read_vectors(src: VectorFile, storage: StorageConfig | None, wanted: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The file's frames (only those in the sorted `wanted` rows, if given): their rows and unit embeddings."""
    keep = np.flatnonzero(src.rows >= 0) if wanted is None else np.flatnonzero(np.isin(src.rows, wanted))
    loc = resolve(src.uri, storage)
    with loc.fs.open(loc.path, "rb") as fh:
        column = pq.read_table(fh, columns=["embedding"]).column("embedding")
    if len(column) != len(src.rows):
        raise ValueError(f"{src.uri}: {len(column)} rows, {len(src.rows)} row ids given")
    if len(keep) < len(column):
        column = column.take(keep)
    values = column.combine_chunks()
    d = values.type.list_size
    x = values.flatten().to_numpy(zero_copy_only=False, writable=True).reshape(len(keep), d)
    return src.rows[keep], unit_rows(x) if len(keep) else np.zeros((0, d), np.float32)


def read_sample(files: Sequence[VectorFile], rows: np.ndarray, storage: StorageConfig | None, map: Map) -> np.ndarray:
    """The unit embeddings of the sorted frame rows `rows`, in that order, read by a task per file holding any."""
    calls = [(f, storage, rows) for f in files if np.isin(f.rows, rows).any()]
    parts = map(read_vectors, calls)
    found = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    if not np.array_equal(np.sort(found), rows):
        raise ValueError(f"the files hold {len(found)} of the {len(rows)} sampled rows")
    return np.concatenate([p[1] for p in parts])[np.argsort(found, kind="stable")]


def _frames(files: Sequence[VectorFile]) -> int:
    n = sum(f.frames for f in files)
    rows = np.concatenate([f.rows[f.rows >= 0] for f in files]) if files else np.zeros(0, np.int64)
    if not np.array_equal(np.sort(rows), np.arange(n)):
        raise ValueError("the files' row ids must hold each of 0..N-1 exactly once")
    return n


# --- the graph -----------------------------------------------------------------------------------


def train_groups(sample: np.ndarray, n_clusters: int, n_groups: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The coarse centroids (knn.train_centroids on the whole sample) and each one's group: a
    spherical k-means of the centroids into n_groups, so neighbouring clusters share a group."""
    centroids = train_centroids(sample, n_clusters, len(sample), seed)
    n_groups = max(1, min(n_groups, len(centroids)))
    if n_groups == 1:
        return centroids, np.zeros(len(centroids), np.int32)
    kmeans = faiss.Kmeans(centroids.shape[1], n_groups, niter=20, spherical=True, seed=seed, min_points_per_centroid=1)
    kmeans.train(centroids)
    _, group = kmeans.index.search(centroids, 1)
    return centroids, group[:, 0].astype(np.int32)


def assign_file(src: VectorFile, centroids: np.ndarray, group_of: np.ndarray, n_assign: int, out: str,
                storage: StorageConfig | None) -> list[int]:
    """Step 2 for one file: its frames with their n_assign nearest clusters, written to `out` once per
    group those clusters touch (columns row, clusters, embedding), a row group each; returns the
    groups in row-group order."""
    rows, x = read_vectors(src, storage)
    assign = assign_clusters(x, centroids, n_assign, workers=1).astype(np.int32)
    touched = np.unique(group_of[assign] + len(centroids) * np.arange(len(x))[:, None].astype(np.int64))
    member, group = touched // len(centroids), (touched % len(centroids)).astype(np.int64)
    order = np.lexsort((member, group))
    member, group = member[order], group[order]
    groups, starts = np.unique(group, return_index=True)
    sink = pa.BufferOutputStream()
    table_schema = pa.schema([("row", pa.int64()), ("clusters", pa.list_(pa.int32(), assign.shape[1])),
                              ("embedding", pa.list_(pa.float32(), x.shape[1]))])
    with pq.ParquetWriter(sink, table_schema, compression="none") as writer:
        for at, end in zip(starts, [*starts[1:], len(member)]):
            take = member[at:end]
            writer.write_table(pa.table({
                "row": pa.array(rows[take]),
                "clusters": pa.FixedSizeListArray.from_arrays(pa.array(assign[take].ravel()), assign.shape[1]),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x[take].ravel()), x.shape[1]),
            }, schema=table_schema), row_group_size=len(take))
    resolve(out, storage).write_bytes(sink.getvalue().to_pybytes())
    return groups.tolist()


def join_group(parts: Sequence[tuple[str, int]], clusters: np.ndarray, k: int, n: int, out: str, watch: np.ndarray,
               storage: StorageConfig | None) -> tuple[np.ndarray, KnnGraph, np.ndarray, int]:
    """Step 3 for one group: its row groups (file URI, row group) joined cluster by cluster; the
    complete rows written to `out` as a graph part. Returns the short rows, the graph rows of the
    frames in `watch` (sorted) that it wrote with their frame rows, and how many frames it read
    (the frames of its clusters and every frame in their lists: what its memory grows with)."""
    tables = []
    for uri, row_group in parts:
        loc = resolve(uri, storage)
        with loc.fs.open(loc.path, "rb") as fh:
            tables.append(pq.ParquetFile(fh).read_row_group(row_group))
    table = pa.concat_tables(tables).combine_chunks()
    del tables
    rows = table.column("row").to_numpy()
    order = np.argsort(rows, kind="stable")
    rows = rows[order]
    assign = table.column("clusters").combine_chunks().flatten().to_numpy().reshape(len(rows), -1)[order].astype(np.int64)
    x = np.ascontiguousarray(table.column("embedding").combine_chunks().flatten().to_numpy().reshape(len(rows), -1)[order])
    del table
    local, sims = join_clusters(x, assign, k, clusters, workers=1)
    query = np.flatnonzero(np.isin(assign[:, 0], clusters))
    local, sims = local[query], sims[query]
    neighbors = np.where(local >= 0, rows[np.maximum(local, 0)], -1)
    short = short_rows(neighbors, n)
    done = np.setdiff1d(np.arange(len(query)), short)
    graph = KnnGraph(neighbors[done], sims[done])
    done_rows = rows[query][done]
    sink = pa.BufferOutputStream()
    pq.write_table(graph.to_arrow(done_rows), sink)
    resolve(out, storage).write_bytes(sink.getvalue().to_pybytes())
    seen = np.flatnonzero(np.isin(done_rows, watch))
    return rows[query][short], KnnGraph(graph.neighbors[seen], graph.similarities[seen]), done_rows[seen], len(rows)


def scan_file(src: VectorFile, queries: np.ndarray, query_ids: np.ndarray, k: int, storage: StorageConfig | None) -> tuple[np.ndarray, np.ndarray]:
    """Exact search of one file: each query's top-k among the file's frames, its own frame left out."""
    rows, x = read_vectors(src, storage)
    return exact_topk(queries, np.arange(len(queries)), query_ids, x, rows, k)


def exact_rows(files: Sequence[VectorFile], queries: np.ndarray, query_ids: np.ndarray, k: int,
               storage: StorageConfig | None, map: Map) -> KnnGraph:
    """The exact graph rows of the query frames by a scan of every file, a task a file, top-k merged."""
    parts = map(scan_file, [(f, queries, query_ids, k, storage) for f in files if f.frames])
    sims, ids = merge_topk(parts, k)
    return KnnGraph(ids, sims)


def exact_file(src: VectorFile, files: Sequence[VectorFile], k: int, out: str, storage: StorageConfig | None) -> None:
    """The exact graph rows of one file's frames against every file (the exact graph, file by file), as a part."""
    rows, x = read_vectors(src, storage)
    graph = exact_rows(files, x, rows, k, storage, local_map)
    sink = pa.BufferOutputStream()
    pq.write_table(graph.to_arrow(rows), sink)
    resolve(out, storage).write_bytes(sink.getvalue().to_pybytes())


def build_graph(files: Sequence[VectorFile], k: int, out: str, cfg: IndexConfig, storage: StorageConfig | None = None,
                map: Map = local_map, group_rows: int = GROUP_ROWS, recall_sample: int = RECALL_SAMPLE,
                exact_max_rows: int = EXACT_GRAPH_MAX_ROWS, seed: int = 0) -> dict:
    """The kNN graph of the files' frames as Parquet parts under `out` (part-*.parquet, columns of
    KnnGraph.to_arrow, any row order; read back with KnnGraph.from_arrow), by the steps of the module
    docstring. Returns the recall figures (knn.knn_graph's graph.recall); for a join also the rows
    completed by the exact scan (short_rows) and the frames a join task read, at most and on average
    (group_frames_max, group_frames_mean)."""
    n = _frames(files)
    loc = resolve(out, storage)
    loc.fs.makedirs(loc.path, exist_ok=True)
    watch = recall_rows(n, recall_sample, seed)
    kind = resolve_kind(cfg.kind, n)
    if kind == "flat" and (cfg.kind == "flat" or n <= exact_max_rows):
        return {**_exact_graph(files, k, out, watch, storage, map, seed), "method": "exact"}
    n_clusters = graph_clusters(n)
    sample = read_sample(files, train_rows(n, n_clusters, cfg.train_sample, seed), storage, map)
    n_groups = math.ceil(n / group_rows)
    centroids, group_of = map(train_groups, [(sample, n_clusters, n_groups, seed)])[0]
    del sample
    n_assign = GRAPH_ASSIGN
    tried = []
    while True:
        measured = _join(files, centroids, group_of, n_assign, k, n, out, watch, storage, map, seed)
        tried.append({"n_assign": min(n_assign, n_clusters), "recall_at_k": measured["recall_at_k"]})
        if measured["recall_at_k"] >= RECALL_TARGET or cfg.kind != "auto":
            break
        n_assign *= WIDEN_FACTOR
        loc.fs.rm(loc.path, recursive=True)
        loc.fs.makedirs(loc.path, exist_ok=True)
        if n_assign >= EXACT_SHARE * n_clusters:
            log.info("index: clustered kNN graph recall@%d %.3f < %.2f; building the exact graph", k, measured["recall_at_k"], RECALL_TARGET)
            exact = _exact_graph(files, k, out, watch, storage, map, seed)
            return {**exact, "method": "exact", "clusters": n_clusters, "tried": tried}
        log.info("index: clustered kNN graph recall@%d %.3f < %.2f; widening to %d cluster lists per frame", k, measured["recall_at_k"], RECALL_TARGET, n_assign)
    if measured["recall_at_k"] < RECALL_TARGET:
        log.warning("index: the kNN graph's recall@%d is %.3f (< %.2f) on %d sampled frames", k, measured["recall_at_k"], RECALL_TARGET, measured["sample"])
    return {**measured, "method": "clustered", "clusters": n_clusters, "groups": int(group_of.max()) + 1,
            "n_assign": tried[-1]["n_assign"], "tried": tried}


def _join(files, centroids, group_of, n_assign, k, n, out, watch, storage, map, seed) -> dict:
    """Steps 2 to 4 at n_assign lists per frame; the recall figures."""
    scratch = resolve(out, storage).join("_assign")
    scratch.fs.makedirs(scratch.path, exist_ok=True)
    uris = [scratch.join(f"part-{i:05d}.parquet").uri() for i in range(len(files))]
    present = map(assign_file, [(f, centroids, group_of, n_assign, u, storage) for f, u in zip(files, uris)])
    clusters_of = {g: np.flatnonzero(group_of == g) for g in range(int(group_of.max()) + 1)}
    parts_of: dict[int, list[tuple[str, int]]] = {}
    for uri, groups in zip(uris, present):
        for row_group, g in enumerate(groups):
            parts_of.setdefault(g, []).append((uri, row_group))
    done = map(join_group, [(parts_of[g], clusters_of[g], k, n, resolve(out, storage).join(f"part-{g:05d}.parquet").uri(), watch, storage)
                            for g in sorted(parts_of)])
    scratch.fs.rm(scratch.path, recursive=True)
    short = np.sort(np.concatenate([d[0] for d in done]))
    asked = np.union1d(short, watch)
    exact = exact_rows(files, read_sample(files, asked, storage, map), asked, k, storage, map)
    if short.size:
        at = np.searchsorted(asked, short)
        _write_part(KnnGraph(exact.neighbors[at], exact.similarities[at]).to_arrow(short),
                    resolve(out, storage).join("part-short.parquet").uri(), storage)
    # The sample's graph rows as written: by a join task, else (a short row) the exact row just written.
    at = np.searchsorted(asked, watch)
    truth = KnnGraph(exact.neighbors[at], exact.similarities[at])
    neighbors, sims = truth.neighbors.copy(), truth.similarities.copy()
    for _, joined, joined_rows, _ in done:
        pos = np.searchsorted(watch, joined_rows)
        neighbors[pos], sims[pos] = joined.neighbors, joined.similarities
    read = [d[3] for d in done]
    return {**sampled_recall(truth, KnnGraph(neighbors, sims), seed), "short_rows": int(short.size),
            "group_frames_max": int(max(read)), "group_frames_mean": round(float(np.mean(read)))}


def _exact_graph(files, k, out, watch, storage, map, seed) -> dict:
    """Every file's exact rows as a part; the recall figures (1 by construction, measured as for a join)."""
    parts = [resolve(out, storage).join(f"part-{i:05d}.parquet").uri() for i in range(len(files))]
    map(exact_file, [(f, files, k, u, storage) for f, u in zip(files, parts) if f.frames])
    exact = exact_rows(files, read_sample(files, watch, storage, map), watch, k, storage, map)
    return sampled_recall(exact, read_graph(out, storage, watch), seed)


def _write_part(table: pa.Table, uri: str, storage: StorageConfig | None) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    resolve(uri, storage).write_bytes(sink.getvalue().to_pybytes())


def read_graph(out: str, storage: StorageConfig | None = None, rows: np.ndarray | None = None) -> KnnGraph:
    """The graph build_graph wrote under `out` (only the sorted frame rows `rows`, in that order, if given)."""
    loc = resolve(out, storage)
    dataset = pads.dataset(loc.path, filesystem=loc.arrow_fs(), format="parquet")
    table = dataset.to_table(filter=None if rows is None else pc.field("row").isin(pa.array(rows, pa.int64())))
    if rows is not None:  # each frame's place in `rows`, so from_arrow orders them as asked
        at = np.searchsorted(rows, table.column("row").to_numpy())
        table = table.set_column(table.schema.get_field_index("row"), "row", pa.array(at, pa.int64()))
    return KnnGraph.from_arrow(table)


# --- the index -----------------------------------------------------------------------------------


def _template(kind: str, sample: np.ndarray, cfg: IndexConfig, n: int, seed: int) -> np.ndarray:
    """shards.index_template with stored ids, serialised (faiss objects do not travel between processes)."""
    return faiss.serialize_index(index_template(kind, sample, cfg, n, seed, stored_ids=True))


def build_shard(files: Sequence[VectorFile], template: np.ndarray, out: str, storage: StorageConfig | None) -> int:
    """One shard: the files' frames added to a copy of the template with their row ids, written to `out`; its size."""
    shard = faiss.deserialize_index(template)
    for src in files:
        rows, x = read_vectors(src, storage)
        shard.add_with_ids(x, rows)
    resolve(out, storage).write_bytes(faiss.serialize_index(shard).tobytes())
    return int(shard.ntotal)


def build_index_parts(files: Sequence[VectorFile], cfg: IndexConfig, out: str, storage: StorageConfig | None = None,
                      map: Map = local_map, seed: int = 0) -> ShardedIndex:
    """The sharded index of the files' frames under `out` (ShardedIndex.load reads it), its shards
    built by a task each from whole files, about cfg.shard_size frames a shard; returns it without shards."""
    n = _frames(files)
    kind = resolve_kind(cfg.kind, n)
    sample = read_sample(files, ivf_train_rows(n, cfg, seed) if kind == "ivf" else np.arange(min(n, 1)), storage, map)
    template = map(_template, [(kind, sample, cfg, n, seed)])[0]
    loc = resolve(out, storage)
    loc.fs.makedirs(loc.path, exist_ok=True)
    shards: list[list[VectorFile]] = [[]]
    for src in files:
        if sum(f.frames for f in shards[-1]) >= cfg.shard_size:
            shards.append([])
        shards[-1].append(src)
    sizes = map(build_shard, [(part, template, loc.join(shard_file(i)).uri(), storage) for i, part in enumerate(shards)])
    index = ShardedIndex(kind=kind, dim=sample.shape[1], shard_size=cfg.shard_size, nprobe=cfg.nprobe,
                         template=faiss.deserialize_index(template), stored_ids=True)
    index.save_manifest(out, storage, sizes)
    return index


def search_file(uri: str, queries: np.ndarray, k: int, nprobe: int, first: int, storage: StorageConfig | None) -> tuple[np.ndarray, np.ndarray]:
    """One shard's top-k of the queries (shards.search_shard), read from its file."""
    loc = resolve(uri, storage)
    return search_shard(read_index(loc.fs, loc.path), queries, k, nprobe, first)


def search_index_parts(uri: str, queries: np.ndarray, k: int, storage: StorageConfig | None = None,
                       map: Map = local_map) -> tuple[np.ndarray, np.ndarray]:
    """ShardedIndex.search of a saved index, a task a shard, each reading its own shard: similarities and row ids."""
    loc = resolve(uri, storage)
    manifest = json.loads(loc.fs.cat_file(loc.join(MANIFEST).path))
    q = unit_rows(queries)
    sizes = [s["ntotal"] for s in manifest["shards"]]
    firsts = [0] * len(sizes) if manifest.get("stored_ids") else np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()
    parts = map(search_file, [(loc.join(s["file"]).uri(), q, k, manifest["nprobe"], first, storage)
                              for s, first in zip(manifest["shards"], firsts)])
    return merge_topk(parts, k)
