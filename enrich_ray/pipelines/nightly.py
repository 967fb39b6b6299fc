"""Nightly curation: rank tonight's new scans against everything seen and labeled before.

The state across nights lives in the catalog (enrich_ray/pipelines/catalog.py, its layout there).
A night changes the catalog only when it commits: its files are written first, catalog.json
last; a run killed before that leaves the catalog as it was, and the rerun resumes from `_work`.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import functools
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
from enrich_ray.index.knn import KnnGraph
from enrich_ray.pipelines import curate as stages
from enrich_ray.pipelines.catalog import Catalog, CatalogBusy, copy_tree, now, stack
from enrich_ray.pipelines.run_folder import RunFolder
from enrich_ray.pipelines.stages import run_stages

__all__ = ["CatalogBusy", "NightResult", "nightly", "reembed"]

# Tonight's outliers are judged among tonight's frames and a seeded sample of this many earlier
# frames (those with evidence): the archive they must look unlike, at a cost that does not grow
# with the catalog.
REFERENCE_FRAMES = 5000


@dataclass
class NightResult:
    """What the night did, in a line for the person who ran it."""

    message: str
    exit_code: int
    night_dir: str | None = None


def nightly(catalog: str, archive: str, night: str, cfg: Config, model: str | None = None, force: bool = False) -> NightResult:
    """Embed tonight's new images, flag duplicates and outliers against the history, rank, commit."""
    try:
        dt.date.fromisoformat(night)
    except ValueError:
        raise ConfigError(f"--night {night!r}: expected YYYY-MM-DD") from None
    if cfg.analysis.leakage_split:
        raise ConfigError("analysis.leakage_split checks a split of a curate run (or `enrich-ray leakage --run RUN`), not a night")
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
    """Tonight's stages (curate's sequence, after `select`), each with its marker under _work/NIGHT, then the commit."""
    from enrich_ray import runtime
    from enrich_ray.embed.checkpoint import load_model

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    redo = night in cat.nights  # --force on a committed night: its rows leave the history and the index
    history, hist_emb = cat.history(exclude=night)
    work = RunFolder(cat.run.path(f"_work/{night}").uri(), cfg.storage)
    work.loc.fs.makedirs(work.loc.path, exist_ok=True)
    out = RunFolder(cat.run.path(f"nights/{night}").uri(), cfg.storage)
    known = set(history["image_id"])
    archive_ids = archive_table(_archive_root(shards), ["image_id"], cfg.storage).column("image_id").to_pylist()
    resent = sorted(set(archive_ids) & known)
    model_uri = cat.run.path(cat.state["model"]).uri()
    start_ray = lambda: runtime.init(cfg.runtime)  # noqa: E731

    def select() -> dict:
        """Tonight's archive, less the images the catalog already holds (re-sent scans)."""
        cat.run.clear([f"nights/{night}"])
        out.loc.fs.makedirs(out.loc.path, exist_ok=True)
        _write_archive_subset(shards, work, cfg, exclude=known)
        return {"new_images": len(set(archive_ids) - known), "resent": len(resent)}

    held = cat.state["model_hash"]
    given = load_model(model, cfg.storage).model_hash if model and held else held
    if given != held:
        raise ConfigError(
            f"catalog {cat.uri} holds embeddings of model {held[:12]}, but --model {model} is {given[:12]}: "
            f"embeddings of two models never mix; run `enrich-ray reembed --catalog {cat.uri} --model {model}` first"
        )
    first = {"select": select, "decode": lambda: stages._decode(work, work.files("archive"), cfg, runtime)}
    if cat.state["model_hash"] is None:  # the frozen model: the catalog's, else --model, else trained tonight
        first["train"] = lambda: _first_model(work, model, cat.run.path(cat.state["model"]), cfg, runtime)
    run_stages(work, first, {"select": ["archive"], **stages.OUTPUTS, "train": []}, force, timings, start_ray)

    model_hash = load_model(model_uri, cfg.storage).model_hash
    cfg = dataclasses.replace(cfg, embed=dataclasses.replace(cfg.embed, embedder="vae", model=model_uri))
    tonight = _Night(cat, work, out, night, history, hist_emb, resent, _archive_root(shards), cfg)
    rest = {
        "embed": lambda: stages._embed(work, cfg, runtime),
        "index": lambda: tonight.index(rebuild=redo),
        "analyze": tonight.analyze,
        "rank": tonight.rank,
        "report": lambda: tonight.report(archive_ids, timings),
    }
    run_stages(work, rest, {"embed": stages.OUTPUTS["embed"], "index": ["knn"], "analyze": ["groups.parquet", "evidence.parquet"]},
               force, timings, start_ray)
    return tonight.commit(work.marker("index").get("index_version"), model_hash, t0, timings)


