"""Nightly curation: rank tonight's new scans against everything seen and labeled before.

The catalog (a folder or s3:// prefix) holds the state across nights:

    catalog.json                  the commit point: model hash, committed nights, index version
    model/                        the frozen β-VAE (trained on the first night, or --model)
    embeddings/night=YYYY-MM-DD/  every committed night's embeddings (frame keys, model_hash)
    evidence/night=YYYY-MM-DD/    every committed night's model-free frame evidence: header facts,
                                  pixel hash, appearance statistics, 16x16 thumbnail (about 0.7 KB
                                  a frame), so tonight is judged as curate judges an archive
    index/vN/                     the similarity index over all committed embeddings, in night order
    labeled/*.csv|*.parquet       the labeled set: files with an image_id column, written back by
                                  the labeling tool (any number of files; image ids of any night)
    nights/YYYY-MM-DD/            each night's manifest (full ranking), top.csv (tonight's list),
                                  duplicates, outliers, errors, summary.json, report.html
    _work/YYYY-MM-DD/             a night in progress (resumable); removed after the commit
    _lock                         held while a night runs

A night changes the catalog only when it commits: its files are written first, catalog.json
last, and readers see only the nights that catalog.json lists. A run killed before that leaves
the catalog as it was; the rerun resumes from `_work`.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import socket
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from enrich_ray import schema
from enrich_ray.config import Config, ConfigError
from enrich_ray.decode.causes import error_counts
from enrich_ray.io.fs import StorageError, resolve
from enrich_ray.io.pack import archive_shards, archive_table
from enrich_ray.pipelines import curate as stages
from enrich_ray.pipelines.run_folder import RunFolder

log = logging.getLogger(__name__)

CATALOG_FILE = "catalog.json"
LOCK_FILE = "_lock"
EVIDENCE_DIR = "evidence"  # model-free: kept across a reembed
# Tonight's outliers are judged among tonight's frames and a seeded sample of this many earlier
# frames (those with evidence): the archive they must look unlike, at a cost that does not grow
# with the catalog.
REFERENCE_FRAMES = 5000


class CatalogBusy(StorageError):
    """Another run holds the catalog."""


@dataclass
class NightResult:
    """What the night did, in a line for the person who ran it."""

    message: str
    exit_code: int
    night_dir: str | None = None


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
        """Hold the catalog for this run, or refuse while another holds it."""
        lock = self.run.path(LOCK_FILE)
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": _now()}
        if lock.is_local:
            try:
                fd = os.open(lock.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                raise CatalogBusy(self._busy_message()) from None
            with os.fdopen(fd, "w") as fh:
                json.dump(holder, fh)
            return
        if lock.fs.exists(lock.path):  # object stores: best effort, documented in README
            raise CatalogBusy(self._busy_message())
        self.run.write_json(LOCK_FILE, holder)

    def _busy_message(self) -> str:
        try:
            holder = self.run.read_json(LOCK_FILE)
        except (OSError, ValueError):
            holder = {}
        return (
            f"catalog {self.uri} is held by another run (host {holder.get('host')}, pid {holder.get('pid')}, "
            f"since {holder.get('since')}); if no run is active, delete {self.run.path(LOCK_FILE).uri()}"
        )

    def release(self) -> None:
        self.run.clear([LOCK_FILE])

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
            f, e = stages.frames_and_vectors(table)
            frames.append(f.assign(night=night))
            vectors.append(e)
        if not frames:
            return pd.DataFrame(columns=[*stages.FRAME_COLUMNS, "night"]), np.zeros((0, 0), np.float32)
        return pd.concat(frames, ignore_index=True), np.concatenate(vectors)

    def partition(self, night: str) -> str:
        """The folder of a night's embeddings under the current model."""
        return f"{self.state['embeddings']}/night={night}"

    def evidence(self, frames: pd.DataFrame) -> dict:
        """The frame evidence (night_evidence's arrays) of these committed frames, in their order; a frame
        of a night committed before the catalog kept evidence has unknown facts (None) and NaN arrays."""
        folders = [self.run.path(f"{EVIDENCE_DIR}/night={night}") for night in self.nights]
        parts = [self.run.read_table(f"{EVIDENCE_DIR}/night={night}")
                 for night, folder in zip(self.nights, folders) if folder.fs.exists(folder.path)]
        return evidence_arrays(pa.concat_tables(parts, promote_options="default") if parts else None, frames)

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
                    df = pd.read_csv(fh)
                else:
                    continue
            if "image_id" not in df.columns:
                raise StorageError(f"labeled set file {path} has no image_id column")
            ids |= set(df["image_id"].astype(str))
        return ids


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def nightly(catalog: str, archive: str, night: str, cfg: Config, model: str | None = None, force: bool = False) -> NightResult:
    """Embed tonight's new images, flag duplicates and outliers against the history, rank, commit."""
    try:
        dt.date.fromisoformat(night)
    except ValueError:
        raise ConfigError(f"--night {night!r}: expected YYYY-MM-DD") from None
    shards = archive_shards(archive, cfg.storage)
    cat = Catalog(catalog, cfg)
    cat.acquire()
    try:
        if night in cat.nights and not force:
            cat.run.clear([f"_work/{night}"])  # left by a run killed after its commit
            return NightResult(f"night {night} is already in catalog {catalog}; nothing changed (--force redoes it)", 0)
        return _run_night(cat, shards, night, cfg, model, force)
    finally:
        cat.release()


