"""Put an evaluation run's results into docs/evaluation.md: the summary.md of every dataset
(verbatim, headings demoted) between the <!-- results:start --> and <!-- results:end --> markers,
and its plots copied to docs/evaluation/; or, with --section NAME, the run's deciding tables
between <!-- NAME:start --> and <!-- NAME:end -->: each ranker against random per dataset and
fraction (Δ with its Welch 95% interval, Mann-Whitney p, the run's MDE), each fraction against the
full set with the classifiers' mean steps and the share stopped early, the same Δ within each
replicate (its own seed set and, under evaluate.vae_per_replicate, its own β-VAE) and with the seed
set as the unit (the replicates' mean over them, t-interval, signed-rank p), the full-set AUC
and budget with the run's time, and the β-VAE of every replicate (embeddings.csv); or, with
--section and --baseline, each ranker under the embedder against the same ranker under the baseline
embedder (the raw-pixel one) and the baseline's rankings against random. Nothing is typed by hand.

    .venv/bin/python jobs/evaluation_tables.py runs/evaluation/protocol30 [--doc docs/evaluation.md]
    .venv/bin/python jobs/evaluation_tables.py runs/evaluation/per_replicate_vae --section third-run \
        [--embedder vae] [--rankers typiclust,enrich]
    .venv/bin/python jobs/evaluation_tables.py runs/evaluation/converged --section sixth-run-pixels \
        --embedder vae --rankers typiclust_enrich,enrich --baseline pixels
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

import pandas as pd

from enrich_ray.evaluate.stats import mann_whitney_p, mean_difference_ci

START, END = "<!-- results:start -->", "<!-- results:end -->"
ORDER = ("pneumoniamnist", "breastmnist", "Dataset_BUSI_with_GT")  # the order of jobs/evaluate_all.sh
SHOWN = {"pneumoniamnist": "PneumoniaMNIST", "breastmnist": "BreastMNIST", "Dataset_BUSI_with_GT": "BUSI",
         "typiclust": "TypiClust", "typiclust_enrich": "TypiClust then ENRICH", "enrich": "ENRICH", "enrich_clean": "ENRICH without junk", "random": "random",
         "examine": "EXAMINE", "smi": "SMI"}


def results_markdown(out: Path, figures: Path, doc_dir: Path) -> str:
    """Every finished dataset's summary.md under out, its plot beside it, and the redundancy plot."""
    runs = sorted((p.parent for p in out.glob("*/summary.md")),
                  key=lambda p: (ORDER.index(p.name) if p.name in ORDER else len(ORDER), p.name))
    if not runs:
        raise SystemExit(f"no finished dataset under {out} (no */summary.md yet)")
    figures.mkdir(parents=True, exist_ok=True)
    parts = []
    for run in runs:
        plot = figures / f"{run.name}_auc.png"
        shutil.copyfile(run / "auc_curves.png", plot)
        text = re.sub(r"^(#+) ", lambda m: "#" * (len(m.group(1)) + 2) + " ", (run / "summary.md").read_text(), flags=re.M)
        parts.append(f"{text.strip()}\n\n![{run.name}, Fig. 3 style]({plot.relative_to(doc_dir).as_posix()})")
    if (out / "redundancy.png").exists():
        shutil.copyfile(out / "redundancy.png", figures / "redundancy.png")
        parts.append(f"### Redundancy (Fig. 1)\n\n![Redundancy curves]({(figures / 'redundancy.png').relative_to(doc_dir).as_posix()})")
    pending = [name for name in ORDER if not (out / name / "summary.md").exists()]
    if pending:
        parts.append(f"Results pending: run in progress for {', '.join(pending)}.")
    return "\n\n".join(parts)


def _runs(out: Path) -> list[Path]:
    """The dataset folders under out that hold a summary.csv, in the order of jobs/evaluate_all.sh."""
    runs = sorted((p.parent for p in out.glob("*/summary.csv")),
                  key=lambda p: (ORDER.index(p.name) if p.name in ORDER else len(ORDER), p.name))
    if not runs:
        raise SystemExit(f"no finished dataset under {out} (no */summary.csv yet)")
    return runs


def _shown(name: str) -> str:
    return SHOWN.get(name, name)


