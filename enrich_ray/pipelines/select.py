"""`enrich-ray select`: rank an existing embeddings table without the rest of the pipeline."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads

from enrich_ray.config import Config, ConfigError
from enrich_ray.io.fs import StorageError, resolve
from enrich_ray.pipelines.curate import labeled_mask, query_rows
from enrich_ray.schema import FRAME_COLUMNS, frames_and_vectors
from enrich_ray.pipelines.run_folder import RunFolder


def read_embeddings(uri: str, cfg: Config) -> tuple[pd.DataFrame, np.ndarray]:
    """Frame keys and unit-normalised vectors of a Parquet file or folder, sorted by frame key."""
    loc = resolve(uri, cfg.storage)
    if not loc.fs.exists(loc.path):
        raise StorageError(f"embeddings not found: {uri}")
    if loc.fs.isdir(loc.path):
        found = loc.fs.find(loc.path)
        paths = sorted(p for p in found if p.endswith(".parquet"))
        if not paths:
            raise StorageError(f"{uri}: no .parquet file among the folder's {len(found)} file(s); "
                               "expected a run's embeddings/ folder or a Parquet file")
    else:
        paths = [loc.path]
    table = pads.dataset(paths, filesystem=loc.arrow_fs(), format="parquet").to_table()
    for column in ("image_id", "embedding"):
        if column not in table.column_names:
            raise StorageError(f"{uri}: no {column} column (found {', '.join(table.column_names)})")
    if "frame_index" not in table.column_names:
        table = table.append_column("frame_index", pa.array(np.zeros(table.num_rows, np.int32)))
    try:
        frames, emb = frames_and_vectors(table)
    except ValueError as exc:
        raise StorageError(f"{uri}: {exc}") from None
    for column in FRAME_COLUMNS:  # a table from elsewhere may carry no source or group columns
        if column not in frames:
            frames[column] = None
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    return frames, emb / np.where(norms > 0, norms, 1)


def select(embeddings: str, out: str, cfg: Config, ranker: str | None, seed_set: str | None,
           k: int | None) -> tuple[int, str | None]:
    """Rank the embeddings and write manifest.parquet and manifest.csv under `out`; returns the count ranked
    and, under selection.quota, the quota's line (quota.quota_line)."""
    from enrich_ray.selection import rank
    from enrich_ray.selection.manifest import build_manifest
    from enrich_ray.selection.quota import quota_line, quotas_for
    from enrich_ray.selection.seeds import seed_rows

    sel = cfg.selection
    if ranker:
        sel = dataclasses.replace(sel, ranker=ranker)
    if k is not None:
        if k < 0:
            raise ConfigError(f"--k {k}: must be 0 or more (how many frames to rank after the seed set)")
        sel = dataclasses.replace(sel, k=k)
    if seed_set:
        try:
            value = float(seed_set)
        except ValueError:
            sel = dataclasses.replace(sel, seed_manifest=seed_set, seed_count=None, seed_fraction=None)
        else:
            if value <= 0:
                raise ConfigError(f"--seed-set {seed_set}: must be a positive count, a fraction in (0, 1) or a file")
            if value < 1:
                sel = dataclasses.replace(sel, seed_fraction=value, seed_count=None)
            else:
                sel = dataclasses.replace(sel, seed_count=int(value), seed_fraction=None)
    if sel.ranker == "smi":
        if not sel.smi_query:
            raise ConfigError("--ranker smi needs a query set: --set selection.smi_query=FILE, a CSV or Parquet file "
                              "with an image_id column naming the exemplar frames")
        query_loc = resolve(sel.smi_query, cfg.storage)
        if query_loc.fs.isdir(query_loc.path):
            raise ConfigError(f"selection.smi_query {sel.smi_query}: select takes a file of image ids; a folder of "
                              "exemplar images needs an embedder, so rank toward it with `enrich-ray curate`")
    frames, emb = read_embeddings(embeddings, cfg)
    if len(frames) == 0:
        raise StorageError(f"{embeddings} holds no embeddings")
    labeled = labeled_mask(sel.seed_manifest, frames, cfg)
    query = query_rows(sel.smi_query, frames, cfg) if sel.ranker == "smi" else None
    ranking = rank(sel.ranker, emb, seed_rows(len(frames), sel, labeled), sel.k, sel, query=query, progress=True,
                   quotas=quotas_for(frames, sel.quota))
    manifest = build_manifest(ranking, frames, sel, emb)
    run = RunFolder(out, cfg.storage)
    run.loc.fs.makedirs(run.loc.path, exist_ok=True)
    run.write_table("manifest.parquet", manifest)
    run.write_csv("manifest.csv", manifest)
    return len(manifest), quota_line(ranking.info["quota"]) if "quota" in ranking.info else None