def _run_night(cat: Catalog, shards: list[str], night: str, cfg: Config, model: str | None, force: bool) -> NightResult:
    from enrich_ray import runtime
    from enrich_ray.embed.checkpoint import load_model

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    tick = [time.perf_counter()]

    def lap(step: str) -> None:
        now = time.perf_counter()
        timings[step] = round(timings.get(step, 0.0) + now - tick[0], 3)
        tick[0] = now

    redo = night in cat.nights  # --force on a committed night: its rows leave the history and the index
    history, hist_emb = cat.history(exclude=night)
    work = RunFolder(cat.run.path(f"_work/{night}").uri(), cfg.storage)
    work.loc.fs.makedirs(work.loc.path, exist_ok=True)
    if force:
        work.clear(["_stages"])
    lap("load_history")

    # Tonight's archive, less the images the catalog already holds (re-sent scans).
    known = set(history["image_id"])
    archive_ids = archive_table(_archive_root(shards), ["image_id"], cfg.storage).column("image_id").to_pylist()
    resent = sorted(set(archive_ids) & known)
    if not work.is_done("select"):
        work.clear(["archive"])
        _write_archive_subset(shards, work, cfg, exclude=known)
        work.mark("select", {"new_images": len(set(archive_ids) - known), "resent": len(resent)})
    lap("select_new")

    # The frozen model: the catalog's, else --model, else trained on the first night.
    model_uri = cat.run.path(cat.state["model"]).uri()
    if cat.state["model_hash"] is None and not work.is_done("model"):
        work.clear(["decoded"])
        if model:
            _copy_tree(resolve(model, cfg.storage), cat.run.path(cat.state["model"]))
        else:
            runtime.init(cfg.runtime)
            work.mark("decode", stages._decode(work, work.files("archive"), cfg, runtime))
            frames = stages._frames_sample(work, cfg.vae.sample_size, cfg.vae.seed)
            if len(frames) < 2:
                raise StorageError(f"night {night}: {len(frames)} decodable frame(s), too few to train the first model")
            from enrich_ray.embed.train import train_vae

            runtime.run_task(train_vae, frames, cfg.vae, cfg.decode, model_uri, cfg.storage, num_gpus=min(1.0, cfg.embed.num_gpus))
        work.mark("model", {})
    lap("model")
    model_hash = load_model(model_uri, cfg.storage).model_hash
    given = load_model(model, cfg.storage).model_hash if model else model_hash
    if given != model_hash:
        raise ConfigError(
            f"catalog {cat.uri} holds embeddings of model {model_hash[:12]}, but --model {model} is {given[:12]}: "
            f"embeddings of two models never mix; run `enrich-ray reembed --catalog {cat.uri} --model {model}` first"
        )
    cfg = dataclasses.replace(cfg, embed=dataclasses.replace(cfg.embed, embedder="vae", model=model_uri))

    for stage in ("decode", "embed"):
        if not work.is_done(stage):
            work.clear(stages.OUTPUTS[stage])
            runtime.init(cfg.runtime)
            info = stages._decode(work, work.files("archive"), cfg, runtime) if stage == "decode" else stages._embed(work, cfg, runtime)
            work.mark(stage, info)
        lap(stage)
    new_frames, new_emb = stages.frames_and_vectors(work.read_table("embeddings"))
    embedded = int(work.marker("embed").get("embedded", len(new_frames)))

    out = cat.run.path(f"nights/{night}")
    night_run = RunFolder(out.uri(), cfg.storage)
    cat.run.clear([f"nights/{night}"])
    out.fs.makedirs(out.path, exist_ok=True)

    index_version = _update_index(cat, hist_emb, new_emb, cfg, rebuild=redo)
    lap("index")
    all_emb = new_emb if not len(history) else np.concatenate([hist_emb, new_emb]) if len(new_emb) else hist_emb
    all_frames = pd.concat([history, new_frames.assign(night=night)], ignore_index=True)
    graph = _night_graph(cat, index_version, all_emb, len(history), cfg)
    tonight_evidence = night_evidence(work, new_frames)
    evidence = join_evidence(cat.evidence(history), tonight_evidence)
    groups = _night_groups(graph, all_emb, evidence, len(history), cfg)
    dups = _night_duplicates(groups, all_frames, len(history), resent, history)
    outl = _night_outliers(all_frames, all_emb, evidence, groups, len(history), cfg)
    lap("duplicates_outliers")
    manifest, seeds = _night_ranking(cat, history, hist_emb, new_frames, new_emb, cfg, stages.frame_judgments(groups, outl, len(all_frames)),
                                     archive_table(_archive_root(shards), ["image_id", "sop_uid"], cfg.storage).to_pandas())
    lap("rank")

    night_run.write_table("duplicates.parquet", dups)
    night_run.write_table("outliers.parquet", outl)
    night_run.write_table("manifest.parquet", manifest)
    night_run.write_csv("manifest.csv", manifest)
    # Tonight's list: the frames to label, in rank order: a seed frame drawn tonight (no labeled set yet)
    # first, then selection.k picks; the labeled seed frames are not asked again.
    asked = ~manifest["image_id"].isin(cat.labeled_ids())
    drawn = int((manifest["is_seed"] & asked).sum())
    top = manifest[asked].head(drawn + (cfg.selection.k or len(manifest)))
    night_run.write_csv("top.csv", top)
    errors = stages._errors(work, _archive_root(shards), cfg)
    night_run.write_table("errors.parquet", errors)
    counts = {
        "archive_images": len(archive_ids),
        "resent_images": len(resent),
        "new_images": len(set(archive_ids) - known),
        "frames_embedded": embedded,
        **error_counts(errors),
        "labeled_seed_frames": seeds,
        "ranked_tonight": int((~manifest["is_seed"]).sum()),
        "history_frames": len(history),
    }
    embedding = stages.embedding_summary(work, new_frames, new_emb, cfg)
    _night_report(night_run, {"night": night, "counts": counts, "embedding": embedding}, manifest, dups, outl, errors, graph, len(history), work, new_frames, cfg)
    lap("write_outputs")

    # Commit: the night's embeddings, then catalog.json (the one write that makes it visible).
    cat.run.clear([cat.partition(night)])
    cat.run.loc.fs.makedirs(cat.run.path(cat.partition(night)).path, exist_ok=True)
    cat.run.write_table(f"{cat.partition(night)}/part-00000.parquet", schema.result_rows(work.read_table("embeddings")))
    cat.run.clear([f"{EVIDENCE_DIR}/night={night}"])
    cat.run.loc.fs.makedirs(cat.run.path(f"{EVIDENCE_DIR}/night={night}").path, exist_ok=True)
    cat.run.write_table(f"{EVIDENCE_DIR}/night={night}/part-00000.parquet", evidence_table(new_frames, tonight_evidence))
    lap("commit_embeddings")
    summary = {"night": night, "counts": counts, "embedding": embedding, "model_hash": model_hash, "timings_s": timings,
               "seconds": round(time.perf_counter() - t0, 2)}
    night_run.write_json("summary.json", summary)
    previous_index = cat.state["index"]
    cat.commit(night, {"frames": len(new_frames), "archive": _archive_root(shards), "committed": _now()}, index_version, model_hash)
    cat.run.clear([f"_work/{night}"] + ([f"index/{previous_index}"] if previous_index not in (None, index_version) else []))
    return NightResult(
        f"night {night}: {counts['new_images']} new images ({embedded} frames embedded), {len(resent)} re-sent, "
        f"{counts['unreadable_rows']} unreadable, {counts['no_image_rows']} without an image; tonight's list: {out.uri()}/top.csv; report: {out.uri()}/report.html",
        0,
        out.uri(),
    )