def _cell(diff: float, low: float, high: float, p: float, alpha: float) -> str:
    """'Δ [low, high], p', bold where p < alpha, '(worse)' where that difference is negative."""
    text = f"{diff:+.3f} [{low:+.3f}, {high:+.3f}], {p:.2g}"
    if p < alpha:
        text = f"**{text}**" + (" (worse)" if diff < 0 else "")
    return text


def deciding_tables(out: Path, embedder: str, rankers: list[str]) -> str:
    """The tables that decide issue 12's goals, from each dataset's summary.csv, summary.json,
    budget.csv, aucs.csv and embeddings.csv under out."""
    runs = _runs(out)
    alpha = json.loads((runs[0] / "summary.json").read_text())["config"]["alpha"]
    head = (["dataset", "fraction (images)", "models", "random AUC"] + [f"{_shown(r)} Δ [95% CI], p" for r in rankers]
            + [f"MDE ({'/'.join(_shown(r) for r in rankers)})"])
    vs_random = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    vs_full = ["| " + " | ".join(["dataset", "fraction"] + [f"{_shown(r)} Δ vs full [95% CI], p" for r in ["random", *rankers]]
                                 + ["steps (mean)", "stopped before the cap"]) + " |", "|" + "---|" * (len(rankers) + 5)]
    by_seed_set = ["| " + " | ".join(["dataset", "fraction", "seed sets"] + [f"{_shown(r)} Δ [95% CI], p" for r in rankers]) + " |",
                   "|" + "---|" * (len(rankers) + 3)]
    per_rep, budget_rows, vae_rows = [], [], []
    replicates: list[int] = []
    for run in runs:
        name = _shown(run.name)
        summary = pd.read_csv(run / "summary.csv")
        if "p_by_seed_set" not in summary:
            raise SystemExit(f"{run}/summary.csv has no comparison by seed set: rerun its enrich-ray evaluate, which "
                             "finds every model done and writes the summary again")
        summary = summary[(summary["embedder"] == embedder) & ~summary["seed_set"]]
        result = json.loads((run / "summary.json").read_text())
        for size in sorted(summary["n_train"].unique()):
            at = summary[summary["n_train"] == size].set_index("ranker")
            missing = [r for r in rankers if r not in at.index]
            if missing:
                raise SystemExit(f"{run}/summary.csv: no {', '.join(missing)} under {embedder}")
            rnd = at.loc["random"]
            cells = [_cell(at.loc[r, "diff_vs_random"], at.loc[r, "low_vs_random"], at.loc[r, "high_vs_random"],
                           at.loc[r, "p_vs_random"], alpha) for r in rankers]
            mde = "/".join(f"{at.loc[r, 'mde_vs_random']:.3f}" for r in rankers)
            models = int(min(at.loc[r, "n_models"] for r in ["random", *rankers]))
            vs_random.append(f"| {name} | {rnd['fraction']:.1%} ({size}) | {models} | {rnd['auc_mean']:.3f} ± "
                             f"{rnd['auc_sd']:.3f} | " + " | ".join(cells) + f" | {mde} |")
            full_cells = [_cell(at.loc[r, "diff_vs_full"], at.loc[r, "low_vs_full"], at.loc[r, "high_vs_full"],
                                at.loc[r, "p_vs_full"], alpha) for r in ["random", *rankers]]
            by_seed_set.append(f"| {name} | {rnd['fraction']:.1%} | {int(min(at.loc[r, 'seed_sets'] for r in rankers))} | "
                               + " | ".join(_cell(*at.loc[r, ["diff_by_seed_set", "low_by_seed_set", "high_by_seed_set",
                                                             "p_by_seed_set"]], alpha) for r in rankers) + " |")
            trained = at.loc[["random", *rankers]]
            vs_full.append(f"| {name} | {rnd['fraction']:.1%} | " + " | ".join(full_cells)
                           + f" | {trained['steps_mean'].mean():.0f} | {trained['stopped_early'].mean():.0%} |")
        aucs = pd.read_csv(run / "aucs.csv")
        aucs = aucs[aucs["embedder"].isin([embedder, "none"]) & (aucs["ranker"] != "full")]
        replicates = sorted(int(i) for i in aucs["replicate"].unique())
        means = aucs.groupby(["ranker", "n_train", "replicate"])["auc"].mean()
        seed_size = aucs["n_train"].min()
        for size in sorted(s for s in aucs["n_train"].unique() if s != seed_size):
            cells = [f"{means[(r, size, i)] - means[('random', size, i)]:+.3f}"
                     if (r, size, i) in means and ("random", size, i) in means else "" for r in rankers for i in replicates]
            per_rep.append(f"| {name} | {size / result['n_train']:.1%} | " + " | ".join(cells) + " |")
        budget = pd.read_csv(run / "budget.csv")
        parts = []
        for r in ["random", *rankers]:
            row = budget[budget["ranker"] == r].iloc[0]
            frac = row["smallest_matching_fraction"]
            parts.append("never" if pd.isna(frac) else f"{frac:.1%} ({int(row['images_needed'])} images, "
                                                         f"{row['labeling_hours_saved']:.2f} h saved)")
        spc = result["seconds_per_classifier"]
        budget_rows.append(f"| {name} | {result['n_train']} | {result['full_auc_mean']:.3f} ± {result['full_auc_sd']:.3f} | "
                           + " | ".join(parts) + f" | {result['classifiers']} | {spc:.2f} s | {result['seconds']:.0f} s |")
        emb = pd.read_csv(run / "embeddings.csv")
        for row in emb[emb["embedder"] == embedder].itertuples():
            vae_rows.append(f"| {name} | {row.replicate} | {'' if pd.isna(row.vae_seed) else int(row.vae_seed)} | "
                            f"{row.effective_dimension:.2f} | {'' if pd.isna(row.active_units) else int(row.active_units)} | "
                            f"{row.nn_median:.3f} | {row.seconds:.0f} s |")
    budget_head = (["dataset", "training images", "full-set AUC (mean ± sd)"]
                   + [f"{_shown(r)}: smallest fraction matching the full set" for r in ["random", *rankers]]
                   + ["classifiers", "per classifier", "wall time (all sessions)"])
    per_rep_head = ["dataset", "fraction"] + [f"{_shown(r)} r{i}" for r in rankers for i in replicates]
    return "\n\n".join([
        f"Embedder {embedder}; Δ: ranker minus random in mean AUC with its Welch 95% t-interval, p: two-sided "
        f"Mann-Whitney U, bold where p < {alpha}; MDE: the smallest difference the run detects ({'/'.join(_shown(r) for r in rankers)}); "
        "models: AUCs a point (30 in the full protocol).",
        "\n".join(vs_random),
        "Against the full set's models (Δ: the fraction's mean AUC minus the full set's, bold where p < "
        f"{alpha}: a difference detected), and how the classifiers of the fraction trained (mean optimiser steps, "
        "the share whose early stopping ended the training before the step cap; random and the rankers above):",
        "\n".join(vs_full),
        "Δ within each replicate r (mean AUC of a ranker's models minus random's, on the same seed set; under "
        "evaluate.vae_per_replicate each replicate ranks with its own β-VAE):",
        "\n".join(["| " + " | ".join(per_rep_head) + " |", "|" + "---|" * len(per_rep_head), *per_rep]),
        "With the seed set as the unit (Δ: the mean over the replicates of the per-replicate Δ above, one-sample "
        "t-interval; p: two-sided Wilcoxon signed-rank over the replicates, at least 2/2^seed sets; bold where p < "
        f"{alpha}): the models of a point share their seed set's draw, which the tests over every model ignore.",
        "\n".join(by_seed_set),
        "Full set, labeling budget (the smallest fraction from which every larger one shows no difference "
        "from the full set) and the run's time:",
        "\n".join(["| " + " | ".join(budget_head) + " |", "|" + "---|" * len(budget_head), *budget_rows]),
        "The β-VAEs (embeddings.csv: effective dimension is the participation ratio of the unit embeddings, "
        "nn median the median cosine to the nearest other training image, time the training and embedding):",
        "\n".join(["| dataset | replicate | vae seed | effective dimension | active units | nn median | time |",
                   "|---|---|---|---|---|---|---|", *vae_rows]),
    ])


