"""The curate job: archive → frames → embeddings → index and kNN graph → analyses → ranking → report.

Each stage reads what the stage before wrote under the run folder and ends by writing its
marker, so a rerun resumes at the first incomplete stage (docs/architecture.md §5). Ray runs the
distributed stages (decode, embed, and from index.distributed_min_frames frames the index and the
graph: index/partitioned.py); the analyses and the ranking run on the driver over numpy arrays.
Every embedding row is addressed by its position in the embeddings sorted by (image_id,
frame_index): the `row` of the graph, the duplicates, the outliers and the manifest, so results
never depend on the order a distributed stage wrote them in.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import platform
import time
from dataclasses import dataclass
from importlib import metadata
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from enrich_ray import schema
from enrich_ray.config import Config, ConfigError, config_dict, config_yaml
from enrich_ray.io.fs import StorageError, resolve
from enrich_ray.io.pack import ERRORS_NAME, archive_shards, archive_table
from enrich_ray.pipelines.run_folder import RunFolder
from enrich_ray.pipelines.stages import run_stages

log = logging.getLogger(__name__)

OUTPUTS = {
    "decode": ["decoded"],
    "train": ["model"],
    "embed": ["embeddings", "embed_state.json"],
    "index": ["index", "knn"],
    "analyze": ["duplicates.parquet", "outliers.parquet", "redundancy.json", "redundancy.png"],
    "rank": ["manifest.parquet", "manifest.csv", "excluded.parquet"],
    "report": ["errors.parquet", "summary.json", "report.html", "config.yaml", "leakage.parquet"],
}
TRAIN_SCRATCH = "_decoded"  # train-vae's decoded frames, under the model folder while it trains
EXIT_NOTHING_EMBEDDED = 3  # the job finished, but no frame could be embedded (every file unreadable)


@dataclass
class CurateResult:
    """Where the outputs are and the counts a person reads at the end."""

    out: str
    report: str
    counts: dict
    exit_code: int


def curate(archive: str, out: str, cfg: Config, model: str | None = None, force: bool = False) -> CurateResult:
    """Run every stage that is not complete yet; returns the result with the report's URI."""
    from enrich_ray import runtime

    if model:
        cfg = dataclasses.replace(cfg, embed=dataclasses.replace(cfg.embed, model=model))
    shards = archive_shards(archive, cfg.storage)
    if not shards:
        raise StorageError(f"archive {archive} holds no Parquet shards (part-*.parquet): pack it first")
    if cfg.analysis.leakage_split:  # a bad split stops the run before any work
        from enrich_ray.pipelines.leakage import split_placements

        split_placements(cfg.analysis.leakage_split, archive, cfg, "analysis.leakage_split")
    run = RunFolder(out, cfg.storage)
    run.open_run(cfg, force)
    train_here = cfg.embed.embedder == "vae" and not cfg.embed.model
    if train_here:
        cfg = dataclasses.replace(cfg, embed=dataclasses.replace(cfg.embed, model=run.path("model").uri()))

    timings: dict[str, float] = {}
    steps: dict[str, Callable[[], dict]] = {
        "decode": lambda: _decode(run, shards, cfg, runtime),
        "train": lambda: _train(run, cfg, runtime),
        "embed": lambda: _embed(run, cfg, runtime),
        "index": lambda: _index(run, cfg, runtime),
        "analyze": lambda: _analyze(run, archive, cfg),
        "rank": lambda: _rank(run, archive, cfg),
        "report": lambda: _report(run, archive, cfg, timings),
    }
    if not train_here:
        del steps["train"]
    run_stages(run, steps, OUTPUTS, force, timings, lambda: runtime.init(cfg.runtime))
    summary = run.read_json("summary.json")
    embedded = summary["counts"]["frames_embedded"]
    return CurateResult(
        out=out,
        report=run.path("report.html").uri(),
        counts=summary["counts"],
        exit_code=0 if embedded else EXIT_NOTHING_EMBEDDED,
    )


