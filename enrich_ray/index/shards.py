"""The sharded similarity index: contiguous row ranges of the embeddings, one faiss index each.

All IVF shards are clones of one trained, empty template, so they share one coarse quantiser
(trained on a seeded sample) and their results can be merged by similarity. A shard built here
holds rows [first, first + ntotal) and answers with local ids, shifted by `first` at merge time,
so no id map is stored. A shard built by a task from whole embedding files (index.partitioned,
files in any row order) stores its frames' row ids instead (`stored_ids`: IVF keeps ids itself,
flat and HNSW sit in an IndexIDMap); the parts are searched in parallel and merged with `merge_topk`.

Index kinds (IndexConfig.kind):
- 'flat': exact inner product (IndexFlatIP).
- 'ivf': IVF-Flat with nlist coarse cells (IndexConfig.nlist, default about 4*sqrt(N), at most
  one cell per 39 training frames as faiss advises) and IndexConfig.nprobe cells searched.
- 'hnsw': HNSW graph with IndexConfig.hnsw_m links per node, efSearch HNSW_EF_SEARCH.
- 'auto': 'flat' up to EXACT_MAX_ROWS (100,000) frames, where exact search costs a few
  milliseconds a query, 'ivf' beyond.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import faiss
import numpy as np

from enrich_ray.config import IndexConfig, StorageConfig
from enrich_ray.index.knn import MIN_POINTS_PER_CENTROID, KnnGraph, resolve_kind, unit_rows
from enrich_ray.io.fs import resolve

HNSW_EF_SEARCH = 64  # candidates an HNSW search keeps; recall rises with it
MANIFEST = "index.json"


@dataclass
class ShardedIndex:
    """Shards of one similarity index over unit embeddings; ids are row numbers of the embedding table."""

    kind: str
    dim: int
    shard_size: int
    nprobe: int
    template: faiss.Index  # trained and empty: every new shard is a clone of it
    shards: list[faiss.Index] = field(default_factory=list)
    stored_ids: bool = False  # shards answer with the row ids they store, not with local ids from their first row

    @property
    def ntotal(self) -> int:
        return sum(shard.ntotal for shard in self.shards)

    def shard_offsets(self) -> list[int]:
        """The first row id held by each shard (what its local ids are shifted by; 0 with stored ids)."""
        if self.stored_ids:
            return [0] * len(self.shards)
        return np.concatenate([[0], np.cumsum([s.ntotal for s in self.shards])[:-1]]).astype(int).tolist()

    def add(self, embeddings: np.ndarray) -> np.ndarray:
        """Append frames (nightly): they get the next row ids; the coarse quantiser stays as trained."""
        x = self._check(embeddings)
        first = self.ntotal
        start = 0
        while start < len(x):
            if not self.shards or self.shards[-1].ntotal >= self.shard_size:
                self.shards.append(faiss.clone_index(self.template))
            part = x[start : start + self.shard_size - self.shards[-1].ntotal]
            if self.stored_ids:
                self.shards[-1].add_with_ids(part, np.arange(first + start, first + start + len(part)))
            else:
                self.shards[-1].add(part)
            start += len(part)
        return np.arange(first, first + len(x), dtype=np.int64)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k most similar indexed frames of each query: similarities float32 (n, k) descending and
        row ids int64 (n, k), padded with -inf / -1 when the index holds fewer than k frames."""
        q = self._check(queries)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        parts = [search_shard(shard, q, k, self.nprobe, first) for shard, first in zip(self.shards, self.shard_offsets())]
        if not parts:
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        return merge_topk(parts, k)

    def save(self, uri: str, storage: StorageConfig | None = None) -> None:
        """Write the template, every shard (faiss serialised bytes) and a JSON manifest under uri."""
        loc = resolve(uri, storage)
        loc.fs.makedirs(loc.path, exist_ok=True)
        for i, shard in enumerate(self.shards):
            _write_index(loc.fs, loc.join(shard_file(i)).path, shard)
        self.save_manifest(uri, storage, [int(shard.ntotal) for shard in self.shards])

    def save_manifest(self, uri: str, storage: StorageConfig | None, shard_ntotal: list[int]) -> None:
        """Write the template and the manifest of shards shard_file(0, 1, ...) holding shard_ntotal frames
        each (written by save, or by a task each: index.partitioned)."""
        loc = resolve(uri, storage)
        _write_index(loc.fs, loc.join("template.faiss").path, self.template)
        manifest = {
            "kind": self.kind,
            "dim": self.dim,
            "shard_size": self.shard_size,
            "nprobe": self.nprobe,
            "ntotal": int(sum(shard_ntotal)),
            "stored_ids": self.stored_ids,
            "shards": [{"file": shard_file(i), "ntotal": int(m)} for i, m in enumerate(shard_ntotal)],
        }
        with loc.fs.open(loc.join(MANIFEST).path, "w") as f:
            json.dump(manifest, f, indent=2)

    @classmethod
    def load(cls, uri: str, storage: StorageConfig | None = None) -> ShardedIndex:
        """Read an index written by `save`."""
        loc = resolve(uri, storage)
        manifest_path = loc.join(MANIFEST).path
        if not loc.fs.exists(manifest_path):
            raise FileNotFoundError(f"no sharded index at {uri} ({MANIFEST} missing)")
        with loc.fs.open(manifest_path, "r") as f:
            manifest = json.load(f)
        shards = [read_index(loc.fs, loc.join(s["file"]).path) for s in manifest["shards"]]
        for entry, shard in zip(manifest["shards"], shards):
            if shard.ntotal != entry["ntotal"]:
                raise ValueError(f"{uri}/{entry['file']}: holds {shard.ntotal} frames, the manifest says {entry['ntotal']}")
        return cls(
            kind=manifest["kind"],
            dim=manifest["dim"],
            shard_size=manifest["shard_size"],
            nprobe=manifest["nprobe"],
            template=read_index(loc.fs, loc.join("template.faiss").path),
            shards=shards,
            stored_ids=manifest.get("stored_ids", False),
        )

    def _check(self, embeddings: np.ndarray) -> np.ndarray:
        x = unit_rows(embeddings)
        if x.shape[1] != self.dim:
            raise ValueError(f"embeddings have dimension {x.shape[1]}, the index holds dimension {self.dim}")
        return x


