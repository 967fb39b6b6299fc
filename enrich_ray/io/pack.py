"""Pack folders or buckets of DICOM/PNG/JPEG files into a Parquet archive (docs/architecture.md §2).

Two passes over the sources: the first reads every file once to hash it (the image_id),
recognise its format by content and read its DICOM header; the second writes each distinct
image once, in bounded shards, with every path that held its bytes. A file that claims to
be an image but cannot be parsed still gets a row, so it reaches the error report; a file
that cannot be read at all becomes a row of `_pack_errors.parquet`.

A DICOMweb query (`dicomweb://`, enrich_ray/io/dicomweb.py) is fetched once per instance and
written a shard at a time instead, so a rerun into the same archive fetches only what it lacks.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import asdict, dataclass, field
from itertools import islice

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from enrich_ray import schema
from enrich_ray.config import ConfigError, PackConfig, StorageConfig
from enrich_ray.decode.dicom import read_header
from enrich_ray.decode.sniff import sniff_format
from enrich_ray.io.dicomweb import Instance, Pacs, RetrieveFailed, is_dicomweb, parse_query
from enrich_ray.io.fs import Location, StorageError, resolve
from enrich_ray.progress import progress_bar

log = logging.getLogger(__name__)

SHARD_PATTERN = "part-{:05d}.parquet"
SUMMARY_NAME = "_pack_summary.json"
ERRORS_NAME = "_pack_errors.parquet"
DICOMWEB_IN_FLIGHT = 4  # instances retrieved at once: hides a PACS's latency without crowding it


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
    already_packed: int = 0  # DICOMweb: instances the archive held before this run, not fetched again

    def lines(self) -> list[str]:
        """A short human-readable account, one fact a line, units included."""
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items())) or "none"
        formats = ", ".join(f"{n} {f}" for f, n in sorted(self.formats.items())) or "none"
        resumed = [f"already in the archive: {self.already_packed} (not fetched again)"] if self.already_packed else []
        return [
            f"files seen: {self.files_seen} ({self.bytes_read / 1e6:.1f} MB)",
            *resumed,
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
    """Pack every image under `sources` (folders, files, s3:// prefixes, or dicomweb:// queries) into
    Parquet shards under `dest`; returns the summary."""
    cfg = cfg or PackConfig()
    if any(is_dicomweb(src) for src in sources):
        return _pack_dicomweb(sources, dest, cfg, storage, progress)
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
        images[image_id] = _image_row(data, image_id, uri, fmt, key)
    if not images:  # refused before anything is written: an archive without an image fails every later job
        raise StorageError(_nothing_to_pack(sources, len(files), skipped, errors))
    _warn_without_key(key, cfg)
    summary.skipped = dict(skipped)
    summary.unreadable = len(errors)
    summary.images = len(images)
    summary.formats = dict(Counter(row["format"] for row in images.values()))

    out = resolve(dest, storage)
    locations = {uri: loc for loc, uri in files}
    rows = sorted(images.values(), key=lambda r: r["source_uri"])
    _write_shards(out, rows, locations, cfg, summary, progress)
    _write_account(out, errors, summary)
    return summary


def _image_row(data: bytes, image_id: str, uri: str, fmt: str, key: bytes | None) -> dict:
    """The archive row of one distinct image, without its bytes: identity, format and DICOM header."""
    header = dict.fromkeys(schema.HEADER_NAMES)
    if fmt == "dicom":
        try:
            header.update(read_header(data, key))
        except Exception as exc:  # the decode stage reports it; the row must exist
            log.debug("header of %s unreadable: %s", uri, exc)
    return {"image_id": image_id, "source_uri": uri, "source_uris": [uri], "format": fmt, "size_bytes": len(data), **header}


def _warn_without_key(key: bytes | None, cfg: PackConfig) -> None:
    if key is None:
        log.warning(
            "%s is not set: patient_key stays empty (set it to link frames of one patient without storing PatientID)",
            cfg.patient_key_env,
        )


def _write_account(out: Location, errors: list[dict], summary: PackSummary) -> None:
    """The run's error rows and summary beside its shards."""
    out.fs.makedirs(out.path, exist_ok=True)
    with out.fs.open(out.join(ERRORS_NAME).path, "wb") as fh:
        pq.write_table(pa.Table.from_pylist(errors, schema=schema.ERRORS), fh)
    with out.fs.open(out.join(SUMMARY_NAME).path, "w") as fh:
        json.dump(asdict(summary), fh, indent=2)


def _pack_dicomweb(
    sources: list[str], dest: str, cfg: PackConfig, storage: StorageConfig | None, progress: bool
) -> PackSummary:
    """Pack the instances DICOMweb queries find, in the order of their URIs, a shard at a time.

    Every query is searched before anything is written (a bad query or an unreachable server stops the
    run there); instances the archive at `dest` already holds (by URI or SOP Instance UID) are not
    fetched again, and what was fetched before an outage or an interrupt is written, so the rerun goes
    on from there. An instance the server lists but does not deliver is an error row.
    """
    if not all(is_dicomweb(src) for src in sources):
        raise ConfigError("a DICOMweb query packs into an archive of its own: pack folders and s3:// prefixes in another run")
    queries = [parse_query(src) for src in sources]
    key = patient_hmac_key(cfg)
    found: dict[str, tuple[Pacs, Instance]] = {}
    for query in queries:
        pacs = Pacs(query, cfg.dicomweb_bearer_env)
        for instance in pacs.search():
            found.setdefault(instance.uri, (pacs, instance))
    if not found:
        raise StorageError(f"nothing to pack: the DICOMweb search found no instance ({', '.join(sources)})")
    out = resolve(dest, storage)
    held_uris, held_sops, held_ids, next_shard = _archive_holdings(out)
    todo = [found[uri] for uri in sorted(found) if uri not in held_uris and found[uri][1].sop_uid not in held_sops]
    summary = PackSummary(files_seen=len(found), already_packed=len(found) - len(todo),
                          patient_key="HMAC-SHA256" if key else "absent")
    _warn_without_key(key, cfg)
    writer = _ShardWriter(out, cfg, summary, first=next_shard)
    errors: list[dict] = []
    skipped: Counter[str] = Counter()
    formats: Counter[str] = Counter()
    try:
        with warnings.catch_warnings(), closing(_retrieved(todo)) as fetched:
            # pydicom's notes on a retrieved instance (a malformed UID, ...) are decode's to report, not pack's
            warnings.filterwarnings("ignore", module="pydicom")
            for (_, instance), data in progress_bar(zip(todo, fetched), total=len(todo), desc="pack: fetch",
                                                    unit="instance", disable=not progress):
                if isinstance(data, RetrieveFailed):
                    errors.append(schema.error_row("pack", data, source_uri=instance.uri))
                    continue
                summary.bytes_read += len(data)
                fmt = sniff_format(data, instance.uri)
                if fmt is None:
                    skipped["not an image"] += 1
                    continue
                summary.files_packed += 1
                image_id = hashlib.sha256(data).hexdigest()
                if image_id in held_ids:
                    summary.duplicate_paths += 1
                    continue
                held_ids.add(image_id)
                formats[fmt] += 1
                writer.add({**_image_row(data, image_id, instance.uri, fmt, key), "data": data})
    finally:
        writer.flush()  # what was fetched stays packed: the rerun after an outage or an interrupt goes on from here
    if not held_ids:
        raise StorageError(_nothing_to_pack(sources, len(found), skipped, errors))
    summary.skipped, summary.unreadable, summary.formats = dict(skipped), len(errors), dict(formats)
    summary.images = sum(formats.values())
    _write_account(out, errors, summary)
    return summary


def _archive_holdings(out: Location) -> tuple[set[str], set[str], set[str], int]:
    """What an archive already holds: its paths, SOP Instance UIDs and image ids, and the next shard's number."""
    if not out.fs.isdir(out.path):
        return set(), set(), set(), 0
    shards = archive_shards(out.uri())
    if not shards:
        return set(), set(), set(), 0
    table = archive_table(out.uri(), ["image_id", "sop_uid", "source_uris"])
    uris = {uri for paths in table["source_uris"].to_pylist() for uri in paths}
    sops = {sop for sop in table["sop_uid"].to_pylist() if sop}
    numbers = [int(uri.rsplit("/", 1)[-1][len("part-"):].split(".", 1)[0]) for uri in shards]
    return uris, sops, set(table["image_id"].to_pylist()), max(numbers) + 1


def _retrieved(todo: list[tuple[Pacs, Instance]]):
    """Each instance's bytes, or its RetrieveFailed, in order, DICOMWEB_IN_FLIGHT at a time; an outage raises."""

    def fetch(pacs: Pacs, instance: Instance) -> bytes | RetrieveFailed:
        try:
            return pacs.retrieve(instance)
        except RetrieveFailed as exc:
            return exc

    with ThreadPoolExecutor(DICOMWEB_IN_FLIGHT, thread_name_prefix="wado") as pool:
        queue = iter(todo)
        pending: deque[Future] = deque(pool.submit(fetch, *item) for item in islice(queue, DICOMWEB_IN_FLIGHT))
        while pending:
            result = pending.popleft().result()
            pending.extend(pool.submit(fetch, *item) for item in islice(queue, 1))
            yield result


def _nothing_to_pack(sources: list[str], files_seen: int, skipped: Counter[str], errors: list[dict]) -> str:
    """One line: how many files pack looked at and why none of them became an image."""
    where = ", ".join(sources)
    if not files_seen:
        return f"nothing to pack: no file under {where}"
    why = [f"{n} {reason}" for reason, n in sorted(skipped.items())]
    why += [f"{n} unreadable ({kind})" for kind, n in sorted(Counter(e["error_type"] for e in errors).items())]
    return f"nothing to pack: none of the {files_seen} file(s) under {where} is a DICOM, PNG or JPEG image: {'; '.join(why)}"


class _ShardWriter:
    """Archive rows with their bytes into shards of at most cfg.shard_max_bytes, numbered from `first`."""

    def __init__(self, out: Location, cfg: PackConfig, summary: PackSummary, first: int = 0):
        self.out, self.cfg, self.summary, self.number = out, cfg, summary, first
        self.rows: list[dict] = []
        self.bytes = 0

    def add(self, row: dict) -> None:
        """Queue one row (its `data` included); a full shard is written first."""
        if self.rows and self.bytes + len(row["data"]) > self.cfg.shard_max_bytes:
            self.flush()
        self.rows.append(row)
        self.bytes += len(row["data"])
        self.summary.bytes_packed += len(row["data"])

    def flush(self) -> None:
        """Write the queued rows as the next shard, if any."""
        if not self.rows:
            return
        name = SHARD_PATTERN.format(self.number)
        table = pa.Table.from_pylist(self.rows, schema=schema.ARCHIVE)
        mean_bytes = max(1, self.bytes // len(self.rows))
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, row_group_size=max(1, self.cfg.row_group_bytes // mean_bytes))
        self.out.fs.makedirs(self.out.path, exist_ok=True)
        self.out.join(name).write_bytes(sink.getvalue().to_pybytes())  # whole or not at all: a resume never meets half a shard
        self.summary.shards.append(name)
        self.number += 1
        self.rows, self.bytes = [], 0


def _write_shards(
    out: Location,
    rows: list[dict],
    locations: dict[str, Location],
    cfg: PackConfig,
    summary: PackSummary,
    progress: bool,
) -> None:
    """Write rows (with their bytes, read again) into shards of at most cfg.shard_max_bytes."""
    writer = _ShardWriter(out, cfg, summary)
    for row in progress_bar(rows, desc="pack: write", unit="image", disable=not progress):
        src = locations[row["source_uri"]]
        data = src.fs.cat_file(src.path)
        if hashlib.sha256(data).hexdigest() != row["image_id"]:
            raise StorageError(f"{row['source_uri']} changed while it was being packed; pack again")
        writer.add({**row, "data": data})
    writer.flush()


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


def archive_columns(archive: str, storage: StorageConfig | None = None) -> list[str]:
    """The column names of an archive (schema.ARCHIVE and any a dataset added, such as a split column)."""
    shards = archive_shards(archive, storage)
    if not shards:
        return list(schema.ARCHIVE.names)
    loc = resolve(shards[0], storage)
    return list(pads.dataset([resolve(uri, storage).path for uri in shards], filesystem=loc.arrow_fs(), format="parquet").schema.names)


def archive_table(archive: str, columns: list[str], storage: StorageConfig | None = None, filter=None) -> pa.Table:
    """Some columns of every row of an archive (never `data` unless asked for), or of the rows a pyarrow
    filter expression keeps, read on this process."""
    shards = archive_shards(archive, storage)
    if not shards:
        return schema.ARCHIVE.empty_table().select(columns)
    loc = resolve(shards[0], storage)
    paths = [resolve(uri, storage).path for uri in shards]
    return pads.dataset(paths, filesystem=loc.arrow_fs(), format="parquet").to_table(columns=columns, filter=filter)
