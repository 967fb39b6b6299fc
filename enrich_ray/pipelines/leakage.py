"""The leakage check of a curate run: a train/val/test split against the run's frames, duplicate groups
and patient and study keys (enrich_ray/analysis/leakage.py), into leakage.parquet, summary.json's
`leakage` and the report. Curate runs it in its report stage when `analysis.leakage_split` names a split;
`enrich-ray leakage --run RUN --split SPLIT` runs it on a finished run.

The split (both ways alike):
- a name ending in .csv or .parquet is a file with a `split` column (train, val, test; SPLIT_NAMES) and
  an `image_id` column or a `source_uri` column. A `source_uri` is an archive path, or a path under the
  archive's root folder (the deepest holding every archive path), or else the end of one archive path
  after a '/' (`benign/benign (1).png`); one that ends several archive paths is refused. Byte-identical files
  are one image at several paths: named on two sides by path, they are the same frame on both.
  Rows that name nothing in the archive are counted (a paper's split may list files this archive lacks);
  a file of which no row names an archive image is refused.
- any other name is a column of the archive (as `evaluate` packs a labeled dataset's split).
Blank values are frames outside the split. A split with fewer than two sides among the archive's images
is refused: nothing could cross it.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from enrich_ray.analysis.leakage import KINDS, SPLITS, crossing_pairs, split_names, unchecked, verdict
from enrich_ray.config import Config, ConfigError, ReportConfig
from enrich_ray.io.fs import StorageError
from enrich_ray.io.pack import archive_columns, archive_table
from enrich_ray.pipelines.run_folder import RunFolder

LEAKAGE = "leakage.parquet"
EXIT_LEAKS = 4  # `enrich-ray leakage` finished and the split leaks


@dataclass
class Placements:
    """The archive's images on the split's sides: one row per (image_id, source_uri, split)."""

    rows: pd.DataFrame
    not_in_archive: int  # rows of a split file that name no archive image


def is_split_file(source: str) -> bool:
    """A split given as a file (.csv or .parquet), not as an archive column."""
    return source.lower().endswith((".csv", ".parquet"))


def split_placements(source: str, archive: str, cfg: Config, setting: str) -> Placements:
    """Where the split puts the archive's images; bad input is one ConfigError or StorageError line."""
    from enrich_ray.pipelines.curate import id_file

    table = archive_table(archive, ["image_id", "source_uri", "source_uris"], cfg.storage).to_pandas()
    not_in_archive = 0
    if is_split_file(source):
        named = id_file(source, cfg, setting)
        key = next((c for c in ("image_id", "source_uri") if c in named.columns), None)
        if "split" not in named.columns or key is None:
            raise ConfigError(f"{setting} {source}: expected a split column and an image_id or a source_uri column, "
                              f"found {', '.join(map(str, named.columns)) or 'none'}")
        sides = _sides(named["split"], setting, source)
        if key == "image_id":
            first = dict(zip(table["image_id"], table["source_uri"]))
            ids = named["image_id"].astype(str).str.strip()
            found = ids.isin(first).to_numpy()
            rows = pd.DataFrame({"image_id": ids[found], "source_uri": ids[found].map(first), "split": sides[found]})
        else:
            rows, found = _by_path(named["source_uri"].astype(str).str.strip(), sides, table, setting, source)
        not_in_archive = int((~found).sum())
    else:
        if source not in archive_columns(archive, cfg.storage):
            raise ConfigError(f"{setting} {source}: the archive {archive} has no column {source!r}, and a split file's "
                              "name ends in .csv or .parquet")
        col = archive_table(archive, ["image_id", source], cfg.storage).to_pandas()
        rows = pd.DataFrame({"image_id": col["image_id"], "source_uri": col["image_id"].map(dict(zip(table["image_id"], table["source_uri"]))),
                             "split": _sides(col[source], setting, source)})
    rows = rows[rows["split"].notna()].drop_duplicates().reset_index(drop=True)
    if rows.empty:
        raise ConfigError(f"{setting} {source}: none of its rows puts an image of the archive {archive} on a side")
    present = [s for s in SPLITS if (rows["split"] == s).any()]
    if len(present) < 2:
        raise ConfigError(f"{setting} {source}: puts the archive's images on {present[0]} alone: a split needs two sides "
                          f"({', '.join(SPLITS)}) for anything to cross it")
    return Placements(rows, not_in_archive)


def _sides(values: pd.Series, setting: str, source: str) -> np.ndarray:
    try:
        return split_names(values.tolist())
    except ValueError as exc:
        raise ConfigError(f"{setting} {source}: {exc}") from None


def _by_path(paths: pd.Series, sides: np.ndarray, table: pd.DataFrame, setting: str, source: str) -> tuple[pd.DataFrame, np.ndarray]:
    """The archive path each of the split's paths names: the path itself, else the path under the archive's root
    folder (the deepest holding every archive path), else the one archive path that ends in '/' + it."""
    every = [(uri, image_id) for image_id, uris, first in zip(table["image_id"], table["source_uris"], table["source_uri"])
             for uri in (list(uris) if uris is not None and len(uris) else [first])]
    image_of = dict(every)
    folders = [uri.split("/")[:-1] for uri, _ in every]
    root = "/".join(os.path.commonprefix(folders)) + "/" if folders else ""
    by_name: dict[str, list[str]] = {}
    for uri, _ in every:
        by_name.setdefault(uri.rsplit("/", 1)[-1], []).append(uri)
    out, found = [], np.zeros(len(paths), bool)
    for i, (path, side) in enumerate(zip(paths, sides)):
        under = root + path.lstrip("/")
        if path in image_of or under in image_of:
            hits = [path if path in image_of else under]
        else:
            hits = [u for u in by_name.get(path.rsplit("/", 1)[-1], []) if u.endswith("/" + path.lstrip("/"))]
        if len(hits) > 1:
            raise ConfigError(f"{setting} {source}: the path {path!r} ends {len(hits)} archive paths ({hits[0]}, "
                              f"{hits[1]}{', ...' if len(hits) > 2 else ''}): give more of it")
        if hits:
            found[i] = True
            out.append({"image_id": image_of[hits[0]], "source_uri": hits[0], "split": side})
    return pd.DataFrame(out, columns=["image_id", "source_uri", "split"]), found