def _archive_root(shards: list[str]) -> str:
    return shards[0].rsplit("/", 1)[0]


def _write_archive_subset(shards: list[str], work: RunFolder, cfg: Config, *, exclude: set[str] = frozenset(),
                          only: set[str] | None = None) -> None:
    """Copy the archive rows to embed into a work folder: not in `exclude`, and in `only` when given."""
    work.loc.fs.makedirs(work.path("archive").path, exist_ok=True)
    for i, uri in enumerate(shards):
        loc = resolve(uri, cfg.storage)
        with loc.fs.open(loc.path, "rb") as fh:
            table = pq.read_table(fh)
        if exclude:
            table = table.filter(pc.invert(pc.is_in(table["image_id"], pa.array(sorted(exclude)))))
        if only is not None:
            table = table.filter(pc.is_in(table["image_id"], pa.array(sorted(only), pa.string())))
        work.write_table(f"archive/part-{i:05d}.parquet", table)


def _copy_tree(src, dst) -> None:
    """Copy a model folder file by file (fsspec on both sides)."""
    if not src.fs.exists(src.path):
        raise StorageError(f"--model {src.uri()} not found")
    dst.fs.makedirs(dst.path, exist_ok=True)
    for path in src.fs.find(src.path):
        rel = path[len(src.path):].lstrip("/")
        with dst.fs.open(dst.join(rel).path, "wb") as fh:
            fh.write(src.fs.cat_file(path))


