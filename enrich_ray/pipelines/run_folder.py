"""A run folder with per-stage completion markers, so a rerun resumes at the first incomplete stage.

A stage is complete only when its marker is written, last, after all its outputs. Before a
stage runs, whatever it left behind without a marker is removed, so partial output is never
mistaken for complete. The run remembers the fingerprint of the config that made it: a rerun
with another config is refused rather than silently mixing outputs.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from enrich_ray.config import Config, ConfigError, StorageConfig, config_dict
from enrich_ray.io.fs import Location, resolve

MARKERS = "_stages"
RUN_FILE = "_run.json"


def fingerprint(cfg: Config, *, ignore: tuple[str, ...] = ("runtime", "storage", "report", "evaluate")) -> str:
    """SHA-256 of the settings that change outputs (not where Ray runs or how the page looks)."""
    data = {k: v for k, v in config_dict(cfg, redact=True).items() if k not in ignore}
    data["embed"] = {k: v for k, v in data["embed"].items() if k not in ("num_actors", "fail_after_batches")}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


class RunFolder:
    """Outputs of one run under one URI, and the markers that say which stages are complete."""

    def __init__(self, uri: str, storage: StorageConfig | None = None):
        self.uri = uri
        self.storage = storage
        self.loc: Location = resolve(uri, storage)

    def path(self, name: str) -> Location:
        """A file or folder of the run."""
        return self.loc.join(name)

    def open_run(self, cfg: Config, force: bool) -> None:
        """Create the folder, or check that an existing one was made with the same config."""
        fs = self.loc.fs
        run_file = self.path(RUN_FILE).path
        fp = fingerprint(cfg)
        if fs.exists(run_file) and not force:
            previous = json.loads(fs.cat_file(run_file))
            if previous.get("fingerprint") != fp:
                raise ConfigError(
                    f"{self.uri} holds a run made with other settings; rerun with --force to recompute it, "
                    "or choose another --out"
                )
            return
        if force and fs.exists(self.path(MARKERS).path):
            fs.rm(self.path(MARKERS).path, recursive=True)
        fs.makedirs(self.loc.path, exist_ok=True)
        self.write_json(RUN_FILE, {"fingerprint": fp, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})

    def is_done(self, stage: str) -> bool:
        """True when the stage's marker exists."""
        return self.loc.fs.exists(self.path(f"{MARKERS}/{stage}.done").path)

    def marker(self, stage: str) -> dict:
        """What the stage recorded when it completed."""
        return json.loads(self.loc.fs.cat_file(self.path(f"{MARKERS}/{stage}.done").path))

    def mark(self, stage: str, info: dict[str, Any]) -> None:
        """Write the stage's marker: the last write of a stage."""
        self.loc.fs.makedirs(self.path(MARKERS).path, exist_ok=True)
        self.write_json(f"{MARKERS}/{stage}.done", info)

    def clear(self, names: list[str]) -> None:
        """Remove what an incomplete stage may have left."""
        for name in names:
            p = self.path(name).path
            if self.loc.fs.exists(p):
                self.loc.fs.rm(p, recursive=True)

    def write_json(self, name: str, data: Any) -> None:
        """Write JSON beside the outputs, whole or not at all."""
        self.write_bytes(name, json.dumps(data, indent=2, default=str).encode())

    def read_json(self, name: str) -> Any:
        """Read JSON written by write_json."""
        return json.loads(self.loc.fs.cat_file(self.path(name).path))

    def write_table(self, name: str, table: pa.Table | pd.DataFrame) -> None:
        """Write one Parquet file, whole or not at all."""
        if isinstance(table, pd.DataFrame):
            table = pa.Table.from_pandas(table, preserve_index=False)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        self.write_bytes(name, sink.getvalue().to_pybytes())

    def write_csv(self, name: str, df: pd.DataFrame) -> None:
        """Write a table as CSV, for people and spreadsheets."""
        self.write_bytes(name, df.to_csv(index=False).encode())

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write a file's bytes, whole or not at all (`Location.write_bytes`)."""
        self.path(name).write_bytes(data)

    def read_table(self, name: str, columns: list[str] | None = None, filter=None) -> pa.Table:
        """Read a Parquet file or folder of the run (only the columns and rows asked for)."""
        loc = self.path(name)
        ds = pads.dataset(loc.path, filesystem=loc.arrow_fs(), format="parquet")
        return ds.to_table(columns=columns, filter=filter)

    def scan(self, name: str, columns: list[str], filter=None, batch_rows: int = 8192) -> Iterator[pa.Table]:
        """Read a Parquet file or folder of the run batch by batch, so a large column never sits in memory whole."""
        loc = self.path(name)
        ds = pads.dataset(loc.path, filesystem=loc.arrow_fs(), format="parquet")
        for batch in ds.to_batches(columns=columns, filter=filter, batch_size=batch_rows):
            yield pa.Table.from_batches([batch])

    def files(self, name: str) -> list[str]:
        """URIs of the Parquet files in a folder of the run."""
        loc = self.path(name)
        paths = sorted(p for p in loc.fs.find(loc.path) if p.endswith(".parquet"))
        return [Location(loc.fs, p, loc.protocol).uri() for p in paths]