def write_leakage(run: RunFolder, source: str, frames: pd.DataFrame, emb: np.ndarray, placements: Placements) -> dict:
    """Check the split against the run's frames (embedded, sorted by frame key: the rows of emb and of
    duplicates.parquet); write leakage.parquet (the listed pairs, a on the earlier side) and return the counts
    for summary.json's `leakage`."""
    dups = run.read_table("duplicates.parquet").to_pandas()
    frame_rows = frames[["image_id", "frame_index"]].assign(row=np.arange(len(frames)))
    placed = placements.rows.merge(frame_rows, on="image_id", how="left")
    framed = placed[placed["row"].notna()].reset_index(drop=True)
    framed = framed.assign(row=framed["row"].astype(np.int64))
    keys = {k: frames[k].to_numpy(object) if k in frames.columns else np.full(len(frames), None, object)
            for k in ("patient_key", "study_uid")}
    leak = crossing_pairs(framed["row"].to_numpy(), framed["split"].to_numpy(), dups, keys["patient_key"], keys["study_uid"],
                          emb if len(emb) else np.zeros((0, 1), np.float32))
    pairs = leak.pairs
    side = {}
    for end in ("a", "b"):
        p = framed.iloc[pairs[end].to_numpy()].reset_index(drop=True)
        side[end] = pd.DataFrame({f"split_{end}": p["split"], f"image_id_{end}": p["image_id"],
                                  f"frame_index_{end}": p["frame_index"].astype(np.int32), f"source_uri_{end}": p["source_uri"],
                                  f"row_{end}": p["row"]})
    table = pd.concat([pairs[["kind", "similarity", "same_patient", "same_study"]], side["a"], side["b"]], axis=1)
    run.write_table(LEAKAGE, table)
    counts = leak.counts
    return {
        "split": source,
        "leaks": any(counts["frames_leaking"].values()),
        **counts,
        "images_in_split": int(placements.rows["image_id"].nunique()),
        "images_without_frames": int(placed.loc[placed["row"].isna(), "image_id"].nunique()),
        "split_rows_not_in_archive": placements.not_in_archive,
    }


def leakage_lines(counts: dict) -> list[str]:
    """The check's result in a few plain lines: the verdict first."""
    lines = [verdict(counts)]
    lines.append("  frames: " + ", ".join(f"{counts['frames'][s]:,} {s} ({counts['frames_leaking'][s]:,} leaking)" for s in SPLITS))
    for kind in KINDS:
        k = counts["by_kind"][kind]
        lines.append(f"  {kind.replace('_', ' ')}: {k['pairs']:,} pairs across the split, {k['frames']:,} frames in them, "
                     f"{k['groups']:,} groups")
    lines += [f"  {note}" for note in unchecked(counts)]
    return lines


@dataclass
class LeakageResult:
    """What `enrich-ray leakage` prints and its exit code (EXIT_LEAKS when the split leaks)."""

    lines: list[str]
    exit_code: int


def check_run(run_uri: str, source: str, cfg: Config) -> LeakageResult:
    """The leakage check on a finished curate run: leakage.parquet, summary.json's `leakage` and report.html
    rewritten (with the run's own report settings: a report made without thumbnails stays without)."""
    from enrich_ray.pipelines.curate import load_embeddings, write_run_report

    run = RunFolder(run_uri, cfg.storage)
    for name in ("summary.json", "report.html", "duplicates.parquet"):
        if not run.path(name).fs.exists(run.path(name).path):
            raise StorageError(f"{run_uri} is not a finished curate run folder: it has no {name}")
    summary = run.read_json("summary.json")
    if "night" in summary:
        raise ConfigError(f"{run_uri} is a night of a nightly catalog: the leakage check takes a curate run folder")
    placements = split_placements(source, summary["run"]["archive"], cfg, "--split")
    frames, emb = load_embeddings(run)
    summary["leakage"] = write_leakage(run, source, frames, emb, placements)
    run.write_json("summary.json", summary)
    recorded = ((summary.get("config") or {}).get("report")) or {}
    report = ReportConfig(**{f.name: recorded[f.name] for f in dataclasses.fields(ReportConfig) if f.name in recorded})
    if "thumbnails" not in recorded:
        report = dataclasses.replace(report, thumbnails=False)  # not recorded: no pixel goes onto the page
    write_run_report(run, summary, dataclasses.replace(cfg, report=report), frames, emb)
    lines = leakage_lines(summary["leakage"]) + [f"pairs: {run.path(LEAKAGE).uri()}", f"report: {run.path('report.html').uri()}"]
    return LeakageResult(lines, EXIT_LEAKS if summary["leakage"]["leaks"] else 0)