def _update_index(cat: Catalog, hist_emb: np.ndarray, new_emb: np.ndarray, cfg: Config, rebuild: bool) -> str | None:
    """Add tonight's embeddings to the catalog's index as a new version (the old one stays until commit)."""
    from enrich_ray.index.shards import ShardedIndex, build_index

    version = f"v{int(cat.state['index'][1:]) + 1:05d}" if cat.state["index"] else "v00001"
    if cat.state["index"] and len(hist_emb) and not rebuild:
        index = ShardedIndex.load(cat.run.path(f"index/{cat.state['index']}").uri(), cfg.storage)
        if len(new_emb):
            index.add(new_emb)
    elif len(new_emb) or len(hist_emb):
        base = new_emb if not len(hist_emb) else np.concatenate([hist_emb, new_emb]) if len(new_emb) else hist_emb
        index = build_index(base, cfg.index)
    else:
        return None
    cat.run.clear([f"index/{version}"])
    index.save(cat.run.path(f"index/{version}").uri(), cfg.storage)
    return version


def _night_graph(cat: Catalog, index_version: str | None, all_emb: np.ndarray, n_hist: int, cfg: Config):
    """kNN of tonight's frames among all frames (history and tonight); history rows keep no edges."""
    from enrich_ray.index.knn import KnnGraph
    from enrich_ray.index.shards import ShardedIndex

    n = len(all_emb)
    k = max(0, min(cfg.index.k, n - 1))
    neighbors = np.full((n, k), -1, np.int64)
    sims = np.full((n, k), -np.inf, np.float32)
    if n > n_hist and k:
        index = ShardedIndex.load(cat.run.path(f"index/{index_version}").uri(), cfg.storage)
        s, ids = index.search(all_emb[n_hist:], k + 1)
        for r in range(n - n_hist):
            row = n_hist + r
            keep = ids[r] != row
            neighbors[row] = ids[r][keep][:k]
            sims[row] = s[r][keep][:k]
    return KnnGraph(neighbors, sims)


