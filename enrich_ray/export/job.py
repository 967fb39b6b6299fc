"""`enrich-ray export` (the selection out) and `enrich-ray labels` (the labels back into a catalog).

export --to writes under OUT (a folder, local or s3://):
    labelstudio  tasks.json and images/NAME.png (NAME: export.tools.frame_name)
    cvat         manifest.jsonl and NAME.png beside it (the folder is the CVAT dataset's root)
    csv          to_label.csv
    kos          one STUDY_UID.dcm per study (DICOM Key Object Selection); to a dicomweb:// OUT, stored over STOW-RS
labels writes CATALOG/labeled/YYYYMMDDTHHMMSSZ.csv (image_id,label), which the next night seeds from.
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field

import pyarrow.compute as pc
from pydicom.sr.coding import Code

from enrich_ray.config import Config, ConfigError
from enrich_ray.export import FORMATS, kos, labels, render, tools
from enrich_ray.export.source import Selection, archive_files, read_selection
from enrich_ray.io.dicomweb import Pacs, is_dicomweb, parse_query
from enrich_ray.io.fs import Location, StorageError, resolve
from enrich_ray.pipelines.catalog import CATALOG_FILE, Catalog

TASKS = "tasks.json"
IMAGES = "images"
CVAT_MANIFEST = "manifest.jsonl"
TABLE = "to_label.csv"
LABELED = "labeled"
DOCUMENT_ROOT_ENV = "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"  # Label Studio's own setting for local files


@dataclass
class ExportResult:
    """What an export wrote, in lines a person reads."""

    lines: list[str]
    skipped: Counter = field(default_factory=Counter)  # frames left out, by why


def export_selection(run: str, to: str, out: str, cfg: Config, *, top: int | None = None, title: str | None = None,
                     document_root: str | None = None) -> ExportResult:
    """Write the run's selection under `out` in the format `to` (FORMATS); refuses bad options before any work."""
    if to not in FORMATS:
        raise ConfigError(f"--to {to}: expected one of {', '.join(FORMATS)}")
    if title is not None and to != "kos":
        raise ConfigError("--title names a KOS document's title: it applies to --to kos only")
    if document_root is not None and to != "labelstudio":
        raise ConfigError("--document-root places Label Studio's local files: it applies to --to labelstudio only")
    code = kos.document_title(title or kos.DEFAULT_TITLE) if to == "kos" else None
    root = document_root or os.environ.get(DOCUMENT_ROOT_ENV) or os.sep
    if is_dicomweb(out):
        pacs = _pacs(out, to, cfg.pack.dicomweb_bearer_env)
        return _kos(read_selection(run, top, cfg.storage), pacs, code, out, cfg)
    dest = resolve(out, cfg.storage)
    if to == "labelstudio":
        tools.label_studio_uri(dest.join(IMAGES), root)  # an --out outside the document root stops here
    sel = read_selection(run, top, cfg.storage)
    dest.fs.makedirs(dest.path, exist_ok=True)
    if to == "csv":
        dest.join(TABLE).write_bytes(tools.labeling_table(sel.rows).to_csv(index=False).encode())
        return ExportResult([f"exported {_said(sel)} to {dest.join(TABLE).uri()}"])
    if to == "kos":
        return _kos(sel, dest, code, dest.uri(), cfg)
    return _images(sel, to, dest, root, cfg)


def _said(sel: Selection) -> str:
    return f"{len(sel.rows)} frames (the run's list, {sel.list_name}, holds {sel.listed})"


def _pacs(out: str, to: str, bearer_env: str) -> Pacs:
    """The PACS a `dicomweb://` --out names, for its KOS documents (STOW-RS), checked before any work."""
    if to != "kos":
        raise ConfigError(f"--out {out}: a PACS takes --to kos only (the KOS documents, stored over STOW-RS)")
    query = parse_query(out)
    if query.filters:
        raise ConfigError(f"--out {out}: a PACS to store into takes no query ({', '.join(k for k, _ in query.filters)})")
    return Pacs(query, bearer_env)


def _images(sel: Selection, to: str, dest: Location, root: str, cfg: Config) -> ExportResult:
    """Render each frame to a PNG and write the tool's task file over them, in rank order."""
    folder = dest.join(IMAGES) if to == "labelstudio" else dest
    folder.fs.makedirs(folder.path, exist_ok=True)
    files = archive_files(sel.archive, sel.rows["image_id"].tolist(), cfg.storage).set_index("image_id")
    skipped: Counter = Counter()
    written = []  # (position in the selection, name, URI, image)
    for image_id, group in sel.rows.groupby("image_id", sort=False):
        if image_id not in files.index:
            skipped["not in the archive"] += len(group)
            continue
        wanted = set(group["frame_index"].astype(int))
        try:
            frames = render.render_frames(files.at[image_id, "data"], str(files.at[image_id, "format"]), wanted, cfg.decode)
        except Exception as exc:  # the file no longer decodes whole: its frames are left out, by cause
            frames = {i: exc for i in wanted}
        for position, row in group.iterrows():
            image = frames.get(int(row["frame_index"]), LookupError("no such frame"))
            if isinstance(image, Exception):
                skipped[f"could not be rendered ({type(image).__name__})"] += 1
                continue
            name = tools.frame_name(row["rank"], image_id, row["frame_index"])
            png = folder.join(f"{name}.png")
            png.write_bytes(render.png_bytes(image))
            written.append((position, name, tools.label_studio_uri(png, root) if to == "labelstudio" else png.uri(), image))
    written.sort(key=lambda w: w[0])
    rows = sel.rows.loc[[w[0] for w in written]]
    if to == "labelstudio":
        target = dest.join(TASKS)
        target.write_bytes(json.dumps(tools.label_studio_tasks(rows, [w[2] for w in written]), indent=1).encode())
        where = f"{target.uri()}, their PNGs in {folder.uri()}"
    else:
        target = dest.join(CVAT_MANIFEST)
        target.write_bytes(tools.cvat_manifest([w[1] for w in written], [w[3] for w in written]).encode())
        where = f"{dest.uri()} ({CVAT_MANIFEST} and the PNGs)"
    lines = [f"exported {len(rows)} of {_said(sel)} to {where}"]
    lines += [f"  {n} frame(s) left out: {why}" for why, n in sorted(skipped.items())]
    return ExportResult(lines, skipped)


