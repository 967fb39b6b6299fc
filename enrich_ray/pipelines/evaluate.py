"""The evaluation job (paper Fig. 1 and Fig. 3): on a labeled dataset, does ranking help, and how
much labeling does it save?

For every embedder the training split is embedded and its redundancy measured (Fig. 1), beside
scikit-image's faces and photographs embedded the same way. For each replicate a random seed set
(the first fraction) is drawn; every ranker grows it, and at every fraction a small ResNet is
trained to convergence on the ranked subset (early stopping on the validation split, several model
seeds) and scored by test AUC. Each ranker is compared with random at each fraction, each fraction
with the full training set (two-sided Mann-Whitney U, the difference in mean AUC with a Welch 95%
interval, the smallest difference the run could detect), and each ranker with random once more
with the seed set as the unit (the replicates' paired differences: t-interval, signed-rank p),
since the models of a point share their seed set's draw; the smallest fraction that matches the
full set gives the labeling time saved (Fig. 3). Plain numpy and torch: no Ray.

By default every replicate trains its own β-VAE (evaluate.vae_per_replicate), so the 30 AUCs of a
point span three trainings of the embedder as well as three seed sets and ten classifier seeds: on
CPU a training is bit-reproducible at one seed on one machine and thread count, but another thread
count or CPU kernel gives other weights, and one training is one draw of the ranking it feeds.

A long job: every finished classifier is appended to aucs.csv at once (model seed by model seed,
each across every replicate, so a run cut short still spans every seed set and β-VAE), and a rerun
into the same `out` with the same settings skips what aucs.csv holds (the embeddings are cached
beside it), so an interrupted run resumes and ends with the same aucs.csv. A rerun may also add
rankers or embedders: it trains only their classifiers, random's and the full set's are kept.

Output, under out/<dataset name>/: aucs.csv (one row per model), summary.csv, budget.csv,
embeddings.csv (one row per embedder and, for a β-VAE per replicate, per replicate),
summary.md, summary.json, auc_curves.png; out/redundancy.png redraws the
redundancy curves of every dataset evaluated into the same `out` (several datasets, one plot).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from enrich_ray.analysis.redundancy import plot_redundancy, redundancy_stats
from enrich_ray.config import Config, ConfigError, EvaluateConfig, VAEConfig
from enrich_ray.embed import diagnostics
from enrich_ray.embed.beta_vae import INPUT_SIZE
from enrich_ray.embed.device import best_device, frames_to_device
from enrich_ray.embed.registry import fit_state, make_embedder
from enrich_ray.embed.train import sample_indices, train_vae
from enrich_ray.evaluate.classifier import TrainSettings, auc, predict_proba, set_threads, train_classifier
from enrich_ray.evaluate.datasets import (LabeledImages, dataset_name, is_class_folder, load_dataset, natural_images,
                                          pack_class_folder, with_val_split)
from enrich_ray.evaluate.plots import plot_auc_curves
from enrich_ray.evaluate.stats import (mann_whitney_p, mean_difference_ci, minimum_detectable_difference, pooled_sd,
                                       seed_set_comparison, significance_mark, smallest_matching_fraction)
from enrich_ray.index.knn import knn_graph
from enrich_ray.selection import rank
from enrich_ray.selection.seeds import seed_rows
from enrich_ray.progress import progress_bar

log = logging.getLogger(__name__)

NN_SIMILARITY_FILE = "nn_similarity.npz"  # per embedder, for the cross-dataset redundancy plot
NATURAL_PREFIX = "scikit-image faces + photos"  # key prefix of the non-medical curves in NN_SIMILARITY_FILE
REDUNDANCY_PLOT = "redundancy.png"
AUCS_FILE = "aucs.csv"
UNITS_FILE = "embeddings.npz"  # the embeddings a resumed run ranks again
RUN_FILE = "run.json"  # the settings of the run, so a rerun resumes only the same run
SESSIONS_FILE = "sessions.csv"  # one row per finished session: what it trained, on what, in how long
AUC_COLUMNS = ["dataset", "replicate", "model", "model_seed", "embedder", "ranker", "fraction", "n_train",
               "steps", "best_step", "step_cap", "auc"]
ENCODE_BATCH = 512
VAE_SEED_STRIDE = 100  # replicate r's β-VAE trains at vae.seed + 100 r, clear of the seed + 1..3 one training draws
ENSEMBLE_SEED_STRIDE = 10  # vae_ensemble's member j at its replicate's seed + 10 (j + 1): clear of both
VAE_EMBEDDERS = ("vae", "vae_ensemble")  # trained on the run's own training split (per replicate by default)


def check_evaluate_config(ev: EvaluateConfig) -> None:
    """Stop before any work on settings the job cannot use; the message names the key."""
    f = np.asarray(ev.fractions, dtype=np.float64)
    if f.size < 2 or not ((f > 0) & (f < 1)).all() or (np.diff(f) <= 0).any():
        raise ConfigError(f"evaluate.fractions: need at least two ascending fractions in (0, 1), got {ev.fractions}")
    if "random" not in ev.rankers:
        raise ConfigError("evaluate.rankers: must include random, the control every ranker is compared with")
    if len(set(ev.rankers)) != len(ev.rankers) or len(set(ev.embedders)) != len(ev.embedders) or not ev.embedders:
        raise ConfigError("evaluate.rankers and evaluate.embedders: name each at most once, and at least one embedder")
    if "smi" in ev.rankers and ev.query_label is None:
        raise ConfigError("evaluate.rankers: smi needs evaluate.query_label (its query: the seed set's images of that class)")
    for key in ("replicates", "models_per_replicate", "ensemble_size", "max_epochs", "min_steps", "max_steps", "check_every", "patience",
                "batch_size", "width"):
        if getattr(ev, key) < 1:
            raise ConfigError(f"evaluate.{key}: must be at least 1, got {getattr(ev, key)}")
    if ev.ensemble_size * ENSEMBLE_SEED_STRIDE >= VAE_SEED_STRIDE:
        raise ConfigError(f"evaluate.ensemble_size: at most {VAE_SEED_STRIDE // ENSEMBLE_SEED_STRIDE - 1} "
                          f"(its seeds stay clear of the next replicate's), got {ev.ensemble_size}")
    if ev.min_steps > ev.max_steps:
        raise ConfigError(f"evaluate.min_steps: {ev.min_steps} exceeds evaluate.max_steps {ev.max_steps}")
    if ev.increment is not None and ev.increment < 1:
        raise ConfigError(f"evaluate.increment: must be at least 1 image, got {ev.increment}")
    if ev.threads < 0:
        raise ConfigError(f"evaluate.threads: must be 0 (torch's default) or more, got {ev.threads}")
    for key in ("alpha", "power", "val_fraction", "test_fraction"):
        if not 0 < getattr(ev, key) < 1:
            raise ConfigError(f"evaluate.{key}: must lie in (0, 1), got {getattr(ev, key)}")


def subset_sizes(fractions: list[float], n_train: int) -> list[int]:
    """Images in each ranked subset: round(fraction * n_train), at least 1 and strictly growing."""
    sizes = [max(1, int(round(f * n_train))) for f in fractions]
    if len(set(sizes)) != len(sizes):
        raise ConfigError(f"evaluate.fractions: {fractions} give repeated subset sizes {sizes} for {n_train} training images")
    return sizes


def subset_plan(ev: EvaluateConfig, n_train: int) -> list[int]:
    """The ranked subsets' sizes: from evaluate.fractions, or with evaluate.increment the paper's
    fixed increments (the seed set of the first fraction, then +increment images while below n_train)."""
    if ev.increment is None:
        return subset_sizes(ev.fractions, n_train)
    seed = subset_sizes(ev.fractions[:1], n_train)[0]
    sizes = list(range(seed, n_train, ev.increment))
    if len(sizes) < 2:
        raise ConfigError(f"evaluate.increment: {ev.increment} leaves no subset between the seed set ({seed}) and "
                          f"the {n_train} training images")
    return sizes


def replicate_vae(vae: VAEConfig, replicate: int) -> VAEConfig:
    """The β-VAE settings of one replicate's own embedder: the seed moved by VAE_SEED_STRIDE per replicate."""
    return dataclasses.replace(vae, seed=vae.seed + VAE_SEED_STRIDE * replicate)