EVIDENCE_ARRAYS = {"appearance": np.float32, "thumbnail": np.float16}


def night_evidence(work: RunFolder, frames: pd.DataFrame) -> dict:
    """Tonight's frame evidence, as curate reads it from the decoded frames (stages.frame_evidence):
    header facts (a frame per row), pixel_hash, appearance statistics and thumbnails."""
    from enrich_ray.analysis.duplicates import THUMBNAIL_SIDE
    from enrich_ray.analysis.outliers import APPEARANCE_NAMES

    if not len(frames):
        return {"header": pd.DataFrame(columns=stages.EVIDENCE_COLUMNS), "pixel_hash": [],
                "appearance": np.zeros((0, len(APPEARANCE_NAMES)), np.float32),
                "thumbnail": np.zeros((0, THUMBNAIL_SIDE ** 2), np.float16)}
    header, appearance, thumbs = stages.frame_evidence(work, frames)
    return {"header": header, "pixel_hash": stages.pixel_hashes(work, frames), "appearance": appearance.astype(np.float32),
            "thumbnail": thumbs}


def evidence_table(frames: pd.DataFrame, evidence: dict) -> pa.Table:
    """The evidence the catalog keeps for tonight's frames (one row per frame, keyed)."""
    header = evidence["header"].drop(columns=["image_id", "frame_index"], errors="ignore").reset_index(drop=True)
    table = pa.Table.from_pandas(pd.concat([frames[["image_id", "frame_index"]].reset_index(drop=True), header], axis=1),
                                 preserve_index=False)
    table = table.append_column("pixel_hash", pa.array(evidence["pixel_hash"], pa.string()))
    for name, dtype in EVIDENCE_ARRAYS.items():
        values = np.ascontiguousarray(evidence[name], dtype=dtype)
        table = table.append_column(name, pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), values.shape[1]))
    return table


def evidence_arrays(table: pa.Table | None, frames: pd.DataFrame) -> dict:
    """night_evidence's dict for these frames from the catalog's evidence table (None: none kept)."""
    from enrich_ray.analysis.duplicates import THUMBNAIL_SIDE
    from enrich_ray.analysis.outliers import APPEARANCE_NAMES

    n = len(frames)
    widths = {"appearance": len(APPEARANCE_NAMES), "thumbnail": THUMBNAIL_SIDE ** 2}
    out = {name: np.full((n, widths[name]), np.nan, dtype) for name, dtype in EVIDENCE_ARRAYS.items()}
    keys = frames[["image_id", "frame_index"]].astype({"frame_index": "int64"}).reset_index(drop=True)
    if table is None or not table.num_rows:
        header = keys.copy()
        out.update(header=header, pixel_hash=[None] * n)
        return out
    facts = table.drop_columns(list(EVIDENCE_ARRAYS)).to_pandas().astype({"frame_index": "int64"})
    found = keys.merge(facts.reset_index(names="_at"), on=["image_id", "frame_index"], how="left")
    at = found.pop("_at").to_numpy(np.float64)
    known = np.flatnonzero(np.isfinite(at))
    for name in EVIDENCE_ARRAYS:
        column = table.column(name).combine_chunks()
        values = column.flatten().to_numpy(zero_copy_only=False).reshape(table.num_rows, widths[name])
        out[name][known] = values[at[known].astype(np.int64)]
    hashes = found.pop("pixel_hash")
    out.update(header=found, pixel_hash=[h if isinstance(h, str) else None for h in hashes])
    return out