def _decode(run: RunFolder, shards: list[str], cfg: Config, runtime) -> dict:
    """Every archive row to frames or error rows, in Ray tasks, into decoded/."""
    ds = runtime.read_parquet(shards, cfg.storage)
    runtime.write_parquet(runtime.decode(ds, cfg.decode), run.path("decoded").uri(), cfg.storage)
    if not run.files("decoded"):  # an archive of no row (a night of re-sent images alone) writes no file
        run.loc.fs.makedirs(run.path("decoded").path, exist_ok=True)
        run.write_table("decoded/part-empty.parquet", schema.combine(schema.frames_schema(cfg.decode.size).empty_table(), schema.empty_errors()))
    stage_col = run.read_table("decoded", columns=["stage"]).column("stage")
    errors = int(pc.sum(pc.is_valid(stage_col)).as_py() or 0)
    return {"frames": len(stage_col) - errors, "errors": errors}


def _frames_sample(run: RunFolder, n: int, seed: int) -> np.ndarray:
    """A seeded sample of decoded frames as (n, size, size) float32, for training or fitting."""
    keys = run.read_table("decoded", columns=["image_id", "frame_index", "stage"])
    keys = schema.result_rows(keys).to_pandas().sort_values(["image_id", "frame_index"], kind="stable")
    if keys.empty:
        return np.zeros((0, 0, 0), np.float32)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(keys), size=min(n, len(keys)), replace=False))
    chosen = keys.iloc[pick]
    return _pixels_of(run, chosen)


def _pixels_of(run: RunFolder, keys: pd.DataFrame) -> np.ndarray:
    """The decoded pixels of the given frame keys, in the order given."""
    table = run.read_table(
        "decoded",
        columns=["image_id", "frame_index", "pixels"],
        filter=pc.field("image_id").isin(sorted(set(keys["image_id"]))) & pc.field("stage").is_null(),
    )
    width = table.schema.field("pixels").type.list_size
    side = int(round(width**0.5))
    flat = table.column("pixels").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    pixels = flat.reshape(len(table), side, side).astype(np.float32)
    where = {(i, int(f)): r for r, (i, f) in enumerate(zip(table.column("image_id").to_pylist(), table.column("frame_index").to_pylist()))}
    return pixels[[where[(i, int(f))] for i, f in zip(keys["image_id"], keys["frame_index"])]]


def _train(run: RunFolder, cfg: Config, runtime) -> dict:
    """Train the β-VAE on a seeded sample of the decoded frames, in a Ray task (on a GPU when configured)."""
    from enrich_ray.embed.train import train_vae

    frames = _frames_sample(run, cfg.vae.sample_size, cfg.vae.seed)
    if len(frames) < 2:
        log.warning("train: %d decoded frame(s), too few to train the β-VAE; nothing will be embedded", len(frames))
        return {"trained": False, "frames": int(len(frames))}
    result = runtime.run_task(train_vae, frames, cfg.vae, cfg.decode, run.path("model").uri(), cfg.storage,
                              num_gpus=min(1.0, cfg.embed.num_gpus))
    return {"trained": True, "model_hash": result.model_hash, "metrics": result.metrics}