def _vae_embedder(frames: np.ndarray, cfg: Config, vae_dir: Path):
    """The β-VAE embedder: embed.model when given, else one trained here on the training frames into vae_dir."""
    model = cfg.embed.model
    if model is None:
        rows = sample_indices(len(frames), cfg.vae)
        x64 = frames_to_device(frames[rows], torch.device("cpu"), INPUT_SIZE)[:, 0].numpy()
        model = train_vae(x64, cfg.vae, cfg.decode, str(vae_dir), cfg.storage, progress=True).out
    embed_cfg = dataclasses.replace(cfg.embed, embedder="vae", model=model)
    return make_embedder(embed_cfg, cfg.decode, cfg.storage)


@torch.inference_mode()
def _active_units(embedder, frames: np.ndarray) -> int:
    """Latent units whose mean KL over these frames exceeds diagnostics.ACTIVE_KL_NATS."""
    mus, logvars = [], []
    for start in range(0, len(frames), ENCODE_BATCH):
        x = frames_to_device(frames[start : start + ENCODE_BATCH], embedder.device, INPUT_SIZE)
        mu, logvar = embedder.model.encode(x)
        mus.append(mu.float().cpu().numpy())
        logvars.append(logvar.float().cpu().numpy())
    return diagnostics.active_units(diagnostics.mean_kl_per_unit(np.concatenate(mus), np.concatenate(logvars)))


def embed_training_split(frames: np.ndarray, name: str, cfg: Config, vae_dir: Path,
                         natural: np.ndarray | None = None) -> tuple[np.ndarray, dict, np.ndarray | None]:
    """Unit embeddings of the training frames by one embedder (a β-VAE trained here goes to vae_dir),
    with its effective dimension (participation ratio) and active units (β-VAE only); and of the
    non-medical images when given, embedded the same way (the β-VAE trained on these frames; the
    pixel baseline centred on their own mean)."""
    t0 = time.perf_counter()
    natural_unit = None
    if name == "vae_ensemble":
        return _ensemble_split(frames, cfg, vae_dir, natural, t0)
    if name == "vae":
        embedder = _vae_embedder(frames, cfg, vae_dir)
        active: int | None = _active_units(embedder, frames)
        if natural is not None:
            natural_unit = embedder.embed_array(natural)
    else:
        embed_cfg = dataclasses.replace(cfg.embed, embedder="pixels")
        embedder = make_embedder(embed_cfg, cfg.decode, state=fit_state(embed_cfg, cfg.decode, frames))
        active = None
        if natural is not None:
            natural_unit = make_embedder(embed_cfg, cfg.decode, state=fit_state(embed_cfg, cfg.decode, natural)).embed_array(natural)
    unit = embedder.embed_array(frames)
    facts = {
        "embedder": name,
        "dim": int(unit.shape[1]),
        "effective_dimension": diagnostics.participation_ratio(unit),
        "active_units": active,
        "seconds": time.perf_counter() - t0,
    }
    return unit, facts, natural_unit