def join_evidence(earlier: dict, tonight: dict) -> dict:
    """Earlier frames' evidence followed by tonight's, in the order of all_frames."""
    header = pd.concat([earlier["header"], tonight["header"]], ignore_index=True)
    joined = {name: np.concatenate([earlier[name], tonight[name].astype(earlier[name].dtype)]) for name in EVIDENCE_ARRAYS}
    return {"header": header, "pixel_hash": list(earlier["pixel_hash"]) + list(tonight["pixel_hash"]), **joined}


def _night_groups(graph, emb: np.ndarray, evidence: dict, n_hist: int, cfg: Config) -> pd.DataFrame:
    """The duplicate groups (analysis.duplicates) that tonight's frames form with each other and with
    earlier frames: exact by pixel_hash, near by both checks (tonight's frames query the content graph)."""
    from enrich_ray.analysis.duplicates import archive_duplicates

    if len(emb) <= n_hist or not graph.k:
        return pd.DataFrame()
    return archive_duplicates(graph, emb, cfg.analysis, cfg.index, evidence["pixel_hash"], thumbs=evidence["thumbnail"],
                              rows=np.arange(n_hist, len(emb)))


def _night_duplicates(groups: pd.DataFrame, frames: pd.DataFrame, n_hist: int, resent: list[str],
                      history: pd.DataFrame) -> pd.DataFrame:
    """Tonight's duplicate groups (those holding one of tonight's frames), and re-sent images."""
    dups = groups
    if len(dups):
        tonight = dups.groupby("group_id")["row"].transform(lambda rows: (rows >= n_hist).any())
        dups = dups[tonight].copy()
        dups = stages._with_keys(dups, frames)
        dups["night"] = frames["night"].iloc[dups["row"].to_numpy()].to_numpy()
    first = int(dups["group_id"].max()) + 1 if len(dups) else 0
    rows = []
    for g, image_id in enumerate(resent):
        seen = history[history["image_id"] == image_id]
        for rec in seen.itertuples():
            rows.append({"group_id": first + g, "row": int(rec.Index), "kind": "resent", "similarity": 1.0,
                         "is_representative": True, "image_id": image_id, "frame_index": int(rec.frame_index),
                         "source_uri": rec.source_uri, "night": rec.night})
    if rows:
        dups = pd.concat([dups, pd.DataFrame(rows)], ignore_index=True)
    return dups


def _night_outliers(frames: pd.DataFrame, emb: np.ndarray, evidence: dict, groups: pd.DataFrame, n_hist: int,
                    cfg: Config) -> pd.DataFrame:
    """Tonight's frames ranked by how foreign they are (analysis.outliers.outlier_table, as curate), judged
    among tonight's frames and a seeded sample of REFERENCE_FRAMES earlier frames with evidence."""
    from enrich_ray.analysis.duplicates import duplicate_families
    from enrich_ray.analysis.outliers import outlier_table_of

    if len(frames) <= n_hist:
        return pd.DataFrame(columns=["rank", "row", "score", "nn_similarity", "flagged", "reason"])
    known = np.flatnonzero(np.isfinite(evidence["thumbnail"][:n_hist].astype(np.float32)).all(axis=1))
    rng = np.random.default_rng(cfg.selection.random_seed)
    reference = np.sort(rng.choice(known, min(REFERENCE_FRAMES, len(known)), replace=False)) if len(known) else known
    rows = np.concatenate([reference, np.arange(n_hist, len(frames))])
    families = duplicate_families(groups, len(frames))
    table = outlier_table_of(rows, emb, evidence["thumbnail"], evidence["appearance"], evidence["header"], families,
                             cfg.analysis, cfg.index)
    table = table[table["row"] >= n_hist].reset_index(drop=True)
    table["rank"] = np.arange(1, len(table) + 1)
    return stages._with_keys(table, frames)