def _embed(run: RunFolder, cfg: Config, runtime) -> dict:
    """Embed every decoded frame on the actor pool; with no frame to embed, write an empty table."""
    from enrich_ray.embed.registry import fit_state

    n_frames = schema.result_rows(run.read_table("decoded", columns=["stage"])).num_rows
    if n_frames == 0:
        run.loc.fs.makedirs(run.path("embeddings").path, exist_ok=True)
        empty = schema.combine(schema.embeddings_schema(cfg.vae.latent_dim).empty_table(), schema.empty_errors())
        run.write_table("embeddings/part-empty.parquet", empty)
        return {"embedded": 0, "errors": 0}
    state = None
    if cfg.embed.embedder == "pixels":
        state = fit_state(cfg.embed, cfg.decode, _frames_sample(run, cfg.vae.sample_size, cfg.vae.seed))
    elif cfg.embed.embedder == "precomputed":
        state = fit_state(cfg.embed, cfg.decode, schema.result_rows(run.read_table("decoded")).slice(0, 1024))
    elif not resolve(cfg.embed.model, cfg.storage).fs.exists(resolve(cfg.embed.model, cfg.storage).path):
        raise StorageError(f"no model at {cfg.embed.model}: {n_frames} decoded frame(s) are too few to train one; pass --model")
    state_uri = None
    if state is not None:  # the actors read it from the run folder, as they read the model from its folder
        run.write_bytes("embed_state.json", state.to_json().encode())
        state_uri = run.path("embed_state.json").uri()
    runtime.embed(run.files("decoded"), run.path("embeddings").uri(), cfg, state_uri)
    stage = run.read_table("embeddings", columns=["stage"]).column("stage")
    errors = int(pc.sum(pc.is_valid(stage)).as_py() or 0)
    return {"embedded": len(stage) - errors, "errors": errors}


def load_embeddings(run: RunFolder) -> tuple[pd.DataFrame, np.ndarray]:
    """The run's embedded frames and their unit vectors, sorted by frame key (the rows of everything after)."""
    return schema.frames_and_vectors(run.read_table("embeddings"))


def _index(run: RunFolder, cfg: Config, runtime) -> dict:
    """The similarity index and the kNN graph: on the driver over the embedding matrix, or from
    index.distributed_min_frames frames on in Ray tasks that read the embeddings files (_index_by_tasks)."""
    from enrich_ray.index.knn import KnnGraph, knn_graph
    from enrich_ray.index.shards import build_index

    n = schema.result_rows(run.read_table("embeddings", columns=["stage"])).num_rows
    if n >= max(2, cfg.index.distributed_min_frames):
        return _index_by_tasks(run, cfg, runtime)
    frames, emb = load_embeddings(run)
    run.loc.fs.makedirs(run.path("knn").path, exist_ok=True)
    if len(frames) == 0:
        run.write_table("knn/graph.parquet", KnnGraph(np.zeros((0, 0), np.int64), np.zeros((0, 0), np.float32)).to_arrow())
        return {"frames": 0}
    index = build_index(emb, cfg.index)
    index.save(run.path("index").uri(), cfg.storage)
    k = max(0, min(cfg.index.k, len(frames) - 1))
    graph = knn_graph(emb, k, cfg.index) if k else KnnGraph(np.zeros((len(frames), 0), np.int64), np.zeros((len(frames), 0), np.float32))
    table = graph.to_arrow().append_column("image_id", pa.array(frames["image_id"])).append_column(
        "frame_index", pa.array(frames["frame_index"], pa.int32())
    )
    run.write_table("knn/graph.parquet", table)
    return {"frames": len(frames), "k": k, "recall": graph.recall}


def embedding_files(run: RunFolder) -> list:
    """The embeddings' Parquet files (index.partitioned.VectorFile) with the frame row of each of their rows
    in load_embeddings' order (-1: an error row), from their key columns alone."""
    from enrich_ray.index.partitioned import VectorFile

    uris = run.files("embeddings")
    keys = []
    for uri in uris:
        loc = resolve(uri, run.storage)
        with loc.fs.open(loc.path, "rb") as fh:
            keys.append(pq.read_table(fh, columns=["image_id", "frame_index", "stage"]))
    table = pa.concat_tables(keys)
    frame = np.flatnonzero(pc.is_null(table.column("stage")).to_numpy(zero_copy_only=False))
    order = np.lexsort((table.column("frame_index").to_numpy(zero_copy_only=False)[frame],
                        table.column("image_id").to_numpy(zero_copy_only=False)[frame]))
    rows = np.full(table.num_rows, -1, np.int64)
    rows[frame[order]] = np.arange(len(frame))
    ends = np.cumsum([t.num_rows for t in keys])
    return [VectorFile(uri, part) for uri, part in zip(uris, np.split(rows, ends[:-1]))]