def _kos(sel: Selection, dest: Location | Pacs, code: Code, where: str, cfg: Config) -> ExportResult:
    """One KOS document per study over the selected DICOM instances, written as STUDY_UID.dcm or stored to a
    PACS (STOW-RS); other frames are counted, not sent."""
    files = archive_files(sel.archive, sel.rows["image_id"].tolist(), cfg.storage)
    dicom = files[files["format"] == "dicom"]
    skipped: Counter = Counter()
    skipped["not in the archive"] = int((~sel.rows["image_id"].isin(files["image_id"])).sum())
    skipped["not DICOM (a PNG or JPEG image is no SOP instance)"] = int(
        (sel.rows["image_id"].isin(files["image_id"]) & ~sel.rows["image_id"].isin(dicom["image_id"])).sum())
    description = f"enrich_ray: the frames ranked first for labeling ({len(sel.rows)} of {sel.list_name})"
    docs, unreadable = kos.kos_documents(dicom["data"].tolist(), code, description)
    for doc in docs:
        if isinstance(dest, Pacs):
            dest.store(doc.data)
        else:
            dest.join(f"{doc.study_uid}.dcm").write_bytes(doc.data)
    instances = sum(len(d.referenced) for d in docs)
    lines = [f"exported {_said(sel)} as {len(docs)} Key Object Selection document(s) ('{code.meaning}') referencing "
             f"{instances} instance(s) to {where}"]
    lines += [f"  {n} frame(s) left out: {why}" for why, n in sorted(skipped.items()) if n]
    if unreadable:
        skipped["DICOM header without the UIDs a reference needs"] = unreadable
        lines.append(f"  {unreadable} DICOM file(s) left out: a header pydicom cannot read, or without the UIDs a reference needs")
    return ExportResult(lines, +skipped)


@dataclass
class LabelsResult:
    """Where the labeled set's new file went, and the counts behind it."""

    written: str
    images: int
    labels: labels.Labels
    unknown: int

    def lines(self) -> list[str]:
        lab = self.labels
        return [f"{self.images} labeled image(s) into {self.written}: the next night seeds from them",
                f"  read {lab.entries} entries: {lab.unlabeled} without a label, {lab.without_id} labeled without an "
                f"image_id, {self.unknown} labeled image(s) not in the catalog (not written)"]


def labels_into_catalog(catalog: str, source: str, cfg: Config) -> LabelsResult:
    """Write a labeling tool's export into CATALOG/labeled/ as image_id,label (the images the catalog holds)."""
    cat_loc = resolve(catalog, cfg.storage)
    if not cat_loc.fs.exists(cat_loc.join(CATALOG_FILE).path):
        raise StorageError(f"no catalog at {catalog} (no {CATALOG_FILE}): `enrich-ray nightly` makes one")
    src = resolve(source, cfg.storage)
    if not src.fs.exists(src.path) or src.fs.isdir(src.path):
        raise StorageError(f"labels file not found: {source}")
    try:
        found = labels.read_labels(src.fs.cat_file(src.path), src.path)
    except labels.LabelsError as exc:
        raise StorageError(f"{source}: {exc}") from None
    cat = Catalog(catalog, cfg)
    known = catalog_image_ids(cat)
    table = found.table[found.table["image_id"].isin(known)]
    unknown = len(found.table) - len(table)
    if not len(table):
        raise StorageError(f"{source}: none of its {len(found.table)} labeled image(s) is in catalog {catalog} "
                           f"({found.entries} entries read, {found.unlabeled} without a label, {found.without_id} without an image_id)")
    target = _new_file(cat.run.path(LABELED))
    target.write_bytes(table.to_csv(index=False).encode())
    return LabelsResult(target.uri(), len(table), found, unknown)


def catalog_image_ids(cat: Catalog) -> set[str]:
    """Image ids of every committed night's embedded frames."""
    ids: set[str] = set()
    for night in cat.nights:
        ids |= set(pc.unique(cat.run.read_table(cat.partition(night), columns=["image_id"]).column("image_id")).to_pylist())
    return ids


def _new_file(folder: Location) -> Location:
    """A new labeled-set file named by the time (UTC), never one that exists."""
    folder.fs.makedirs(folder.path, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for n in range(1, 1000):
        loc = folder.join(f"{stamp}.csv" if n == 1 else f"{stamp}-{n}.csv")
        if not loc.fs.exists(loc.path):
            return loc
    raise StorageError(f"{folder.uri()}: no free file name for {stamp}")