def baseline_table(out: Path, embedder: str, baseline: str, rankers: list[str]) -> str:
    """Per dataset and fraction (the seed set left out): each ranker under `embedder` against the same
    ranker under `baseline` (Δ in mean AUC, Welch 95% interval, Mann-Whitney p, from aucs.csv), and
    each ranker under `baseline` against random (its summary.csv)."""
    runs = _runs(out)
    alpha = json.loads((runs[0] / "summary.json").read_text())["config"]["alpha"]
    head = (["dataset", "fraction", "models"] + [f"{_shown(r)}: {embedder} Δ vs {baseline} [95% CI], p" for r in rankers]
            + [f"{_shown(r)} on {baseline}: Δ vs random [95% CI], p" for r in rankers])
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in runs:
        aucs = pd.read_csv(run / "aucs.csv")
        summary = pd.read_csv(run / "summary.csv")
        summary = summary[(summary["embedder"] == baseline) & ~summary["seed_set"]].set_index(["ranker", "n_train"])
        n_train = json.loads((run / "summary.json").read_text())["n_train"]
        for size in sorted(summary.index.get_level_values("n_train").unique()):
            cells, models = [], []
            for r in rankers:
                a = aucs[(aucs["embedder"] == embedder) & (aucs["ranker"] == r) & (aucs["n_train"] == size)]["auc"].to_numpy()
                b = aucs[(aucs["embedder"] == baseline) & (aucs["ranker"] == r) & (aucs["n_train"] == size)]["auc"].to_numpy()
                if len(a) < 2 or len(b) < 2:
                    raise SystemExit(f"{run}/aucs.csv: {r} at {size} images has {len(a)} AUCs under {embedder} and {len(b)} under {baseline}")
                diff, low, high = mean_difference_ci(a, b)
                cells.append(_cell(diff, low, high, mann_whitney_p(a, b), alpha))
                models += [len(a), len(b)]
            vs_random = [_cell(*summary.loc[(r, size), ["diff_vs_random", "low_vs_random", "high_vs_random", "p_vs_random"]], alpha)
                         for r in rankers]
            rows.append(f"| {_shown(run.name)} | {size / n_train:.1%} | {min(models)} | " + " | ".join(cells + vs_random) + " |")
    intro = (f"Against the {baseline} baseline (Δ: a ranker's mean AUC under {embedder} minus the same ranker's under "
             f"{baseline}, bold where p < {alpha}), and the {baseline} rankings against random:")
    return intro + "\n\n" + "\n".join(rows)