def _night_ranking(cat: Catalog, history: pd.DataFrame, hist_emb: np.ndarray, new_frames: pd.DataFrame, new_emb: np.ndarray,
                   cfg: Config, judgments: tuple[np.ndarray, np.ndarray], sop: pd.DataFrame):
    """ENRICH over tonight's frames, seeded by every labeled frame of the history; judgments: per row of
    all frames, the duplicate family and the outlier flag (stages.frame_judgments); sop: image_id -> sop_uid."""
    from enrich_ray.selection import rank
    from enrich_ray.selection.manifest import build_manifest
    from enrich_ray.selection.seeds import seed_rows

    labeled = cat.labeled_ids()
    lab_mask = history["image_id"].isin(labeled).to_numpy() if len(history) else np.zeros(0, bool)
    lab_frames = history[lab_mask].drop(columns=["night"]).reset_index(drop=True)
    frames = pd.concat([lab_frames, new_frames], ignore_index=True)
    frames["sop_uid"] = frames["image_id"].map(dict(zip(sop["image_id"], sop["sop_uid"])))
    rows = np.concatenate([np.flatnonzero(lab_mask), len(history) + np.arange(len(new_frames))])
    group, flag = judgments[0][rows], judgments[1][rows]
    if not len(new_frames):
        return build_manifest_empty(), int(lab_mask.sum())
    emb = np.concatenate([hist_emb[lab_mask], new_emb]) if lab_mask.any() else new_emb
    if lab_mask.any():
        seed = np.arange(int(lab_mask.sum()), dtype=np.int64)
    else:
        seed = seed_rows(len(new_frames), cfg.selection, None)
    sel = dataclasses.replace(cfg.selection, k=None)
    ranking = rank(sel.ranker, emb, seed, None, sel, progress=True)
    return build_manifest(ranking, frames, sel, emb, duplicate_group=group, outlier_flag=flag), int(lab_mask.sum())


def build_manifest_empty() -> pd.DataFrame:
    """The manifest of a night with nothing new."""
    return pd.DataFrame({"rank": pd.Series(dtype="int64"), "image_id": pd.Series(dtype="str"),
                         "frame_index": pd.Series(dtype="int32"), "source_uri": pd.Series(dtype="str"),
                         "ranker": pd.Series(dtype="str"), "score": pd.Series(dtype="float32"),
                         "is_seed": pd.Series(dtype="bool")})


def _night_report(run: RunFolder, summary: dict, manifest, dups, outl, errors, graph, n_hist: int, work: RunFolder, new_frames, cfg: Config) -> None:
    from enrich_ray.report.html import write_report

    nn = graph.nn_similarity[n_hist:] if graph.k else np.zeros(0, np.float32)
    shown = manifest[~manifest["is_seed"]].copy() if len(manifest) else manifest
    row_of = {k: r for r, k in enumerate(zip(new_frames["image_id"], new_frames["frame_index"]))}
    if len(shown):
        shown["row"] = [row_of[k] for k in zip(shown["image_id"], shown["frame_index"])]
    thumbs = (lambda rows: stages._pixels_of(work, new_frames.iloc[list(rows)])) if cfg.report.thumbnails and len(new_frames) else None

    def tonight(df: pd.DataFrame) -> pd.DataFrame:
        """Tonight's rows of an analysis table, renumbered from 0 like the thumbnails."""
        return df[df["row"] >= n_hist].assign(row=lambda d: d["row"] - n_hist) if len(df) else df

    write_report(run.path("report.html").uri(), {"counts": summary["counts"], "run": {"night": summary["night"]}, "embedding": summary["embedding"]},
                 shown, tonight(dups), tonight(outl), errors, nn, thumbs, cfg.report, cfg.storage)


