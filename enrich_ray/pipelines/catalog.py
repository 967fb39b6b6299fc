"""The nightly catalog: a folder or s3:// prefix that holds the state across nights.

    catalog.json                  the commit point: model hash, committed nights, index version
    model/                        the frozen β-VAE (trained on the first night, or --model)
    embeddings/night=YYYY-MM-DD/  every committed night's embeddings (frame keys, model_hash)
    evidence/night=YYYY-MM-DD/    every committed night's model-free frame evidence
                                  (analysis.evidence: header facts, pixel hash, appearance
                                  statistics, 16x16 thumbnail; about 0.7 KB a frame)
    index/vN/                     the similarity index over all committed embeddings, in night order
    labeled/*.csv|*.parquet       the labeled set: files with an image_id column, written back by
                                  the labeling tool (any number of files; image ids of any night)
    nights/YYYY-MM-DD/            each night's manifest (full ranking), top.csv (tonight's list),
                                  duplicates, outliers, errors, summary.json, report.html
    _work/YYYY-MM-DD/             a night in progress (resumable); removed after the commit
    _lock                         held while a night runs

A night changes the catalog only when it commits: its files are written first, catalog.json
last, and readers see only the nights that catalog.json lists.
"""
from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pyarrow as pa

from enrich_ray import schema
from enrich_ray.analysis.evidence import evidence_of
from enrich_ray.config import Config
from enrich_ray.io.fs import Location, StorageError
from enrich_ray.io.lock import Lock, LockHeld
from enrich_ray.pipelines.run_folder import RunFolder

CATALOG_FILE = "catalog.json"
LOCK_FILE = "_lock"
EVIDENCE_DIR = "evidence"  # model-free: kept across a reembed


class CatalogBusy(StorageError):
    """Another run holds the catalog."""


