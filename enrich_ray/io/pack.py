"""Pack folders or buckets of DICOM/PNG/JPEG files into a Parquet archive (docs/architecture.md §2).

Two passes over the sources: the first reads every file once to hash it (the image_id),
recognise its format by content and read its DICOM header; the second writes each distinct
image once, in bounded shards, with every path that held its bytes. A file that claims to
be an image but cannot be parsed still gets a row, so it reaches the error report; a file
that cannot be read at all becomes a row of `_pack_errors.parquet`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from enrich_ray import schema
from enrich_ray.config import ConfigError, PackConfig, StorageConfig
from enrich_ray.decode.dicom import read_header
from enrich_ray.decode.sniff import sniff_format
from enrich_ray.io.fs import Location, StorageError, resolve
from enrich_ray.progress import progress_bar

log = logging.getLogger(__name__)

SHARD_PATTERN = "part-{:05d}.parquet"
SUMMARY_NAME = "_pack_summary.json"
ERRORS_NAME = "_pack_errors.parquet"


@dataclass
class PackSummary:
    """What a pack run saw and wrote; printed at the end and saved beside the shards."""

    files_seen: int = 0
    files_packed: int = 0
    images: int = 0
    duplicate_paths: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    unreadable: int = 0
    bytes_read: int = 0
    bytes_packed: int = 0
    shards: list[str] = field(default_factory=list)
    formats: dict[str, int] = field(default_factory=dict)
    patient_key: str = "absent"

    def lines(self) -> list[str]:
        """A short human-readable account, one fact a line, units included."""
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items())) or "none"
        formats = ", ".join(f"{n} {f}" for f, n in sorted(self.formats.items())) or "none"
        return [
            f"files seen: {self.files_seen} ({self.bytes_read / 1e6:.1f} MB)",
            f"files packed: {self.files_packed} as {self.images} distinct images ({formats}); "
            f"{self.duplicate_paths} paths repeat bytes seen at another path",
            f"skipped: {skipped}",
            f"unreadable: {self.unreadable} (listed in {ERRORS_NAME})",
            f"written: {len(self.shards)} shard(s), {self.bytes_packed / 1e6:.1f} MB of image bytes",
            f"patient_key: {self.patient_key}",
        ]


def list_sources(sources: list[str], storage: StorageConfig | None) -> list[tuple[Location, str]]:
    """Every file under the sources as (location of the file, URI), sorted for determinism."""
    found: dict[str, Location] = {}
    for src in sources:
        loc = resolve(src, storage)
        try:
            if loc.fs.isfile(loc.path):
                paths = [loc.path]
            elif loc.fs.isdir(loc.path):
                paths = loc.fs.find(loc.path)
            else:
                raise StorageError(f"source not found: {src}")
        except (PermissionError, OSError) as exc:
            if isinstance(exc, StorageError):
                raise
            raise StorageError(f"cannot list source {src}: {exc}") from None
        for path in paths:
            file_loc = Location(loc.fs, path, loc.protocol)
            found[file_loc.uri()] = file_loc
    return [(found[uri], uri) for uri in sorted(found)]


def patient_hmac_key(cfg: PackConfig) -> bytes | None:
    """The key for patient_key hashing, from the environment variable the config names; with
    pack.require_patient_key a missing key stops pack before it reads anything (production runs)."""
    value = os.environ.get(cfg.patient_key_env, "")
    if not value and cfg.require_patient_key:
        raise ConfigError(f"pack.require_patient_key is true but {cfg.patient_key_env} is not set: "
                          "set it to the patient-key secret (patient_key would stay empty)")
    return value.encode() if value else None


def pack(
    sources: list[str],
    dest: str,
    cfg: PackConfig | None = None,
    storage: StorageConfig | None = None,
    progress: bool = True,
) -> PackSummary:
    """Pack every image under `sources` into Parquet shards under `dest`; returns the summary."""
    cfg = cfg or PackConfig()
    key = patient_hmac_key(cfg)
    summary = PackSummary(patient_key="HMAC-SHA256" if key else "absent")
    files = list_sources(sources, storage)
    summary.files_seen = len(files)

    images: dict[str, dict] = {}
    errors: list[dict] = []
    skipped: Counter[str] = Counter()
    for loc, uri in progress_bar(files, desc="pack: scan", unit="file", disable=not progress):
        try:
            data = loc.fs.cat_file(loc.path)
        except OSError as exc:
            errors.append(schema.error_row("pack", exc, source_uri=uri))
            continue
        summary.bytes_read += len(data)
        fmt = sniff_format(data, uri)
        if fmt is None:
            skipped["not an image"] += 1
            continue
        image_id = hashlib.sha256(data).hexdigest()
        summary.files_packed += 1
        if image_id in images:
            images[image_id]["source_uris"].append(uri)
            summary.duplicate_paths += 1
            continue
        header = dict.fromkeys(schema.HEADER_NAMES)
        if fmt == "dicom":
            try:
                header.update(read_header(data, key))
            except Exception as exc:  # the decode stage reports it; the row must exist
                log.debug("header of %s unreadable: %s", uri, exc)
        images[image_id] = {
            "image_id": image_id,
            "source_uri": uri,
            "source_uris": [uri],
            "format": fmt,
            "size_bytes": len(data),
            **header,
        }
    if not images:  # refused before anything is written: an archive without an image fails every later job
        raise StorageError(_nothing_to_pack(sources, len(files), skipped, errors))
    if key is None:
        log.warning(
            "%s is not set: patient_key stays empty (set it to link frames of one patient without storing PatientID)",
            cfg.patient_key_env,
        )
    summary.skipped = dict(skipped)
    summary.unreadable = len(errors)
    summary.images = len(images)
    summary.formats = dict(Counter(row["format"] for row in images.values()))

    out = resolve(dest, storage)
    out.fs.makedirs(out.path, exist_ok=True)
    locations = {uri: loc for loc, uri in files}
    rows = sorted(images.values(), key=lambda r: r["source_uri"])
    _write_shards(out, rows, locations, cfg, summary, progress)
    with out.fs.open(out.join(ERRORS_NAME).path, "wb") as fh:
        pq.write_table(pa.Table.from_pylist(errors, schema=schema.ERRORS), fh)
    with out.fs.open(out.join(SUMMARY_NAME).path, "w") as fh:
        json.dump(asdict(summary), fh, indent=2)
    return summary


def _nothing_to_pack(sources: list[str], files_seen: int, skipped: Counter[str], errors: list[dict]) -> str:
    """One line: how many files pack looked at and why none of them became an image."""
    where = ", ".join(sources)
    if not files_seen:
        return f"nothing to pack: no file under {where}"
    why = [f"{n} {reason}" for reason, n in sorted(skipped.items())]
    why += [f"{n} unreadable ({kind})" for kind, n in sorted(Counter(e["error_type"] for e in errors).items())]
    return f"nothing to pack: none of the {files_seen} file(s) under {where} is a DICOM, PNG or JPEG image: {'; '.join(why)}"


def _write_shards(
    out: Location,
    rows: list[dict],
    locations: dict[str, Location],
    cfg: PackConfig,
    summary: PackSummary,
    progress: bool,
) -> None:
    """Write rows (with their bytes, read again) into shards of at most cfg.shard_max_bytes."""
    shard: list[dict] = []
    shard_bytes = 0

    def flush() -> None:
        nonlocal shard, shard_bytes
        if not shard:
            return
        name = SHARD_PATTERN.format(len(summary.shards))
        table = pa.Table.from_pylist(shard, schema=schema.ARCHIVE)
        mean_bytes = max(1, shard_bytes // len(shard))
        with out.fs.open(out.join(name).path, "wb") as fh:
            pq.write_table(table, fh, row_group_size=max(1, cfg.row_group_bytes // mean_bytes))
        summary.shards.append(name)
        shard, shard_bytes = [], 0

    for row in progress_bar(rows, desc="pack: write", unit="image", disable=not progress):
        src = locations[row["source_uri"]]
        data = src.fs.cat_file(src.path)
        if hashlib.sha256(data).hexdigest() != row["image_id"]:
            raise StorageError(f"{row['source_uri']} changed while it was being packed; pack again")
        if shard and shard_bytes + len(data) > cfg.shard_max_bytes:
            flush()
        shard.append({**row, "data": data})
        shard_bytes += len(data)
        summary.bytes_packed += len(data)
    flush()


def archive_shards(archive: str, storage: StorageConfig | None = None) -> list[str]:
    """The URIs of an archive's Parquet shards; a clear error when there are none."""
    loc = resolve(archive, storage)
    try:
        if not loc.fs.isdir(loc.path):
            raise StorageError(f"archive not found: {archive}")
        names = sorted(p for p in loc.fs.ls(loc.path, detail=False) if p.rsplit("/", 1)[-1].startswith("part-"))
    except PermissionError as exc:
        raise StorageError(f"no permission to read archive {archive}: {exc}") from None
    return [Location(loc.fs, p, loc.protocol).uri() for p in names]


def archive_table(archive: str, columns: list[str], storage: StorageConfig | None = None, filter=None) -> pa.Table:
    """Some columns of every row of an archive (never `data` unless asked for), or of the rows a pyarrow
    filter expression keeps, read on this process."""
    shards = archive_shards(archive, storage)
    if not shards:
        return schema.ARCHIVE.empty_table().select(columns)
    loc = resolve(shards[0], storage)
    paths = [resolve(uri, storage).path for uri in shards]
    return pads.dataset(paths, filesystem=loc.arrow_fs(), format="parquet").to_table(columns=columns, filter=filter)