def reembed(catalog: str, model: str, cfg: Config) -> NightResult:
    """Embed every committed night again with another model: the explicit step a model change needs.

    Each night's images are read again from the archive the night recorded, decoded and embedded
    with the new model into a new embeddings folder; the index is rebuilt; catalog.json switches
    model, embeddings and index in one write. Until then the catalog keeps serving the old model.
    """
    from enrich_ray import runtime
    from enrich_ray.embed.checkpoint import load_model
    from enrich_ray.index.shards import build_index

    cat = Catalog(catalog, cfg)
    cat.acquire()
    try:
        if not cat.nights:
            raise StorageError(f"catalog {catalog} has no committed night to re-embed")
        new_hash = load_model(model, cfg.storage).model_hash
        if new_hash == cat.state["model_hash"]:
            return NightResult(f"catalog {catalog} is already embedded with model {new_hash[:12]}; nothing changed", 0)
        tag = new_hash[:12]
        model_dir, emb_dir = f"model-{tag}", f"embeddings-{tag}"
        _copy_tree(resolve(model, cfg.storage), cat.run.path(model_dir))
        cfg = dataclasses.replace(cfg, embed=dataclasses.replace(cfg.embed, embedder="vae", model=cat.run.path(model_dir).uri()))
        vectors = []
        for entry in cat.state["nights"]:
            night = entry["night"]
            if "archive" not in entry:
                raise StorageError(f"night {night} recorded no archive: it cannot be read again to re-embed")
            work = RunFolder(cat.run.path(f"_reembed/{tag}/{night}").uri(), cfg.storage)
            if not work.is_done("embed"):
                keep = set(cat.run.read_table(cat.partition(night), columns=["image_id"]).column("image_id").to_pylist())
                work.clear(["archive", "decoded", "embeddings", "_stages"])
                _write_archive_subset(archive_shards(entry["archive"], cfg.storage), work, cfg, only=keep)
                runtime.init(cfg.runtime)
                work.mark("decode", stages._decode(work, work.files("archive"), cfg, runtime))
                work.mark("embed", stages._embed(work, cfg, runtime))
            table = schema.result_rows(work.read_table("embeddings"))
            cat.run.clear([f"{emb_dir}/night={night}"])
            cat.run.loc.fs.makedirs(cat.run.path(f"{emb_dir}/night={night}").path, exist_ok=True)
            cat.run.write_table(f"{emb_dir}/night={night}/part-00000.parquet", table)
            vectors.append(stages.frames_and_vectors(table)[1])
        version = f"v{int(cat.state['index'][1:]) + 1:05d}" if cat.state["index"] else "v00001"
        emb = np.concatenate([v for v in vectors if v.size]) if any(v.size for v in vectors) else np.zeros((0, 0), np.float32)
        if len(emb):
            build_index(emb, cfg.index).save(cat.run.path(f"index/{version}").uri(), cfg.storage)
        old = {k: cat.state[k] for k in ("model", "embeddings", "index")}
        cat.write_state({**cat.state, "model_hash": new_hash, "model": model_dir, "embeddings": emb_dir,
                         "index": version if len(emb) else None})
        cat.run.clear([old["model"], old["embeddings"], f"_reembed/{tag}"] + ([f"index/{old['index']}"] if old["index"] else []))
        return NightResult(f"catalog {catalog}: {len(emb)} frames of {len(cat.nights)} nights re-embedded with model {tag}", 0)
    finally:
        cat.release()