class Catalog:
    """The catalog folder: committed state in catalog.json, embeddings partitioned by night."""

    def __init__(self, uri: str, cfg: Config):
        self.run = RunFolder(uri, cfg.storage)
        self.uri = uri
        self.cfg = cfg
        fs, path = self.run.loc.fs, self.run.loc.path
        fs.makedirs(path, exist_ok=True)
        file = self.run.path(CATALOG_FILE).path
        self.state = json.loads(fs.cat_file(file)) if fs.exists(file) else {"nights": [], "model_hash": None, "index": None}
        self.state.setdefault("model", "model")
        self.state.setdefault("embeddings", "embeddings")

    @property
    def nights(self) -> list[str]:
        return [n["night"] for n in self.state["nights"]]

    def acquire(self) -> None:
        """Hold the catalog for this run (io.lock: exclusive on a folder and on S3), or refuse while another holds it."""
        self.lock = Lock(self.run.path(LOCK_FILE), self.cfg.storage.lock_expiry_s)
        try:
            self.lock.acquire()
        except LockHeld as exc:
            raise CatalogBusy(f"catalog {self.uri}: {exc}") from None

    def release(self) -> None:
        """Give the catalog back (LockNotHeld when another run took an expired lock over meanwhile)."""
        self.lock.release()

    def commit(self, night: str, entry: dict, index_version: str | None, model_hash: str) -> None:
        """Make the night visible: catalog.json is rewritten last, in one write."""
        nights = [n for n in self.state["nights"] if n["night"] != night] + [{"night": night, **entry}]
        self.write_state({**self.state, "nights": nights, "model_hash": model_hash, "index": index_version})

    def write_state(self, state: dict) -> None:
        """Replace catalog.json in one move: the catalog's commit point."""
        tmp = f"{CATALOG_FILE}.tmp"
        self.run.write_json(tmp, state)
        self.run.loc.fs.mv(self.run.path(tmp).path, self.run.path(CATALOG_FILE).path)
        self.state = state

    def history(self, exclude: str | None = None) -> tuple[pd.DataFrame, np.ndarray]:
        """Frame keys (with their night) and embeddings of every committed night, in index order."""
        frames, vectors = [], []
        for night in self.nights:
            if night == exclude:
                continue
            table = self.run.read_table(self.partition(night))
            f, e = schema.frames_and_vectors(table)
            frames.append(f.assign(night=night))
            vectors.append(e)
        if not frames:
            return pd.DataFrame(columns=[*schema.FRAME_COLUMNS, "night"]), np.zeros((0, 0), np.float32)
        return pd.concat(frames, ignore_index=True), np.concatenate(vectors)

    def partition(self, night: str) -> str:
        """The folder of a night's embeddings under the current model."""
        return f"{self.state['embeddings']}/night={night}"

    def evidence(self, frames: pd.DataFrame) -> dict:
        """The frame evidence (analysis.evidence) of these committed frames, in their order; a frame of a
        night committed before the catalog kept evidence has unknown facts (None) and NaN arrays."""
        folders = [self.run.path(f"{EVIDENCE_DIR}/night={night}") for night in self.nights]
        parts = [self.run.read_table(f"{EVIDENCE_DIR}/night={night}")
                 for night, folder in zip(self.nights, folders) if folder.fs.exists(folder.path)]
        return evidence_of(pa.concat_tables(parts, promote_options="default") if parts else None, frames)

    def write_night(self, night: str, embeddings: pa.Table, evidence: pa.Table) -> None:
        """Write a night's embeddings (under the current model) and its evidence, before the commit."""
        for folder, table in ((self.partition(night), embeddings), (f"{EVIDENCE_DIR}/night={night}", evidence)):
            self.run.clear([folder])
            self.run.loc.fs.makedirs(self.run.path(folder).path, exist_ok=True)
            self.run.write_table(f"{folder}/part-00000.parquet", table)

    def next_index_version(self) -> str:
        """The name of the index version after the current one."""
        return f"v{int(self.state['index'][1:]) + 1:05d}" if self.state["index"] else "v00001"

    def load_index(self, version: str):
        """A saved index version (index.shards.ShardedIndex)."""
        from enrich_ray.index.shards import ShardedIndex

        return ShardedIndex.load(self.run.path(f"index/{version}").uri(), self.cfg.storage)

    def add_to_index(self, hist_emb: np.ndarray, new_emb: np.ndarray, rebuild: bool) -> str | None:
        """Tonight's embeddings added to the index as a new version (the old one stays until the commit);
        rebuilt from all rows when asked or when there is none yet; None when there is nothing to index."""
        from enrich_ray.index.shards import build_index

        version = self.next_index_version()
        if self.state["index"] and len(hist_emb) and not rebuild:
            index = self.load_index(self.state["index"])
            if len(new_emb):
                index.add(new_emb)
        elif len(new_emb) or len(hist_emb):
            index = build_index(stack(hist_emb, new_emb), self.cfg.index)
        else:
            return None
        self.run.clear([f"index/{version}"])
        index.save(self.run.path(f"index/{version}").uri(), self.cfg.storage)
        return version

    def labeled_ids(self) -> set[str]:
        """Image ids of the labeled set, from every file under labeled/."""
        loc = self.run.path("labeled")
        if not loc.fs.exists(loc.path):
            return set()
        ids: set[str] = set()
        for path in sorted(loc.fs.find(loc.path)):
            with loc.fs.open(path, "rb") as fh:
                if path.endswith(".parquet"):
                    df = pd.read_parquet(fh)
                elif path.endswith(".csv"):
                    df = pd.read_csv(fh, dtype={"image_id": str})
                else:
                    continue
            if "image_id" not in df.columns:
                raise StorageError(f"labeled set file {path} has no image_id column")
            ids |= set(df["image_id"].astype(str))
        return ids


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def stack(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Two embedding matrices one above the other; either may be empty (shape (0, 0))."""
    return second if not len(first) else np.concatenate([first, second]) if len(second) else first


def copy_tree(src: Location, dst: Location) -> None:
    """Copy a model folder file by file (fsspec on both sides)."""
    if not src.fs.exists(src.path):
        raise StorageError(f"--model {src.uri()} not found")
    dst.fs.makedirs(dst.path, exist_ok=True)
    for path in src.fs.find(src.path):
        rel = path[len(src.path):].lstrip("/")
        with dst.fs.open(dst.join(rel).path, "wb") as fh:
            fh.write(src.fs.cat_file(path))