def _rows_without_junk(unit: np.ndarray, images: np.ndarray, cfg: Config, n: int) -> np.ndarray:
    """The training rows 'enrich_clean' ranks: all but the junk curate would leave out (selection.junk)."""
    from enrich_ray.selection.junk import junk_of_images, ranking_rows

    junk = junk_of_images(unit, images, cfg.analysis, cfg.index)
    log.info("enrich_clean: %d of %d training images left out as junk (%s)", len(junk), n, junk["why"].value_counts().to_dict())
    return ranking_rows(n, junk, dataclasses.replace(cfg.selection, exclude_junk=True))


def _replicate_rankings(units: dict[str, np.ndarray], ev: EvaluateConfig, cfg: Config,
                        data: LabeledImages, train: np.ndarray, replicate: int, sizes: list[int],
                        kept: dict[str, np.ndarray] | None = None) -> dict[tuple[str, str], np.ndarray]:
    """Training-split row orders of one replicate, seed set first and sizes[-1] long:
    {(embedder, ranker): order}; random, which ignores the embedding, once as ('none', 'random');
    'enrich_clean' is ENRICH over the rows in kept[embedder] (junk left out) and the seed set."""
    sel = dataclasses.replace(cfg.selection, seed_count=sizes[0], seed_fraction=None, seed_manifest=None,
                              random_seed=ev.seed + replicate)
    seed = seed_rows(len(train), sel)
    k = sizes[-1] - len(seed)
    orders: dict[tuple[str, str], np.ndarray] = {}
    first = next(iter(units))
    orders[("none", "random")] = rank("random", units[first], seed, k, sel).order
    for embedder, unit in units.items():
        for ranker in ev.rankers:
            if ranker == "random":
                continue
            query = None
            if ranker == "smi":
                wanted = [i for i, c in enumerate(data.classes) if c == str(ev.query_label)]
                if not wanted:
                    raise ConfigError(f"evaluate.query_label: {ev.query_label!r} is not a class of {data.name} ({data.classes})")
                query = seed[data.labels[train[seed]] == wanted[0]]
                if len(query) == 0:
                    raise ConfigError(f"evaluate.query_label: the seed set of replicate {replicate} holds no image of class "
                                      f"{ev.query_label!r}; raise the first fraction")
            if ranker == "enrich_clean":
                rows = np.union1d((kept or {})[embedder], seed)
                if len(rows) < sizes[-1]:
                    raise ConfigError(f"evaluate.rankers: enrich_clean keeps {len(rows)} images, fewer than the "
                                      f"largest subset ({sizes[-1]}); lower the last fraction")
                local = rank("enrich", unit[rows], np.searchsorted(rows, seed), k, sel).order
                orders[(embedder, ranker)] = rows[local]
                continue
            orders[(embedder, ranker)] = rank(ranker, unit, seed, k, sel, query=query).order
    return orders


def _markdown_table(df: pd.DataFrame) -> str:
    """A pandas frame as a GitHub markdown table (floats to 4 significant digits)."""
    def cell(v) -> str:
        if isinstance(v, float):
            return "" if np.isnan(v) else f"{v:.4g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _compare(a: np.ndarray, b: np.ndarray, alpha: float, power: float) -> dict:
    """a against b: Mann-Whitney p, mean difference with its Welch 95% interval, and the smallest
    difference detectable at these sample sizes (pooled sd); NaN where a sample is too small."""
    out = {"p": mann_whitney_p(a, b), "diff": float(np.mean(a) - np.mean(b)), "low": np.nan, "high": np.nan, "mde": np.nan}
    if len(a) >= 2 and len(b) >= 2:
        _, out["low"], out["high"] = mean_difference_ci(a, b)
        out["mde"] = minimum_detectable_difference(pooled_sd(a, b), len(a), len(b), alpha, power)
    return out


def _by_seed_set(cell: pd.DataFrame, base: pd.DataFrame) -> dict:
    """A ranker's models against random's with the seed set as the unit (seed_set_comparison over
    the replicates both hold); NaN where fewer than two replicates are paired."""
    ranker_means, random_means = cell.groupby("replicate")["auc"].mean(), base.groupby("replicate")["auc"].mean()
    paired = ranker_means.index.intersection(random_means.index)
    if len(paired) < 2:
        return {"diff": np.nan, "low": np.nan, "high": np.nan, "p": np.nan, "n": len(paired)}
    diff, low, high, p = seed_set_comparison(ranker_means[paired], random_means[paired])
    return {"diff": diff, "low": low, "high": high, "p": p, "n": len(paired)}