def _index_by_tasks(run: RunFolder, cfg: Config, runtime) -> dict:
    """The index and the graph built by Ray tasks from the embeddings files (index.partitioned): the
    driver reads the frame keys and samples only; the graph is written as Parquet parts under knn/."""
    from enrich_ray.index.partitioned import build_graph, build_index_parts

    files = embedding_files(run)
    n = sum(f.frames for f in files)
    build_index_parts(files, cfg.index, run.path("index").uri(), cfg.storage, runtime.map_tasks)
    k = min(cfg.index.k, n - 1)
    recall = build_graph(files, k, run.path("knn").uri(), cfg.index, cfg.storage, runtime.map_tasks)
    return {"frames": n, "k": k, "recall": recall, "built_by": "tasks"}


def load_graph(run: RunFolder):
    """The kNN graph written by the index stage: every Parquet file under knn/ (graph.parquet from the
    driver, or the part-*.parquet of the tasks; a `_`-prefixed scratch folder is not read), in any row order."""
    from enrich_ray.index.knn import KnnGraph

    table = run.read_table("knn")
    if table.num_rows == 0:
        return KnnGraph(np.zeros((0, 0), np.int64), np.zeros((0, 0), np.float32))
    return KnnGraph.from_arrow(table.select(["row", "neighbors", "similarities"]))


DUPLICATE_COLUMNS = ["group_id", "row", "kind", "similarity", "content_similarity", "is_representative", "group_size",
                     "pixel_hash", "image_id", "frame_index", "source_uri"]


def _duplicates(archive: str, cfg: Config, frames: pd.DataFrame, emb: np.ndarray, graph, evidence: dict) -> pd.DataFrame:
    """Exact and near-duplicate groups (analysis.duplicates) of the run's frames, a row per path of each
    exact member; evidence: the frames' analysis.evidence (its pixel hashes and thumbnails)."""
    from enrich_ray.analysis.duplicates import archive_duplicates, rows_per_path

    if not len(frames):
        return pd.DataFrame(columns=DUPLICATE_COLUMNS)
    table = archive_table(archive, ["image_id", "source_uris"], cfg.storage).to_pandas()
    uris = frames["image_id"].map(dict(zip(table["image_id"], table["source_uris"])))
    uris = [list(u) if isinstance(u, (list, np.ndarray)) and len(u) else [s] for u, s in zip(uris, frames["source_uri"])]
    groups = archive_duplicates(graph, emb, cfg.analysis, cfg.index, evidence["pixel_hash"],
                                np.array([len(u) for u in uris], np.int64), evidence["thumbnail"] if graph.k else None)
    return rows_per_path(schema.with_keys(groups, frames), uris)[DUPLICATE_COLUMNS]


def frame_evidence(run: RunFolder, frames: pd.DataFrame) -> dict:
    """The model-free evidence (analysis.evidence) of each frame row, read batch by batch from decoded/."""
    from enrich_ray.analysis.evidence import DECODED_COLUMNS, MissingFrames, frame_evidence as evidence_of_frames

    try:
        return evidence_of_frames(run.scan("decoded", DECODED_COLUMNS, filter=pc.field("stage").is_null()), frames)
    except MissingFrames as exc:
        raise StorageError(f"the decoded table does not match the embeddings ({exc}): rerun with --force") from None