def write_between(doc_path: Path, start: str, end: str, body: str) -> int:
    """Replace what lies between the markers start and end in doc_path with body; 2 if a marker is missing."""
    doc = doc_path.read_text()
    if start not in doc or end not in doc:
        print(f"{doc_path}: the markers {start} and {end} are missing", file=sys.stderr)
        return 2
    head, rest = doc.split(start, 1)
    doc_path.write_text(f"{head}{start}\n\n{body}\n\n{end}{rest.split(end, 1)[1]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the --out folder of the evaluation run")
    parser.add_argument("--doc", type=Path, default=Path("docs/evaluation.md"))
    parser.add_argument("--section", help="write the deciding tables between <!-- SECTION:start --> and <!-- SECTION:end -->")
    parser.add_argument("--embedder", default="vae", help="with --section: the embedder whose rankings are compared")
    parser.add_argument("--rankers", default="typiclust,enrich", help="with --section: the rankers compared with random")
    parser.add_argument("--baseline", help="with --section: instead, each ranking against the same ranker on this embedder (pixels)")
    args = parser.parse_args(argv)
    if args.section:
        rankers = args.rankers.split(",")
        body = (baseline_table(args.out, args.embedder, args.baseline, rankers) if args.baseline
                else deciding_tables(args.out, args.embedder, rankers))
        rc = write_between(args.doc, f"<!-- {args.section}:start -->", f"<!-- {args.section}:end -->", body)
    else:
        rc = write_between(args.doc, START, END, results_markdown(args.out, args.doc.parent / "evaluation", args.doc.parent))
    if rc == 0:
        print(f"{args.doc}: results of {args.out} written")
    return rc


if __name__ == "__main__":
    sys.exit(main())