def summarize(aucs: pd.DataFrame, ev: EvaluateConfig, n_train: int, seconds_per_image: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per (embedder, ranker, fraction): mean, sd; against random and against the full set the
    Mann-Whitney p, the difference in mean AUC with its Welch 95% interval and the smallest
    detectable difference; against random also the comparison by seed set; and per (embedder,
    ranker): the smallest fraction matching the full set and the labeling it saves. The smallest
    fraction in the table is the seed set."""
    full = aucs[aucs["ranker"] == "full"]["auc"].to_numpy()
    ranked = aucs[aucs["ranker"] != "full"]
    sizes = sorted(ranked["n_train"].unique())
    embedders = [e for e in dict.fromkeys(ranked["embedder"]) if e != "none"]
    rows, budget = [], []
    for embedder in embedders:
        part = ranked[(ranked["embedder"] == embedder) | (ranked["ranker"] == "random")]
        for ranker in dict.fromkeys(part["ranker"]):
            fracs, p_full = [], []
            for size in sizes:
                cell = part[(part["ranker"] == ranker) & (part["n_train"] == size)]
                base_cell = part[(part["ranker"] == "random") & (part["n_train"] == size)]
                base, values = base_cell["auc"].to_numpy(), cell["auc"].to_numpy()
                is_seed = size == sizes[0]
                vs_random = None if ranker == "random" or is_seed else _compare(values, base, ev.alpha, ev.power)
                by_seed_set = None if vs_random is None else _by_seed_set(cell, base_cell)
                vs_full = _compare(values, full, ev.alpha, ev.power)
                fraction = float(cell["fraction"].iloc[0])
                fracs.append(fraction)
                p_full.append(vs_full["p"])
                rows.append({
                    "embedder": embedder, "ranker": ranker, "fraction": fraction, "n_train": int(size),
                    "n_models": len(cell), "auc_mean": float(values.mean()),
                    "auc_sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                    **{f"{k}_vs_random": (np.nan if vs_random is None else vs_random[k]) for k in ("diff", "low", "high", "p", "mde")},
                    "vs_random": "" if vs_random is None else significance_mark(vs_random["p"]),
                    **{f"{k}_by_seed_set": (np.nan if by_seed_set is None else by_seed_set[k]) for k in ("diff", "low", "high", "p")},
                    "seed_sets": 0 if by_seed_set is None else by_seed_set["n"],
                    **{f"{k}_vs_full": vs_full[k] for k in ("diff", "low", "high", "p", "mde")},
                    "matches_full": bool(vs_full["p"] > ev.alpha), "seed_set": is_seed,
                    "steps_mean": float(cell["steps"].mean()), "stopped_early": float((cell["steps"] < cell["step_cap"]).mean()),
                })
            if ranker == "random" and embedder != embedders[0]:
                continue  # random ignores the embedding: one budget row
            smallest = smallest_matching_fraction(fracs, p_full, ev.alpha)
            needed = n_train if smallest is None else int(sizes[fracs.index(smallest)])
            budget.append({
                "embedder": "none" if ranker == "random" else embedder, "ranker": ranker,
                "smallest_matching_fraction": smallest, "images_needed": needed, "images_saved": n_train - needed,
                "labeling_hours_saved": (n_train - needed) * seconds_per_image / 3600,
            })
    return pd.DataFrame(rows), pd.DataFrame(budget)


def redraw_redundancy(out: Path) -> Path:
    """Draw the redundancy curves (paper Fig. 1) of every dataset evaluated under `out` on one plot;
    the non-medical images once per embedder (from the first run that embedded them)."""
    curves: dict[str, np.ndarray] = {}
    for path in sorted(out.glob(f"*/{NN_SIMILARITY_FILE}")):
        with np.load(path) as npz:
            for key in npz.files:
                if key.startswith(NATURAL_PREFIX):
                    label = f"{key} (via {path.parent.name})"
                    if not any(k.startswith(key) for k in curves):
                        curves[label] = npz[key]
                else:
                    curves[f"{path.parent.name} · {key}"] = npz[key]
    plot_redundancy(curves, out / REDUNDANCY_PLOT)
    return out / REDUNDANCY_PLOT


def _csv_line(record: dict) -> str:
    """One aucs.csv row, floats in full (repr) so a resumed run writes the same bytes."""
    return ",".join(repr(v) if isinstance(v, float) else str(v) for v in (record[c] for c in AUC_COLUMNS)) + "\n"


def _read_finished(path: Path) -> dict[tuple, dict]:
    """The rows of an earlier run's aucs.csv by (replicate, model, embedder, ranker, n_train); a
    last line cut short by an interruption is dropped, and the file rewritten without it."""
    text = path.read_text() if path.exists() else ""
    if "\n" not in text:  # new, or cut short before its header was complete
        path.write_text(",".join(AUC_COLUMNS) + "\n")
        return {}
    lines = text.split("\n")
    if lines[0] != ",".join(AUC_COLUMNS):
        raise ConfigError(f"{path}: not this job's aucs.csv (header {lines[0]!r}); use another --out")
    complete = lines[1:-1]  # the part after the last newline was cut short (or is empty)
    path.write_text("\n".join([lines[0], *complete]) + "\n")
    done = {}
    for line in complete:
        v = line.split(",")
        record = dict(zip(AUC_COLUMNS, v))
        for c in ("replicate", "model", "model_seed", "n_train", "steps", "best_step", "step_cap"):
            record[c] = int(record[c])
        record["fraction"], record["auc"] = float(record["fraction"]), float(record["auc"])
        done[(record["replicate"], record["model"], record["embedder"], record["ranker"], record["n_train"])] = record
    return done


ADDABLE = ("rankers", "embedders")  # evaluate settings a rerun may extend: their records have keys of their own
# selection settings the evaluation sets itself (each replicate draws its seed set from evaluate.fractions[0]
# and evaluate.seed), so a change of their defaults does not make a finished run another run
SEED_SET_KEYS = ("seed_count", "seed_fraction", "seed_manifest", "random_seed")


def _fixed_settings(settings: dict) -> dict:
    """The settings a rerun must share: all but the addable ones and the seed-set keys the job overrides."""
    fixed = {k: v for k, v in settings.items() if k not in ("evaluate", "selection")}
    fixed["evaluate"] = {k: v for k, v in settings.get("evaluate", {}).items() if k not in ADDABLE}
    fixed["selection"] = {k: v for k, v in settings.get("selection", {}).items() if k not in SEED_SET_KEYS}
    return fixed


def _check_same_run(run_dir: Path, settings: dict) -> None:
    """Write the run's settings, or check a rerun into the same folder has the same ones. A rerun
    may add rankers or embedders (each record is keyed by both, and random and the full set, shared
    by all, are kept); the file then lists every one the folder holds."""
    path = run_dir / RUN_FILE
    if path.exists():
        before = json.loads(path.read_text())
        fixed, kept = _fixed_settings(settings), _fixed_settings(before)
        changed = sorted(k for k in set(kept) | set(fixed) if kept.get(k) != fixed.get(k))
        if changed:
            raise ConfigError(f"{run_dir} holds a run with other settings ({', '.join(changed)} differ): "
                              "resume with the same settings (more rankers or embedders may be added) or use another --out")
        for k in ADDABLE:
            settings["evaluate"][k] = list(dict.fromkeys(before["evaluate"][k] + settings["evaluate"][k]))
    path.write_text(json.dumps(settings, indent=2, sort_keys=True, default=str))


def _ensemble_split(frames: np.ndarray, cfg: Config, vae_dir: Path, natural: np.ndarray | None,
                    t0: float) -> tuple[np.ndarray, dict, np.ndarray | None]:
    """embed_training_split of vae_ensemble: evaluate.ensemble_size β-VAEs trained apart (seeds
    vae.seed + ENSEMBLE_SEED_STRIDE (j + 1); each in vae_dir/member_j), their unit codes joined and scaled by
    1/sqrt(size), so a cosine is the members' mean cosine: a swing of one training averages out."""
    size = cfg.evaluate.ensemble_size
    parts, natural_parts, active = [], [], 0
    for j in range(size):
        member = dataclasses.replace(cfg, vae=dataclasses.replace(cfg.vae, seed=cfg.vae.seed + ENSEMBLE_SEED_STRIDE * (j + 1)))
        unit, fact, natural_unit = embed_training_split(frames, "vae", member, vae_dir / f"member_{j}", natural)
        parts.append(unit)
        natural_parts.append(natural_unit)
        active += fact["active_units"]
    scale = np.float32(1 / np.sqrt(size))
    unit = np.hstack(parts) * scale
    facts = {"embedder": "vae_ensemble", "dim": int(unit.shape[1]), "effective_dimension": diagnostics.participation_ratio(unit),
             "active_units": active, "seconds": time.perf_counter() - t0}
    return unit, facts, None if natural is None else np.hstack(natural_parts) * scale


def _embedding_keys(ev: EvaluateConfig, cfg: Config) -> list[tuple[str, int | None]]:
    """(embedder, replicate) of every embedding the run computes: replicate None for one shared by
    every seed set, or each replicate for a β-VAE trained per replicate (evaluate.vae_per_replicate)."""
    per_replicate = ev.vae_per_replicate and cfg.embed.model is None
    return [(name, r) for name in ev.embedders
            for r in (range(ev.replicates) if name in VAE_EMBEDDERS and per_replicate else [None])]


def _cache_key(name: str, replicate: int | None) -> str:
    return name if replicate is None else f"{name}_r{replicate}"


def _embeddings(data: LabeledImages, train: np.ndarray, ev: EvaluateConfig, cfg: Config,
                run_dir: Path) -> tuple[list[dict[str, np.ndarray]], dict[str, np.ndarray], pd.DataFrame]:
    """Unit embeddings of the training split per replicate and embedder, the kNN graph's 1-NN
    similarities (of the dataset and of the non-medical images, under replicate 0's β-VAE when each
    replicate has its own) and the embedding facts, one row per embedding; cached in run_dir so a
    resumed run ranks the very same vectors."""
    keys = _embedding_keys(ev, cfg)
    cache, facts_csv, nn_file = run_dir / UNITS_FILE, run_dir / "embeddings.csv", run_dir / NN_SIMILARITY_FILE
    vectors: dict[str, np.ndarray] = {}
    nn: dict[str, np.ndarray] = {}
    facts: list[dict] = []
    if cache.exists() and facts_csv.exists() and nn_file.exists():
        with np.load(cache) as npz:
            vectors = {k: npz[k] for k in npz.files}
        with np.load(nn_file) as npz:
            nn = {k: npz[k] for k in npz.files}
        facts = pd.read_csv(facts_csv).to_dict("records")
    missing = [k for k in keys if _cache_key(*k) not in vectors]
    if len(missing) < len(keys):
        log.info("%s: embeddings of an earlier run reused (%s)", data.name, cache)
    if missing:
        natural = natural_images(data.images.shape[1]) if ev.natural_images else None
        for name, r in missing:
            run_cfg = cfg if r is None else dataclasses.replace(cfg, vae=replicate_vae(cfg.vae, r))
            first = r in (None, 0)  # the embedding the redundancy curves show
            unit, fact, natural_unit = embed_training_split(data.images[train], name, run_cfg,
                                                            run_dir / _cache_key(name, r), natural if first else None)
            vectors[_cache_key(name, r)] = unit
            similarity = knn_graph(unit, cfg.index.k, cfg.index).nn_similarity
            if first:
                nn[name] = similarity
            stats = redundancy_stats(similarity)
            facts.append({"embedder": name, "replicate": "all" if r is None else r,
                          "vae_seed": run_cfg.vae.seed if name in VAE_EMBEDDERS and cfg.embed.model is None else None,
                          **{k: v for k, v in fact.items() if k != "embedder"},
                          **{f"nn_{k}": v for k, v in stats.items() if k.startswith("share_above") or k == "median"}})
            if natural_unit is not None:
                nn[f"{NATURAL_PREFIX} · {name}"] = knn_graph(natural_unit, min(cfg.index.k, len(natural_unit) - 1), cfg.index).nn_similarity
            log.info("%s embedding%s: effective dimension %.1f, active units %s", name,
                     "" if r is None else f" of replicate {r}", fact["effective_dimension"],
                     "n/a" if fact["active_units"] is None else fact["active_units"])
        np.savez(nn_file, **nn)
        pd.DataFrame(facts).to_csv(facts_csv, index=False)
        np.savez(cache, **vectors)
    units = [{name: vectors[_cache_key(name, r if (name, r) in keys else None)] for name in ev.embedders}
             for r in range(ev.replicates)]
    return units, nn, pd.read_csv(facts_csv)


def _load(dataset: str, cfg: Config, out: Path) -> tuple[LabeledImages, int, str]:
    """The dataset with a validation split; a folder of class subfolders is packed first into
    out/<name>/archive (labels from the folder names, a seeded test split). Returns it, the count
    left out as undecodable, and the URI that was read."""
    ev = cfg.evaluate
    uri = dataset
    if is_class_folder(dataset, cfg.storage):
        uri = str(out / dataset_name(dataset) / "archive")
        pack_class_folder(dataset, uri, ev.test_fraction, ev.seed, ev.label_column, ev.split_column, cfg.storage)
    data, undecodable = load_dataset(uri, cfg.decode, ev.label_column, ev.split_column, cfg.storage)
    if uri != dataset:
        data = dataclasses.replace(data, name=dataset_name(dataset))
    return with_val_split(data, ev.val_fraction, ev.seed), undecodable, uri


def run_evaluation(dataset: str, cfg: Config, out: str) -> dict:
    """Rank, train and compare on a labeled dataset (MedMNIST .npz, an archive with label and split
    columns, or a folder of class subfolders); write the tables and plots under out/<dataset name>/
    and return the summary. A rerun into the same out resumes where aucs.csv stops."""
    ev = cfg.evaluate
    check_evaluate_config(ev)
    if cfg.selection.quota:
        raise ConfigError("selection.quota: the evaluate job compares the rankers without quotas; drop it")
    if "vae_ensemble" in ev.embedders and cfg.embed.model is not None:
        raise ConfigError("evaluate.embedders: vae_ensemble trains its own β-VAEs; drop embed.model or use vae")
    set_threads(ev.threads)
    t_start = time.perf_counter()
    root = Path(out)
    data, undecodable, read_uri = _load(dataset, cfg, root)
    train, val, test = data.rows("train"), data.rows("val"), data.rows("test")
    if len(train) < 2 or len(test) < 2:
        raise ValueError(f"{dataset}: need a train and a test split, got {len(train)} train and {len(test)} test images")
    if np.unique(data.labels[test]).size < 2:
        raise ValueError(f"{dataset}: the test split holds one class only, so AUC is undefined")
    sizes = subset_plan(ev, len(train))
    run_dir = root / data.name
    run_dir.mkdir(parents=True, exist_ok=True)
    _check_same_run(run_dir, {
        "dataset": dataset, "n_train": int(len(train)), "n_val": int(len(val)), "n_test": int(len(test)),
        "evaluate": {k: v for k, v in dataclasses.asdict(ev).items() if k != "threads"},
        "vae": dataclasses.asdict(cfg.vae), "embed": dataclasses.asdict(cfg.embed), "decode_size": cfg.decode.size,
        "selection": {k: v for k, v in dataclasses.asdict(cfg.selection).items() if k not in SEED_SET_KEYS},
        "index_k": cfg.index.k,
    })
    log.info("%s: %d train, %d val, %d test images of %d px, classes %s", data.name, len(train), len(val), len(test),
             data.images.shape[1], data.classes)

    units, nn, embeddings = _embeddings(data, train, ev, cfg, run_dir)
    settings = TrainSettings(max_epochs=ev.max_epochs, min_steps=ev.min_steps, max_steps=ev.max_steps,
                             check_every=ev.check_every, patience=ev.patience, batch_size=ev.batch_size, lr=ev.lr,
                             width=ev.width, device=best_device(), amp=cfg.embed.amp)
    n_classes = len(data.classes)
    val_split = (data.images[val], data.labels[val]) if len(val) else None
    test_images, test_labels = data.images[test], data.labels[test]

    # Every classifier of the run, in a fixed order: a group is one training subset and model seed,
    # shared by the records it answers (the common seed set of every ranker, random under every embedder).
    all_rows = np.arange(len(train))
    junk_free: dict[int, np.ndarray] = {}  # by id of the embedding: replicates sharing one compute it once

    def kept(r: int) -> dict[str, np.ndarray]:
        if "enrich_clean" not in ev.rankers:
            return {}
        for unit in units[r].values():
            if id(unit) not in junk_free:
                junk_free[id(unit)] = _rows_without_junk(unit, data.images[train], cfg, len(train))
        return {name: junk_free[id(unit)] for name, unit in units[r].items()}

    replicate_orders = []
    for r in range(ev.replicates):
        t_rank = time.perf_counter()
        replicate_orders.append(_replicate_rankings(units[r], ev, cfg, data, train, r, sizes, kept(r)))
        log.info("replicate %d/%d: %d rankings in %.1f s", r + 1, ev.replicates, len(replicate_orders[r]),
                 time.perf_counter() - t_rank)
    groups: list[tuple[np.ndarray, int, list[dict]]] = []
    for m in range(ev.models_per_replicate):  # model seed first: a run cut short has every replicate
        for r, orders in enumerate(replicate_orders):
            model_seed = 1000 * ev.seed + r * ev.models_per_replicate + m
            base = {"dataset": data.name, "replicate": r, "model": m, "model_seed": model_seed}
            by_subset: dict[bytes, tuple[np.ndarray, list[dict]]] = {}
            subsets = [(("none", "full"), 1.0, all_rows)] + [
                ((embedder, ranker), size / len(train), order[:size])
                for (embedder, ranker), order in orders.items() for size in sizes]
            for (embedder, ranker), fraction, rows in subsets:
                rows = np.sort(rows)  # the model depends on the set of images, not on the ranking's order
                record = {**base, "embedder": embedder, "ranker": ranker, "fraction": float(fraction), "n_train": len(rows)}
                by_subset.setdefault(rows.tobytes(), (rows, []))[1].append(record)
            groups += [(rows, model_seed, records) for rows, records in by_subset.values()]

    aucs_path = run_dir / AUCS_FILE
    finished = _read_finished(aucs_path)

    def key(record: dict) -> tuple:
        return record["replicate"], record["model"], record["embedder"], record["ranker"], record["n_train"]

    done = sum(any(key(rec) in finished for rec in records) for _, _, records in groups)
    log.info("%s: %d classifiers in all, %d finished by an earlier run", data.name, len(groups), done)
    train_seconds: list[float] = []
    with aucs_path.open("a") as fh, progress_bar(total=len(groups), initial=done, desc=f"{data.name}: classifiers",
                                         unit="model", mininterval=30, smoothing=0.05) as bar:
        for rows, model_seed, records in groups:
            known = next((finished[key(rec)] for rec in records if key(rec) in finished), None)
            if known is None:
                t0 = time.perf_counter()
                fit = train_classifier(data.images[train[rows]], data.labels[train[rows]], n_classes, model_seed,
                                       settings, val_split)
                known = {"steps": fit.steps, "best_step": fit.best_step, "step_cap": fit.cap,
                         "auc": auc(test_labels, predict_proba(fit.model, test_images, settings))}
                train_seconds.append(time.perf_counter() - t0)
                bar.update(1)
                bar.set_postfix(s_per_model=f"{np.mean(train_seconds):.2f}", refresh=False)
            missing = [rec for rec in records if key(rec) not in finished]
            if missing:
                fh.write("".join(_csv_line({**rec, **{k: known[k] for k in ("steps", "best_step", "step_cap", "auc")}})
                                 for rec in missing))
                fh.flush()
            for rec in missing:
                finished[key(rec)] = {**rec, **known}

    aucs = pd.read_csv(aucs_path)
    summary, budget = summarize(aucs, ev, len(train), cfg.selection.seconds_per_image)
    full = aucs[aucs["ranker"] == "full"]["auc"]
    full_stats = (float(full.mean()), float(full.std(ddof=1)) if len(full) > 1 else 0.0)
    summary.to_csv(run_dir / "summary.csv", index=False)
    budget.to_csv(run_dir / "budget.csv", index=False)
    plot_auc_curves(summary, full_stats, run_dir / "auc_curves.png", data.name)
    redundancy_png = redraw_redundancy(root)

    seconds = time.perf_counter() - t_start
    device = settings.device.type if settings.device.type != "cuda" else torch.cuda.get_device_name(0)
    session = pd.DataFrame([{"finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "device": device,
                             "torch_threads": torch.get_num_threads(), "classifiers_trained": len(train_seconds),
                             "train_seconds": float(np.sum(train_seconds)), "seconds": seconds}])
    sessions_path = run_dir / SESSIONS_FILE
    session.to_csv(sessions_path, mode="a", header=not sessions_path.exists(), index=False)
    sessions = pd.read_csv(sessions_path)
    trained = int(sessions["classifiers_trained"].sum())
    result = {
        "dataset": data.name,
        "source": dataset,
        "read": read_uri,
        "out": str(run_dir),
        "n_train": int(len(train)),
        "n_val": int(len(val)),
        "n_test": int(len(test)),
        "side_px": int(data.images.shape[1]),
        "counts": data.counts(),
        "undecodable": undecodable,
        "classes": data.classes,
        "full_auc_mean": full_stats[0],
        "full_auc_sd": full_stats[1],
        "classifiers": len(groups),
        "classifiers_trained_now": len(train_seconds),
        "sessions": len(sessions),
        "seconds_per_classifier": float(sessions["train_seconds"].sum() / trained) if trained else None,
        "device": ", ".join(dict.fromkeys(sessions["device"].astype(str))),
        "torch_threads": ", ".join(dict.fromkeys(sessions["torch_threads"].astype(str))),
        "seconds": float(sessions["seconds"].sum()),
        "budget": budget.to_dict(orient="records"),
        "embeddings": embeddings.to_dict(orient="records"),
        "files": {name: str(run_dir / name) for name in (AUCS_FILE, "summary.csv", "budget.csv", "embeddings.csv",
                                                          "summary.md", "auc_curves.png")} | {"redundancy": str(redundancy_png)},
        "config": dataclasses.asdict(ev),
    }
    result["summary"] = f"{data.name}: full-set AUC {full_stats[0]:.3f} ± {full_stats[1]:.3f}; matched from " + ", ".join(
        f"{row.ranker}{'' if row.embedder == 'none' else '/' + row.embedder} "
        + ("never" if pd.isna(row.smallest_matching_fraction) else f"{row.smallest_matching_fraction:.0%}")
        for row in budget.itertuples()
    )
    (run_dir / "summary.md").write_text(summary_markdown(result, summary, budget, embeddings))
    (run_dir / "summary.json").write_text(json.dumps(result, indent=2, default=str))
    log.info("%s (%.0f s)", result["summary"], seconds)
    return result


def _pm(mean: float, sd: float) -> str:
    return f"{mean:.3f} ± {sd:.3f}"


def _effect(diff: float, low: float, high: float) -> str:
    if np.isnan(diff):
        return ""
    return f"{diff:+.3f}" + ("" if np.isnan(low) else f" [{low:+.3f}, {high:+.3f}]")


def _p(p: float) -> str:
    return "" if np.isnan(p) else f"{p:.2g}"


def summary_markdown(result: dict, summary: pd.DataFrame, budget: pd.DataFrame, embeddings: pd.DataFrame) -> str:
    """The tables of one evaluation as markdown, ready to paste into docs/evaluation.md."""
    n = int(summary["n_models"].min())
    table = pd.DataFrame({
        "embedder": summary["embedder"], "ranker": summary["ranker"],
        "fraction": [f"{f:.1%}" + (" (seed)" if s else "") for f, s in zip(summary["fraction"], summary["seed_set"])],
        "images": summary["n_train"], "models": summary["n_models"],
        "AUC mean ± sd": [_pm(m, s) for m, s in zip(summary["auc_mean"], summary["auc_sd"])],
        "Δ vs random [95% CI]": [_effect(*v) for v in zip(summary["diff_vs_random"], summary["low_vs_random"], summary["high_vs_random"])],
        "p vs random": [_p(p) for p in summary["p_vs_random"]],
        "mark": summary["vs_random"],
        "MDE vs random": ["" if np.isnan(v) else f"{v:.3f}" for v in summary["mde_vs_random"]],
        "Δ vs random by seed set [95% CI]": [_effect(*v) for v in zip(summary["diff_by_seed_set"], summary["low_by_seed_set"],
                                                                      summary["high_by_seed_set"])],
        "p by seed set": [_p(p) for p in summary["p_by_seed_set"]],
        "Δ vs full [95% CI]": [_effect(*v) for v in zip(summary["diff_vs_full"], summary["low_vs_full"], summary["high_vs_full"])],
        "p vs full": [_p(p) for p in summary["p_vs_full"]],
        "matches full": ["yes" if m else "no" for m in summary["matches_full"]],
        "steps (mean, % early stop)": [f"{s:.0f}, {e:.0%}" for s, e in zip(summary["steps_mean"], summary["stopped_early"])],
    })
    spc = result["seconds_per_classifier"]
    return "\n\n".join([
        f"# Evaluation: {result['dataset']}",
        f"{result['summary']}.",
        f"{result['n_train']} training, {result['n_val']} validation and {result['n_test']} test images at "
        f"{result['side_px']} px; {result['classifiers']} classifiers"
        + (f" ({spc:.2f} s each" if spc else " (none timed")
        + f" on {result['device']}, {result['torch_threads']} torch thread(s)); {result['seconds']:.0f} s in all over "
        f"{result['sessions']} session(s) (`{SESSIONS_FILE}`).",
        f"{n} AUCs per point. Δ: difference in mean AUC (ranker minus random, or minus the full set) with a Welch 95% "
        "t-interval; p: two-sided Mann-Whitney U; MDE: the smallest difference a two-sided t-test at α = 0.05 detects "
        "with power 0.8 at these n and the pooled sd (Mann-Whitney needs about 5% more). By seed set: the same Δ with "
        f"the seed set as the unit ({result['config']['replicates']} paired replicate means: one-sample t-interval, two-sided "
        "Wilcoxon signed-rank p, at least 2/2^replicates), since the models of a point share their seed set's draw. "
        "'matches full' means only that no difference from the full set was detected.",
        "## Labeling budget (smallest fraction indistinguishable from the full set, and every larger one too)\n\n"
        + _markdown_table(budget),
        "## AUC per fraction\n\n" + _markdown_table(table),
        "## Embeddings\n\n" + _markdown_table(embeddings.drop(columns=["seconds"])),
    ]) + "\n"