def build_index(embeddings: np.ndarray, cfg: IndexConfig, seed: int = 0) -> ShardedIndex:
    """Train (IVF: the shared coarse quantiser, on a seeded sample) and fill a sharded index."""
    x = unit_rows(embeddings)
    n, d = x.shape
    if cfg.shard_size < 1:
        raise ValueError(f"index.shard_size must be positive, got {cfg.shard_size}")
    kind = resolve_kind(cfg.kind, n)
    rows = ivf_train_rows(n, cfg, seed)
    template = index_template(kind, x if len(rows) == n else x[rows], cfg, n, seed)
    index = ShardedIndex(kind=kind, dim=d, shard_size=cfg.shard_size, nprobe=cfg.nprobe, template=template)
    index.add(x)
    return index


def ivf_train_rows(n: int, cfg: IndexConfig, seed: int = 0) -> np.ndarray:
    """The seeded, sorted rows an IVF quantiser trains on: all n, or cfg.train_sample of them."""
    if n <= cfg.train_sample:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, cfg.train_sample, replace=False))


def index_template(kind: str, sample: np.ndarray, cfg: IndexConfig, n: int, seed: int = 0, stored_ids: bool = False) -> faiss.Index:
    """The trained, empty index every shard is cloned from, for n frames: IVF's coarse quantiser
    trained on `sample` (ivf_train_rows of the frames); with stored_ids flat and HNSW in an IndexIDMap."""
    d = sample.shape[1]
    if kind == "ivf":
        return _trained_ivf(sample, cfg, seed, n)
    if kind == "flat":
        template = faiss.IndexFlatIP(d)
    else:
        template = faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        template.hnsw.efSearch = HNSW_EF_SEARCH
    return faiss.IndexIDMap(template) if stored_ids else template


def _trained_ivf(sample: np.ndarray, cfg: IndexConfig, seed: int, n: int) -> faiss.Index:
    """An empty IVF-Flat for n frames whose coarse quantiser is trained on the sample."""
    d = sample.shape[1]
    if len(sample) == 0:
        raise ValueError("an IVF index needs at least one frame to train its coarse quantiser")
    nlist = cfg.nlist or round(4 * math.sqrt(n))
    nlist = max(1, min(nlist, len(sample) // MIN_POINTS_PER_CENTROID))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.train(sample)
    return index


def search_shard(shard: faiss.Index, queries: np.ndarray, k: int, nprobe: int, first: int) -> tuple[np.ndarray, np.ndarray]:
    """One shard's top-k, with global row ids (local id + the shard's first row) and -inf / -1 padding."""
    if isinstance(shard, faiss.IndexIVF):
        shard.nprobe = nprobe
    sims, ids = shard.search(queries, k)
    missing = ids < 0
    sims[missing] = -np.inf
    ids = np.where(missing, -1, ids + first)
    return sims.astype(np.float32), ids.astype(np.int64)


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard (similarities, ids) results into the overall top-k, ties to the lower id."""
    sims = np.concatenate([p[0] for p in parts], axis=1)
    ids = np.concatenate([p[1] for p in parts], axis=1)
    order = np.lexsort((np.where(ids < 0, np.iinfo(np.int64).max, ids), -sims), axis=1)[:, :k]
    return np.take_along_axis(sims, order, axis=1), np.take_along_axis(ids, order, axis=1)


def shard_file(i: int) -> str:
    """The file name of shard i under an index's folder."""
    return f"shard-{i:05d}.faiss"


def _write_index(fs, path: str, index: faiss.Index) -> None:
    with fs.open(path, "wb") as f:
        f.write(faiss.serialize_index(index).tobytes())


def read_index(fs, path: str) -> faiss.Index:
    """A faiss index from the serialised bytes at path on fs."""
    with fs.open(path, "rb") as f:
        return faiss.deserialize_index(np.frombuffer(f.read(), dtype=np.uint8))


def later_rows_graph(index: ShardedIndex, embeddings: np.ndarray, first_row: int, k: int) -> KnnGraph:
    """The kNN graph of rows first_row on (a night's frames, already in `index` at their rows) among every
    row of the index; earlier rows keep no edges (-1, -inf)."""
    n = len(embeddings)
    neighbors = np.full((n, k), -1, np.int64)
    sims = np.full((n, k), -np.inf, np.float32)
    if n > first_row and k:
        s, ids = index.search(embeddings[first_row:], k + 1)
        for r in range(n - first_row):
            keep = ids[r] != first_row + r
            neighbors[first_row + r] = ids[r][keep][:k]
            sims[first_row + r] = s[r][keep][:k]
    return KnnGraph(neighbors, sims)