def _outliers(cfg: Config, frames: pd.DataFrame, emb: np.ndarray, graph, evidence: dict, dups: pd.DataFrame) -> pd.DataFrame:
    """The outlier table (analysis.outliers) of the run's frames, near-twin groups judged whole by dups'
    families; the graph must have neighbours."""
    from enrich_ray.analysis.duplicates import duplicate_families
    from enrich_ray.analysis.outliers import neighbourhood_space, outlier_table

    space = neighbourhood_space(cfg.analysis.outlier_space, graph, emb, evidence["thumbnail"], cfg.analysis.outlier_scales, cfg.index)
    return schema.with_keys(outlier_table(*space, evidence["appearance"], evidence["header"],
                                          duplicate_families(dups, len(frames)), cfg.analysis), frames)


def _analyze(run: RunFolder, archive: str, cfg: Config) -> dict:
    from enrich_ray.analysis.redundancy import redundancy_stats
    from enrich_ray.report.plots import redundancy_png

    frames, emb = load_embeddings(run)
    graph = load_graph(run)
    evidence = frame_evidence(run, frames)
    dups = _duplicates(archive, cfg, frames, emb, graph, evidence)
    if len(frames) and graph.k:
        nn = graph.nn_similarity
        groups = frames[[c for c in schema.GROUP_KEYS if c in frames.columns]]
        stats = redundancy_stats(nn, groups)
        run.write_bytes("redundancy.png", redundancy_png(nn))  # drawn in memory: no scratch file on the driver's disk
        outl = _outliers(cfg, frames, emb, graph, evidence, dups)
    else:
        stats = {}
        outl = pd.DataFrame(columns=["rank", "row", "score", "nn_similarity", "flagged", "reason", "image_id", "frame_index", "source_uri"])
    run.write_table("duplicates.parquet", dups)
    run.write_table("outliers.parquet", outl)
    run.write_json("redundancy.json", stats)
    return {
        "duplicate_groups": int(dups["group_id"].nunique()) if len(dups) else 0,
        "outliers_flagged": int(outl["flagged"].sum()) if len(outl) else 0,
    }


def _rank(run: RunFolder, archive: str, cfg: Config) -> dict:
    from enrich_ray.selection import rank
    from enrich_ray.selection.junk import excluded_rows
    from enrich_ray.selection.manifest import build_manifest, empty_manifest, frame_judgments
    from enrich_ray.selection.quota import quotas_for
    from enrich_ray.selection.rankers import rank_toward_exemplars
    from enrich_ray.selection.seeds import seed_rows

    frames, emb = load_embeddings(run)
    dups = run.read_table("duplicates.parquet").to_pandas()
    outl = run.read_table("outliers.parquet").to_pandas()
    group, flag = frame_judgments(dups, outl, len(frames))
    sop = archive_table(archive, ["image_id", "sop_uid"], cfg.storage).to_pandas()
    frames = frames.assign(sop_uid=frames["image_id"].map(dict(zip(sop["image_id"], sop["sop_uid"]))))
    if len(frames) == 0:
        empty = empty_manifest()
        run.write_table("manifest.parquet", empty)
        run.write_csv("manifest.csv", empty)
        run.write_table("excluded.parquet", pd.DataFrame(columns=EXCLUDED_COLUMNS))
        return {"ranked": 0, "excluded": {}}
    junk, keep = excluded_rows(outl, dups, len(frames), cfg.selection)
    excluded = schema.with_keys(junk, frames)[EXCLUDED_COLUMNS]
    run.write_table("excluded.parquet", excluded)
    frames, emb, group, flag = frames.iloc[keep].reset_index(drop=True), emb[keep], group[keep], flag[keep]
    labeled = labeled_mask(cfg.selection.seed_manifest, frames, cfg)
    seed = seed_rows(len(frames), cfg.selection, labeled)
    sel = cfg.selection
    if sel.ranker == "smi" and sel.smi_query and _is_folder(sel.smi_query, cfg):
        ranking = rank_toward_exemplars(emb, seed, exemplar_embeddings(sel.smi_query, run, cfg), sel.k, sel)
    else:
        query = query_rows(sel.smi_query, frames, cfg) if sel.ranker == "smi" else None
        ranking = rank(sel.ranker, emb, seed, sel.k, sel, query=query, progress=True, quotas=quotas_for(frames, sel.quota))
    manifest = build_manifest(ranking, frames, cfg.selection, emb, duplicate_group=group, outlier_flag=flag)
    run.write_table("manifest.parquet", manifest)
    run.write_csv("manifest.csv", manifest)
    quota = {"quota": ranking.info["quota"]} if "quota" in ranking.info else {}
    return {"ranked": len(manifest), "seed": len(seed), "excluded": excluded["why"].value_counts().to_dict(), **quota}


