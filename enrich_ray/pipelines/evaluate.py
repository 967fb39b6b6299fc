"""The evaluation job (paper Fig. 1 and Fig. 3): on a labeled dataset, does ranking help, and how
much labeling does it save?

For every embedder the training split is embedded and its redundancy measured (Fig. 1). For each
replicate a random seed set (the first fraction) is drawn; every ranker grows it, and at every
fraction a small ResNet is trained on the ranked subset (several model seeds) and scored by test
AUC. Each ranker is compared with random at each fraction, each fraction with the full training
set (two-sided Mann-Whitney U), and the smallest fraction that matches the full set gives the
labeling time saved (Fig. 3). Plain numpy and torch: no Ray, so anyone can run it on a laptop.

Output, under out/<dataset name>/: aucs.csv (one row per model), summary.csv, budget.csv,
embeddings.csv, summary.md, summary.json, auc_curves.png; out/redundancy.png redraws the
redundancy curves of every dataset evaluated into the same `out` (several datasets, one plot).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from enrich_ray.analysis.redundancy import plot_redundancy, redundancy_stats
from enrich_ray.config import Config, ConfigError, EvaluateConfig
from enrich_ray.embed import diagnostics
from enrich_ray.embed.beta_vae import INPUT_SIZE
from enrich_ray.embed.device import best_device, frames_to_device
from enrich_ray.embed.registry import fit_state, make_embedder
from enrich_ray.embed.train import sample_indices, train_vae
from enrich_ray.evaluate.classifier import TrainSettings, auc, limit_threads, predict_proba, train_classifier
from enrich_ray.evaluate.datasets import LabeledImages, load_dataset
from enrich_ray.evaluate.plots import plot_auc_curves
from enrich_ray.evaluate.stats import mann_whitney_p, significance_mark, smallest_matching_fraction
from enrich_ray.index.knn import knn_graph
from enrich_ray.selection import rank
from enrich_ray.selection.seeds import seed_rows

log = logging.getLogger(__name__)

NN_SIMILARITY_FILE = "nn_similarity.npz"  # per embedder, for the cross-dataset redundancy plot
REDUNDANCY_PLOT = "redundancy.png"
ENCODE_BATCH = 512


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
    for key in ("replicates", "models_per_replicate", "train_steps", "batch_size", "width"):
        if getattr(ev, key) < 1:
            raise ConfigError(f"evaluate.{key}: must be at least 1, got {getattr(ev, key)}")
    if not 0 < ev.alpha < 1:
        raise ConfigError(f"evaluate.alpha: must lie in (0, 1), got {ev.alpha}")


def subset_sizes(fractions: list[float], n_train: int) -> list[int]:
    """Images in each ranked subset: round(fraction * n_train), at least 1 and strictly growing."""
    sizes = [max(1, int(round(f * n_train))) for f in fractions]
    if len(set(sizes)) != len(sizes):
        raise ConfigError(f"evaluate.fractions: {fractions} give repeated subset sizes {sizes} for {n_train} training images")
    return sizes


def _vae_embedder(frames: np.ndarray, cfg: Config, out: Path):
    """The β-VAE embedder: embed.model when given, else one trained here on the training frames."""
    model = cfg.embed.model
    if model is None:
        rows = sample_indices(len(frames), cfg.vae)
        x64 = frames_to_device(frames[rows], torch.device("cpu"), INPUT_SIZE)[:, 0].numpy()
        model = train_vae(x64, cfg.vae, cfg.decode, str(out / "vae"), cfg.storage, progress=True).out
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


def embed_training_split(frames: np.ndarray, name: str, cfg: Config, out: Path) -> tuple[np.ndarray, dict]:
    """Unit embeddings of the training frames by one embedder, with its effective dimension
    (participation ratio), active units (β-VAE only) and redundancy statistics."""
    t0 = time.perf_counter()
    if name == "vae":
        embedder = _vae_embedder(frames, cfg, out)
        active: int | None = _active_units(embedder, frames)
    else:
        embed_cfg = dataclasses.replace(cfg.embed, embedder="pixels")
        embedder = make_embedder(embed_cfg, cfg.decode, state=fit_state(embed_cfg, cfg.decode, frames))
        active = None
    unit = embedder.embed_array(frames)
    facts = {
        "embedder": name,
        "dim": int(unit.shape[1]),
        "effective_dimension": diagnostics.participation_ratio(unit),
        "active_units": active,
        "seconds": time.perf_counter() - t0,
    }
    return unit, facts


def _replicate_rankings(units: dict[str, np.ndarray], ev: EvaluateConfig, cfg: Config,
                        data: LabeledImages, train: np.ndarray, replicate: int, sizes: list[int]) -> dict[tuple[str, str], np.ndarray]:
    """Training-split row orders of one replicate, seed set first and sizes[-1] long:
    {(embedder, ranker): order}; random, which ignores the embedding, once as ('none', 'random')."""
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


def summarize(aucs: pd.DataFrame, ev: EvaluateConfig, n_train: int, seconds_per_image: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per (embedder, ranker, fraction): mean, sd, p against random and against the full set; and
    per (embedder, ranker): the smallest fraction matching the full set and the labeling it saves."""
    full = aucs[aucs["ranker"] == "full"]["auc"].to_numpy()
    ranked = aucs[aucs["ranker"] != "full"]
    embedders = [e for e in dict.fromkeys(ranked["embedder"]) if e != "none"]
    rows, budget = [], []
    for embedder in embedders:
        part = ranked[(ranked["embedder"] == embedder) | (ranked["ranker"] == "random")]
        for ranker in dict.fromkeys(part["ranker"]):
            fracs, p_full = [], []
            for fraction in ev.fractions:
                cell = part[(part["ranker"] == ranker) & np.isclose(part["fraction"], fraction)]
                base = part[(part["ranker"] == "random") & np.isclose(part["fraction"], fraction)]["auc"].to_numpy()
                is_seed = fraction == ev.fractions[0]
                p_random = np.nan if ranker == "random" or is_seed else mann_whitney_p(cell["auc"], base)
                p = mann_whitney_p(cell["auc"], full)
                fracs.append(fraction)
                p_full.append(p)
                rows.append({
                    "embedder": embedder, "ranker": ranker, "fraction": fraction, "n_train": int(cell["n_train"].iloc[0]),
                    "n_models": len(cell), "auc_mean": cell["auc"].mean(), "auc_sd": cell["auc"].std(ddof=1) if len(cell) > 1 else 0.0,
                    "p_vs_random": p_random, "vs_random": "" if np.isnan(p_random) else significance_mark(p_random),
                    "p_vs_full": p, "matches_full": bool(p > ev.alpha), "seed_set": is_seed,
                })
            if ranker == "random" and embedder != embedders[0]:
                continue  # random ignores the embedding: one budget row
            smallest = smallest_matching_fraction(fracs, p_full, ev.alpha)
            needed = n_train if smallest is None else int(round(smallest * n_train))
            budget.append({
                "embedder": "none" if ranker == "random" else embedder, "ranker": ranker,
                "smallest_matching_fraction": smallest, "images_needed": needed, "images_saved": n_train - needed,
                "labeling_hours_saved": (n_train - needed) * seconds_per_image / 3600,
            })
    return pd.DataFrame(rows), pd.DataFrame(budget)