def _first_model(work: RunFolder, model: str | None, dst, cfg: Config, runtime) -> dict:
    """The catalog's frozen model on its first night: --model copied in, else the β-VAE trained on tonight's frames."""
    if model:
        copy_tree(resolve(model, cfg.storage), dst)
        return {"trained": False, "copied_from": model}
    frames = stages._frames_sample(work, cfg.vae.sample_size, cfg.vae.seed)
    if len(frames) < 2:
        raise StorageError(f"{len(frames)} decodable frame(s) tonight, too few to train the first model; pass --model")
    from enrich_ray.embed.train import train_vae

    result = runtime.run_task(train_vae, frames, cfg.vae, cfg.decode, dst.uri(), cfg.storage, num_gpus=min(1.0, cfg.embed.num_gpus))
    return {"trained": True, "model_hash": result.model_hash, "metrics": result.metrics}


class _Night:
    """Tonight's frames after embedding, beside the catalog's history: the stages index to report and the
    commit. Rows: the history's frames (in catalog order) first, tonight's after them (n_hist on)."""

    def __init__(self, cat: Catalog, work: RunFolder, out: RunFolder, night: str, history: pd.DataFrame, hist_emb: np.ndarray,
                 resent: list[str], archive: str, cfg: Config):
        self.cat, self.work, self.out, self.night, self.archive, self.cfg = cat, work, out, night, archive, cfg
        self.history, self.hist_emb, self.resent = history, hist_emb, resent
        self.n_hist = len(history)

    @functools.cached_property
    def frames(self) -> tuple[pd.DataFrame, np.ndarray]:
        """Tonight's embedded frames and their vectors, read once (first asked after the embed stage)."""
        return schema.frames_and_vectors(self.work.read_table("embeddings"))

    @functools.cached_property
    def all_rows(self) -> tuple[pd.DataFrame, np.ndarray]:
        """Every frame (history, then tonight's, with their night) and every vector."""
        new_frames, new_emb = self.frames
        return pd.concat([self.history, new_frames.assign(night=self.night)], ignore_index=True), stack(self.hist_emb, new_emb)

    def index(self, rebuild: bool) -> dict:
        """Tonight's embeddings into a new index version; the kNN graph of tonight's frames among all."""
        from enrich_ray.index.shards import later_rows_graph

        _, new_emb = self.frames
        version = self.cat.add_to_index(self.hist_emb, new_emb, rebuild)
        _, emb = self.all_rows
        k = max(0, min(self.cfg.index.k, len(emb) - 1))
        graph = later_rows_graph(self.cat.load_index(version), emb, self.n_hist, k) if version and k else \
            KnnGraph(np.zeros((len(emb), 0), np.int64), np.zeros((len(emb), 0), np.float32))
        self.work.loc.fs.makedirs(self.work.path("knn").path, exist_ok=True)
        self.work.write_table("knn/graph.parquet", graph.to_arrow())
        return {"frames": len(new_emb), "k": k, "index_version": version}

    def _graph(self) -> KnnGraph:
        table = self.work.read_table("knn/graph.parquet")
        return KnnGraph.from_arrow(table) if table.num_rows else KnnGraph(np.zeros((0, 0), np.int64), np.zeros((0, 0), np.float32))

    def analyze(self) -> dict:
        """Duplicates (exact by pixel hash, near by both checks) and outliers of tonight's frames against
        the history, from the frames' evidence (tonight's computed, the history's from the catalog)."""
        from enrich_ray.analysis.duplicates import archive_duplicates, duplicate_families, later_duplicates
        from enrich_ray.analysis.evidence import evidence_table, join_evidence
        from enrich_ray.analysis.outliers import outliers_among_reference

        new_frames, _ = self.frames
        frames, emb = self.all_rows
        graph = self._graph()
        tonight = stages.frame_evidence(self.work, new_frames)
        evidence = join_evidence(self.cat.evidence(self.history), tonight)
        self.work.write_table("evidence.parquet", evidence_table(new_frames, tonight))
        groups = pd.DataFrame()
        if len(new_frames) and graph.k:
            groups = archive_duplicates(graph, emb, self.cfg.analysis, self.cfg.index, evidence["pixel_hash"],
                                        thumbs=evidence["thumbnail"], rows=np.arange(self.n_hist, len(emb)))
        self.work.write_table("groups.parquet", groups)
        dups = later_duplicates(groups, self.n_hist, self.resent, self.history["image_id"])
        if len(dups):
            dups = schema.with_keys(dups, frames).assign(night=frames["night"].iloc[dups["row"].to_numpy()].to_numpy())
        outl = pd.DataFrame(columns=["rank", "row", "score", "nn_similarity", "flagged", "reason"])
        if len(new_frames):
            outl = schema.with_keys(outliers_among_reference(self.n_hist, emb, evidence, duplicate_families(groups, len(emb)),
                                                             self.cfg.analysis, self.cfg.index, REFERENCE_FRAMES,
                                                             self.cfg.selection.random_seed), frames)
        self.out.write_table("duplicates.parquet", dups)
        self.out.write_table("outliers.parquet", outl)
        return {"duplicate_groups": int(dups["group_id"].nunique()) if len(dups) else 0,
                "outliers_flagged": int(outl["flagged"].sum()) if len(outl) else 0}

    def rank(self) -> dict:
        """ENRICH over tonight's frames, seeded by every labeled frame of the history; the manifest and
        tonight's list (top.csv): a seed frame drawn tonight (no labeled set yet) first, then selection.k
        picks; the labeled seed frames are not asked again."""
        from enrich_ray.selection import rank
        from enrich_ray.selection.manifest import build_manifest, empty_manifest, frame_judgments
        from enrich_ray.selection.quota import quotas_for
        from enrich_ray.selection.seeds import seed_rows

        new_frames, new_emb = self.frames
        frames, _ = self.all_rows
        groups = self.work.read_table("groups.parquet").to_pandas()
        outl = self.out.read_table("outliers.parquet", columns=["row", "flagged"]).to_pandas()
        family, flag = frame_judgments(groups, outl, len(frames))
        labeled = self.cat.labeled_ids()
        lab_mask = self.history["image_id"].isin(labeled).to_numpy() if self.n_hist else np.zeros(0, bool)
        ranked = pd.concat([self.history[lab_mask].drop(columns=["night"]), new_frames], ignore_index=True)
        sop = archive_table(self.archive, ["image_id", "sop_uid"], self.cfg.storage).to_pandas()
        ranked["sop_uid"] = ranked["image_id"].map(dict(zip(sop["image_id"], sop["sop_uid"])))
        rows = np.concatenate([np.flatnonzero(lab_mask), self.n_hist + np.arange(len(new_frames))])
        if len(new_frames):
            emb = np.concatenate([self.hist_emb[lab_mask], new_emb]) if lab_mask.any() else new_emb
            seed = np.arange(int(lab_mask.sum()), dtype=np.int64) if lab_mask.any() else seed_rows(len(new_frames), self.cfg.selection, None)
            sel = dataclasses.replace(self.cfg.selection, k=None)
            ranking = rank(sel.ranker, emb, seed, None, sel, progress=True, quotas=quotas_for(ranked, sel.quota))
            manifest = build_manifest(ranking, ranked, sel, emb, duplicate_group=family[rows], outlier_flag=flag[rows])
        else:
            ranking, manifest = None, empty_manifest()
        self.out.write_table("manifest.parquet", manifest)
        self.out.write_csv("manifest.csv", manifest)
        asked = ~manifest["image_id"].isin(labeled)
        drawn = int((manifest["is_seed"] & asked).sum())
        self.out.write_csv("top.csv", manifest[asked].head(drawn + (self.cfg.selection.k or len(manifest))))
        quota = {"quota": ranking.info["quota"]} if ranking is not None and "quota" in ranking.info else {}
        return {"ranked": int((~manifest["is_seed"]).sum()), "seed": int(lab_mask.sum()), "excluded": {}, **quota}

    def report(self, archive_ids: list[str], timings: dict) -> dict:
        """errors.parquet, summary.json and report.html of the night (with what it added to the catalog)."""
        from enrich_ray.analysis.duplicates import later_rows_with_earlier
        from enrich_ray.report.html import write_report

        new_frames, new_emb = self.frames
        errors = stages._errors(self.work, self.archive, self.cfg)
        self.out.write_table("errors.parquet", errors)
        manifest = self.out.read_table("manifest.parquet").to_pandas()
        counts = {
            "archive_images": len(archive_ids),
            "resent_images": len(self.resent),
            "new_images": self.work.marker("select")["new_images"],
            "frames_embedded": len(new_frames),
            **error_counts(errors),
            "labeled_seed_frames": self.work.marker("rank")["seed"],
            "ranked_tonight": int((~manifest["is_seed"]).sum()) if len(manifest) else 0,
            "history_frames": self.n_hist,
        }
        embedding = stages.embedding_summary(self.work, new_frames, new_emb, self.cfg)
        summary = {"night": self.night, "counts": counts, "embedding": embedding, "timings_s": dict(timings)}
        self.out.write_json("summary.json", summary)
        graph = self._graph()
        nn = graph.nn_similarity[self.n_hist:] if graph.k else np.zeros(0, np.float32)
        shown = manifest[~manifest["is_seed"]].copy() if len(manifest) else manifest
        row_of = {k: r for r, k in enumerate(zip(new_frames["image_id"], new_frames["frame_index"]))}
        if len(shown):
            shown["row"] = [row_of[k] for k in zip(shown["image_id"], shown["frame_index"])]
        thumbs = (lambda rows: stages._pixels_of(self.work, new_frames.iloc[list(rows)])) if self.cfg.report.thumbnails and len(new_frames) else None

        def tonight(df: pd.DataFrame) -> pd.DataFrame:
            """Tonight's rows of an analysis table, renumbered from 0 like the thumbnails."""
            return df[df["row"] >= self.n_hist].assign(row=lambda d: d["row"] - self.n_hist) if len(df) else df

        dups = self.out.read_table("duplicates.parquet").to_pandas()
        added = {"night": self.night, "frames_added": len(new_frames), "catalog_frames_before": self.n_hist,
                 "catalog_frames_after": self.n_hist + len(new_frames), "nights_in_catalog": len(set(self.cat.nights) | {self.night}),
                 "resent_images": len(self.resent), "exact_against_earlier": later_rows_with_earlier(dups, self.n_hist, "exact"),
                 "near_against_earlier": later_rows_with_earlier(dups, self.n_hist, "near"), "labeled_frames": counts["labeled_seed_frames"]}
        write_report(self.out.path("report.html").uri(), {"counts": counts, "run": {"night": self.night}, "embedding": embedding},
                     shown, tonight(dups), tonight(self.out.read_table("outliers.parquet").to_pandas()), errors, nn, thumbs,
                     self.cfg.report, self.cfg.storage, frames=new_frames, embeddings=new_emb, night=added)
        return {"counts": counts}

    def commit(self, index_version: str | None, model_hash: str, t0: float, timings: dict) -> NightResult:
        """The night's embeddings and evidence into the catalog, then catalog.json (the one write that makes it visible)."""
        new_frames, _ = self.frames
        self.cat.write_night(self.night, schema.result_rows(self.work.read_table("embeddings")), self.work.read_table("evidence.parquet"))
        summary = {**self.out.read_json("summary.json"), "model_hash": model_hash, "timings_s": dict(timings),
                   "seconds": round(time.perf_counter() - t0, 2)}
        self.out.write_json("summary.json", summary)
        previous = self.cat.state["index"]
        self.cat.commit(self.night, {"frames": len(new_frames), "archive": self.archive, "committed": now()}, index_version, model_hash)
        self.cat.run.clear([f"_work/{self.night}"] + ([f"index/{previous}"] if previous not in (None, index_version) else []))
        counts, where = summary["counts"], self.out.uri.rstrip("/")
        return NightResult(
            f"night {self.night}: {counts['new_images']} new images ({counts['frames_embedded']} frames embedded), "
            f"{counts['resent_images']} re-sent, {counts['unreadable_rows']} unreadable, {counts['no_image_rows']} without "
            f"an image; tonight's list: {where}/top.csv; report: {where}/report.html",
            0,
            where,
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
        copy_tree(resolve(model, cfg.storage), cat.run.path(model_dir))
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
            vectors.append(schema.frames_and_vectors(table)[1])
        version = cat.next_index_version()
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