EXCLUDED_COLUMNS = ["row", "why", "reason", "image_id", "frame_index", "source_uri"]


def _is_folder(uri: str, cfg: Config) -> bool:
    loc = resolve(uri, cfg.storage)
    return loc.fs.isdir(loc.path)


def exemplar_embeddings(folder: str, run: RunFolder, cfg: Config) -> np.ndarray:
    """A folder of exemplar images embedded by the run's own embedder: the targeted ranker's query set."""
    from enrich_ray.decode.stage import decode_files
    from enrich_ray.embed.registry import make_embedder, state_from_json

    frames = decode_files([folder], cfg.decode, cfg.storage)
    if frames.num_rows == 0:
        raise ConfigError(f"selection.smi_query {folder}: no decodable exemplar image in the folder")
    state_file = run.path("embed_state.json")
    state = state_from_json(state_file.fs.cat_file(state_file.path).decode()) if state_file.fs.exists(state_file.path) else None
    embeddings, _ = make_embedder(cfg.embed, cfg.decode, cfg.storage, state).embed_batch(frames)
    return schema.frames_and_vectors(embeddings)[1]


def query_rows(smi_query: str | None, frames: pd.DataFrame, cfg: Config) -> np.ndarray:
    """Rows of the targeted ranker's query set Q, from a file of image ids (selection.smi_query)."""
    if not smi_query:
        raise ConfigError("selection.ranker=smi needs selection.smi_query: a CSV or Parquet file of exemplar image ids")
    rows = np.flatnonzero(labeled_mask(smi_query, frames, cfg, "selection.smi_query"))
    if not rows.size:
        raise ConfigError(f"selection.smi_query {smi_query}: none of its image ids is among the embedded frames")
    return rows


def labeled_mask(uri: str | None, frames: pd.DataFrame, cfg: Config, setting: str = "selection.seed_manifest") -> np.ndarray | None:
    """Which frames a file of image ids names (a CSV or Parquet with an image_id column): the labeled set."""
    if not uri:
        return None
    named = id_file(uri, cfg, setting)
    if "image_id" not in named.columns:
        raise StorageError(f"{setting} {uri} has no image_id column")
    return frames["image_id"].isin(set(named["image_id"].astype(str))).to_numpy()


def id_file(uri: str, cfg: Config, setting: str) -> pd.DataFrame:
    """The CSV or Parquet file a setting names (image ids and what goes with them; a CSV's columns as text)."""
    loc = resolve(uri, cfg.storage)
    if not loc.fs.exists(loc.path):
        raise StorageError(f"{setting} not found: {uri}")
    parquet = loc.path.lower().endswith(".parquet")
    try:
        with loc.fs.open(loc.path, "rb") as fh:
            return pd.read_parquet(fh) if parquet else pd.read_csv(fh, dtype=str, keep_default_na=False)
    except ValueError as exc:  # not CSV or not Parquet (pandas' and Arrow's parse errors are ValueErrors)
        raise StorageError(f"{setting} {uri} cannot be read as {'Parquet' if parquet else 'CSV'}: {exc}") from None