def redraw_redundancy(out: Path) -> Path:
    """Draw the redundancy curves (paper Fig. 1) of every dataset evaluated under `out` on one plot."""
    curves: dict[str, np.ndarray] = {}
    for path in sorted(out.glob(f"*/{NN_SIMILARITY_FILE}")):
        with np.load(path) as npz:
            for embedder in npz.files:
                curves[f"{path.parent.name} · {embedder}"] = npz[embedder]
    plot_redundancy(curves, out / REDUNDANCY_PLOT)
    return out / REDUNDANCY_PLOT


def run_evaluation(dataset: str, cfg: Config, out: str) -> dict:
    """Rank, train and compare on a labeled dataset (MedMNIST .npz or archive with label and split
    columns); write the tables and plots under out/<dataset name>/ and return the summary."""
    ev = cfg.evaluate
    check_evaluate_config(ev)
    limit_threads()
    t_start = time.perf_counter()
    data, undecodable = load_dataset(dataset, cfg.decode, ev.label_column, ev.split_column, cfg.storage)
    train, test = data.rows("train"), data.rows("test")
    if len(train) < 2 or len(test) < 2:
        raise ValueError(f"{dataset}: need a train and a test split, got {len(train)} train and {len(test)} test images")
    if np.unique(data.labels[test]).size < 2:
        raise ValueError(f"{dataset}: the test split holds one class only, so AUC is undefined")
    sizes = subset_sizes(ev.fractions, len(train))
    root = Path(out)
    run_dir = root / data.name
    run_dir.mkdir(parents=True, exist_ok=True)
    log.info("%s: %d train, %d test images of %d px, classes %s", data.name, len(train), len(test), data.images.shape[1], data.classes)

    units, graphs, facts = {}, {}, []
    for name in ev.embedders:
        units[name], fact = embed_training_split(data.images[train], name, cfg, run_dir)
        graphs[name] = knn_graph(units[name], cfg.index.k, cfg.index)
        stats = redundancy_stats(graphs[name].nn_similarity)
        facts.append({**fact, **{f"nn_{k}": v for k, v in stats.items() if k.startswith("share_above") or k == "median"}})
        log.info("%s embedding: effective dimension %.1f, active units %s", name, fact["effective_dimension"],
                 "n/a" if fact["active_units"] is None else fact["active_units"])
    np.savez(run_dir / NN_SIMILARITY_FILE, **{name: graphs[name].nn_similarity for name in ev.embedders})

    settings = TrainSettings(steps=ev.train_steps, batch_size=ev.batch_size, lr=ev.lr, width=ev.width,
                             device=best_device(), amp=cfg.embed.amp)
    n_classes = len(data.classes)
    test_images, test_labels = data.images[test], data.labels[test]
    cache: dict[tuple[bytes, int], float] = {}
    train_seconds: list[float] = []

    def fit_auc(rows: np.ndarray, model_seed: int) -> float:
        """Test AUC of a classifier on these training-split rows; identical subsets train once."""
        key = (np.sort(rows).tobytes(), model_seed)
        if key not in cache:
            t0 = time.perf_counter()
            model = train_classifier(data.images[train[rows]], data.labels[train[rows]], n_classes, model_seed, settings)
            cache[key] = auc(test_labels, predict_proba(model, test_images, settings))
            train_seconds.append(time.perf_counter() - t0)
        return cache[key]

    records = []
    all_rows = np.arange(len(train))
    for r in range(ev.replicates):
        t_rank = time.perf_counter()
        orders = _replicate_rankings(units, ev, cfg, data, train, r, sizes)
        log.info("replicate %d/%d: %d rankings in %.1f s", r + 1, ev.replicates, len(orders), time.perf_counter() - t_rank)
        for m in range(ev.models_per_replicate):
            model_seed = 1000 * ev.seed + r * ev.models_per_replicate + m
            base = {"dataset": data.name, "replicate": r, "model": m, "model_seed": model_seed}
            records.append({**base, "embedder": "none", "ranker": "full", "fraction": 1.0, "n_train": len(train),
                            "auc": fit_auc(all_rows, model_seed)})
            for (embedder, ranker), order in orders.items():
                for fraction, size in zip(ev.fractions, sizes):
                    records.append({**base, "embedder": embedder, "ranker": ranker, "fraction": fraction, "n_train": size,
                                    "auc": fit_auc(order[:size], model_seed)})
            log.info("replicate %d model %d: %d classifiers trained so far (%.1f s each)", r + 1, m + 1,
                     len(train_seconds), float(np.mean(train_seconds)))

    aucs = pd.DataFrame(records)
    summary, budget = summarize(aucs, ev, len(train), cfg.selection.seconds_per_image)
    full = aucs[aucs["ranker"] == "full"]["auc"]
    full_stats = (float(full.mean()), float(full.std(ddof=1)) if len(full) > 1 else 0.0)
    embeddings = pd.DataFrame(facts)
    aucs.to_csv(run_dir / "aucs.csv", index=False)
    summary.to_csv(run_dir / "summary.csv", index=False)
    budget.to_csv(run_dir / "budget.csv", index=False)
    embeddings.to_csv(run_dir / "embeddings.csv", index=False)
    plot_auc_curves(summary, full_stats, run_dir / "auc_curves.png", data.name)
    redundancy_png = redraw_redundancy(root)

    seconds = time.perf_counter() - t_start
    result = {
        "dataset": data.name,
        "source": dataset,
        "out": str(run_dir),
        "n_train": int(len(train)),
        "n_test": int(len(test)),
        "counts": data.counts(),
        "undecodable": undecodable,
        "classes": data.classes,
        "full_auc_mean": full_stats[0],
        "full_auc_sd": full_stats[1],
        "classifiers_trained": len(train_seconds),
        "seconds_per_classifier": float(np.mean(train_seconds)),
        "device": settings.device.type,
        "seconds": seconds,
        "budget": budget.to_dict(orient="records"),
        "embeddings": embeddings.to_dict(orient="records"),
        "files": {name: str(run_dir / name) for name in ("aucs.csv", "summary.csv", "budget.csv", "embeddings.csv",
                                                          "summary.md", "auc_curves.png")} | {"redundancy": str(redundancy_png)},
        "config": dataclasses.asdict(ev),
    }
    result["summary"] = f"{data.name}: full-set AUC {full_stats[0]:.3f} ± {full_stats[1]:.3f}; matched from " + ", ".join(
        f"{row.ranker}{'' if row.embedder == 'none' else '/' + row.embedder} "
        + ("never" if pd.isna(row.smallest_matching_fraction) else f"{row.smallest_matching_fraction:.0%}")
        for row in budget.itertuples()
    )
    (run_dir / "summary.md").write_text(_summary_markdown(result, summary, budget, embeddings))
    (run_dir / "summary.json").write_text(json.dumps(result, indent=2, default=str))
    log.info("%s (%.0f s)", result["summary"], seconds)
    return result


