"""Which frames an export sends: a curate run's ranking or a nightly night's list, and their files' bytes.

A curate run folder names its archive in summary.json (run.archive); a nightly night folder
(CATALOG/nights/NIGHT) is found in the catalog's catalog.json, whose entry for the night names the
archive it read. By default an export sends what the run asks to label first: a curate run's
frames up to the report's suggested budget (the whole ranking where there is no coverage curve),
a night's top.csv. `--top N` takes the first N of the ranking instead.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass

import pandas as pd
import pyarrow.compute as pc

from enrich_ray.config import ConfigError, StorageConfig
from enrich_ray.io.fs import Location, StorageError
from enrich_ray.io.pack import archive_table
from enrich_ray.pipelines.catalog import CATALOG_FILE
from enrich_ray.pipelines.run_folder import RunFolder
from enrich_ray.report import plots
from enrich_ray.report.plots import manifest_coverage, suggested_budget
from enrich_ray.schema import FRAME_KEYS
from enrich_ray.selection.manifest import KEY_COLUMNS

SUMMARY = "summary.json"
MANIFEST = "manifest.parquet"
NIGHT_LIST = "top.csv"
# Manifest columns an export reads; a run written before one of them existed gets it as nulls.
JUDGMENTS = ["duplicate_group", "outlier_flag"]


@dataclass
class Selection:
    """The manifest rows to send, in the order to label, and where their files are."""

    rows: pd.DataFrame
    archive: str
    listed: int  # how many frames the run's own list holds (the default selection)
    list_name: str  # that list, in words


def read_selection(run: str, top: int | None, storage: StorageConfig | None) -> Selection:
    """The first `top` frames of a curate run's ranking or a night's (default: the run's own list)."""
    if top is not None and top < 1:
        raise ConfigError(f"--top {top}: expected at least 1 frame")
    folder = RunFolder(run, storage)
    for name in (SUMMARY, MANIFEST):
        if not _exists(folder.path(name)):
            raise StorageError(f"{run} is not a finished curate run or nightly night folder: it has no {name}")
    summary = folder.read_json(SUMMARY)
    manifest = folder.read_table(MANIFEST).to_pandas().sort_values("rank", kind="stable")
    manifest = manifest.reindex(columns=[*manifest.columns, *(c for c in [*KEY_COLUMNS, *JUDGMENTS] if c not in manifest)])
    if not len(manifest):
        raise StorageError(f"{run} ranked no frame: there is nothing to export")
    if "night" in summary:
        archive = night_archive(folder, str(summary["night"]))
        listed = pd.read_csv(io.BytesIO(folder.path(NIGHT_LIST).fs.cat_file(folder.path(NIGHT_LIST).path)),
                             usecols=FRAME_KEYS, dtype={"image_id": str})
        on_list = listed.merge(manifest, on=FRAME_KEYS, how="inner")
        rest = manifest[~manifest["is_seed"] & ~_keyed(manifest).isin(_keyed(on_list))]
        candidates, default, name = pd.concat([on_list, rest], ignore_index=True), len(on_list), f"the night's {NIGHT_LIST}"
    else:
        archive = summary["run"]["archive"]
        candidates, default, name = manifest, budget_frames(manifest), "the report's suggested budget"
    rows = candidates.head(default if top is None else top).reset_index(drop=True)
    return Selection(rows, archive, default, name)


def budget_frames(manifest: pd.DataFrame) -> int:
    """How many frames the report's suggested budget asks to label first (report.plots.suggested_budget on the
    coverage curve, as the report reads it); the whole ranking when the ranker recorded no coverage."""
    curve = manifest_coverage(manifest)
    return plots.budget_frames(manifest, suggested_budget(*curve) if curve is not None else None)


def night_archive(night: RunFolder, name: str) -> str:
    """The archive a committed night read, from catalog.json two folders above CATALOG/nights/NIGHT."""
    parts = night.loc.path.rstrip("/").rsplit("/", 2)
    if len(parts) != 3 or parts[1] != "nights":
        raise StorageError(f"{night.uri}: a nightly night folder lies at CATALOG/nights/{name}")
    file = Location(night.loc.fs, f"{parts[0]}/{CATALOG_FILE}", night.loc.protocol)
    if not _exists(file):
        raise StorageError(f"{night.uri}: no {CATALOG_FILE} in the catalog above it ({parts[0]})")
    entries = [n for n in json.loads(file.fs.cat_file(file.path))["nights"] if n["night"] == name]
    if not entries:
        raise StorageError(f"{night.uri}: night {name} is not committed in its catalog's {CATALOG_FILE}")
    if "archive" not in entries[0]:
        raise StorageError(f"{night.uri}: the catalog recorded no archive for night {name}, so its files cannot be read")
    return entries[0]["archive"]


def archive_files(archive: str, image_ids: list[str], storage: StorageConfig | None) -> pd.DataFrame:
    """image_id, format and data (the file's bytes) of these images, read from the archive."""
    table = archive_table(archive, ["image_id", "format", "data"], storage, filter=pc.field("image_id").isin(sorted(set(image_ids))))
    return table.to_pandas().drop_duplicates("image_id")


def _keyed(df: pd.DataFrame) -> pd.Series:
    return df["image_id"].astype(str) + "/" + df["frame_index"].astype(str)


def _exists(loc: Location) -> bool:
    return loc.fs.exists(loc.path)