def _errors(run: RunFolder, archive: str, cfg: Config) -> pd.DataFrame:
    """Every error row of the run: unreadable files (pack), undecodable images and frames, failed embeddings."""

    parts = []
    loc = resolve(archive, cfg.storage).join(ERRORS_NAME)
    if loc.fs.exists(loc.path):
        with loc.fs.open(loc.path, "rb") as fh:
            parts.append(pq.read_table(fh))
    parts.append(schema.error_rows(run.read_table("decoded", columns=[f.name for f in schema.ERRORS])))
    parts.append(schema.error_rows(run.read_table("embeddings", columns=[f.name for f in schema.ERRORS])))
    table = pa.concat_tables([p.cast(schema.ERRORS) for p in parts])
    return table.to_pandas().sort_values(["stage", "source_uri", "frame_index"], na_position="first", kind="stable").reset_index(drop=True)


def _versions() -> dict:
    names = ["enrich_ray", "ray", "torch", "numpy", "pyarrow", "faiss-cpu", "pydicom"]
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def embedding_summary(work: RunFolder, frames: pd.DataFrame, emb: np.ndarray, cfg: Config) -> dict:
    """The embedding block of summary.json and of the report, the same for curate and nightly:
    participation ratio, embedding_health on a seeded sample (its decoded pixels read from
    `work`), and the model's training figures when its folder has them (metrics.json)."""
    from enrich_ray.embed import checkpoint
    from enrich_ray.embed.diagnostics import embedding_health, health_sample_rows, participation_ratio

    out: dict = {"embedder": cfg.embed.embedder, "dim": int(emb.shape[1]) if emb.size else None}
    if emb.size:
        out["participation_ratio"] = round(participation_ratio(emb), 3)
        rows = health_sample_rows(len(emb))
        out.update(embedding_health(emb[rows], _pixels_of(work, frames.iloc[rows])))
    if cfg.embed.embedder == "vae" and cfg.embed.model:
        metrics = resolve(cfg.embed.model, cfg.storage).join(checkpoint.METRICS_JSON)
        if metrics.fs.exists(metrics.path):
            trained = json.loads(metrics.fs.cat_file(metrics.path))
            out.update({k: trained[k] for k in ("active_units", "val_recon", "val_kl") if k in trained})
    return out