def _summary_markdown(result: dict, summary: pd.DataFrame, budget: pd.DataFrame, embeddings: pd.DataFrame) -> str:
    """The tables of one evaluation as markdown."""
    n = int(summary["n_models"].min())
    cols = ["embedder", "ranker", "fraction", "n_train", "n_models", "auc_mean", "auc_sd", "vs_random", "p_vs_random",
            "p_vs_full", "matches_full"]
    return "\n\n".join([
        f"# Evaluation: {result['dataset']}",
        f"{result['summary']}.",
        f"{result['n_train']} training and {result['n_test']} test images; {result['classifiers_trained']} classifiers "
        f"trained ({result['seconds_per_classifier']:.1f} s each on {result['device']}); {result['seconds']:.0f} s in all.",
        f"{n} AUCs per point: the smallest two-sided Mann-Whitney p between two points is {2 / math.comb(2 * n, n):.2g}, so "
        "'matches the full set' means only that no difference was detected at this sample size.",
        "## Embeddings\n\n" + _markdown_table(embeddings.drop(columns=["seconds"])),
        "## Labeling budget (smallest fraction indistinguishable from the full set, and every larger one too)\n\n"
        + _markdown_table(budget),
        "## AUC per fraction\n\n" + _markdown_table(summary[cols]),
    ]) + "\n"