def _report(run: RunFolder, archive: str, cfg: Config, timings: dict) -> dict:
    from enrich_ray.decode.causes import error_counts

    frames, emb = load_embeddings(run)
    errors = _errors(run, archive, cfg)
    run.write_table("errors.parquet", errors)
    archive_rows = archive_table(archive, ["image_id"], cfg.storage).num_rows
    decoded = run.read_table("decoded", columns=["image_id", "frame_index", "stage"])
    frames_decoded = schema.result_rows(decoded).num_rows
    decode_file_errors = int(
        ((errors["stage"] == "decode") & errors["frame_index"].isna()).sum()
    )
    decode_frame_errors = int(((errors["stage"] == "decode") & errors["frame_index"].notna()).sum())
    embed_errors = int((errors["stage"] == "embed").sum())
    images_with_frames = schema.result_rows(decoded).column("image_id").unique()
    images_failed = set(errors.loc[errors["stage"] == "decode", "image_id"].dropna())  # whole-file or every frame
    accounted = len(set(images_with_frames.to_pylist()) | images_failed)
    manifest = run.read_table("manifest.parquet").to_pandas()
    counts = {
        "archive_images": archive_rows,
        "images_accounted": accounted,
        "frames_decoded": frames_decoded,
        "frames_embedded": len(frames),
        **error_counts(errors),
        "errors_decode_file": decode_file_errors,
        "errors_decode_frame": decode_frame_errors,
        "errors_embed": embed_errors,
        "errors_pack_unreadable": int((errors["stage"] == "pack").sum()),
        "ranked": len(manifest),
    }
    checks = {
        "every_image_decoded_or_error": accounted == archive_rows,
        "every_frame_embedded_or_error": frames_decoded == len(frames) + embed_errors,
    }
    embedding = embedding_summary(run, frames, emb, cfg)
    excluded = run.read_table("excluded.parquet").to_pandas()
    summary = {
        "run": {"archive": archive, "out": run.uri, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        "counts": counts,
        "checks": checks,
        "errors_by_type": errors.groupby(["stage", "error_type"]).size().rename("rows").reset_index().to_dict("records"),
        "redundancy": run.read_json("redundancy.json"),
        "embedding": embedding,
        "excluded_from_ranking": {str(k): int(v) for k, v in excluded["why"].value_counts().items()},
        "quota": run.marker("rank").get("quota"),  # selection.quota: its caps, whether it ended the ranking
        "index": run.marker("index").get("recall") or {},
        "timings_s": dict(timings),
        "versions": _versions(),
        "config": config_dict(cfg),
    }
    if cfg.analysis.leakage_split:
        from enrich_ray.pipelines.leakage import split_placements, write_leakage

        placements = split_placements(cfg.analysis.leakage_split, archive, cfg, "analysis.leakage_split")
        summary["leakage"] = write_leakage(run, cfg.analysis.leakage_split, frames, emb, placements)
    run.write_json("summary.json", summary)
    run.write_bytes("config.yaml", config_yaml(cfg).encode())
    write_run_report(run, summary, cfg, frames, emb)
    return {"counts": counts, "checks": checks}


def write_run_report(run: RunFolder, summary: dict, cfg: Config, frames: pd.DataFrame, emb: np.ndarray) -> None:
    """report.html of a curate run from its summary and tables: the report stage, and `enrich-ray leakage` after it."""
    from enrich_ray.report.html import write_report

    graph = load_graph(run)
    manifest = run.read_table("manifest.parquet").to_pandas()
    errors = run.read_table("errors.parquet").to_pandas()
    dups = run.read_table("duplicates.parquet").to_pandas()
    outl = run.read_table("outliers.parquet").to_pandas()
    if len(manifest) and "row" not in manifest.columns:
        row_of = {k: r for r, k in enumerate(zip(frames["image_id"], frames["frame_index"]))}
        manifest = manifest.assign(row=[row_of[k] for k in zip(manifest["image_id"], manifest["frame_index"])])
    thumbs = (lambda rows: _pixels_of(run, frames.iloc[list(rows)])) if cfg.report.thumbnails and len(frames) else None
    nn = graph.nn_similarity if graph.k else np.zeros(0, np.float32)
    leakage = run.read_table("leakage.parquet").to_pandas() if "leakage" in summary else None
    write_report(run.path("report.html").uri(), summary, manifest, dups, outl, errors, nn, thumbs, cfg.report, cfg.storage,
                 frames=frames, embeddings=emb, leakage=leakage)


def train_model(archive: str, out: str, cfg: Config):
    """Decode an archive (into a scratch folder under `out`, on the same store: on a cluster every node
    reaches it) and train the β-VAE into `out`; returns the TrainResult."""
    from enrich_ray import runtime
    from enrich_ray.embed.train import train_vae

    shards = archive_shards(archive, cfg.storage)
    if not shards:
        raise StorageError(f"archive {archive} holds no Parquet shards (part-*.parquet): pack it first")
    model = RunFolder(out, cfg.storage)
    model.clear([TRAIN_SCRATCH])
    run = RunFolder(model.path(TRAIN_SCRATCH).uri(), cfg.storage)
    try:
        runtime.init(cfg.runtime)
        _decode(run, shards, cfg, runtime)
        frames = _frames_sample(run, cfg.vae.sample_size, cfg.vae.seed)
        if len(frames) < 2:
            raise StorageError(f"archive {archive} holds {len(frames)} decodable frame(s): too few to train on")
        return runtime.run_task(train_vae, frames, cfg.vae, cfg.decode, out, cfg.storage, num_gpus=min(1.0, cfg.embed.num_gpus))
    finally:
        model.clear([TRAIN_SCRATCH])
