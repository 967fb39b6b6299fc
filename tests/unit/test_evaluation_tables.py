"""jobs/evaluation_tables.py's comparison with a baseline embedder and its comparison with the seed
set as the unit, on a run folder written by the evaluate job's own summarize: the Δ, interval and p
of each cell against scipy on the same AUCs."""
from __future__ import annotations

import json
import re
import runpy
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu, ttest_1samp, ttest_ind, wilcoxon

from enrich_ray.config import load_config
from enrich_ray.pipelines.evaluate import summarize

ROOT = Path(__file__).resolve().parents[2]
TABLES = runpy.run_path(str(ROOT / "jobs" / "evaluation_tables.py"))


def _run_folder(out: Path, rng: np.random.Generator) -> pd.DataFrame:
    """aucs.csv of one dataset (full set, seed set of 10, random and enrich at 40 and 80 images under
    vae and pixels, 12 models a point in 4 replicates; vae's enrich 0.05 above pixels'), its
    summary.csv, budget.csv, embeddings.csv and summary.json."""
    ev = load_config(None, []).evaluate
    rows = []
    for model in range(12):
        rows.append({"embedder": "none", "ranker": "full", "n_train": 200, "auc": 0.9 + 0.01 * rng.standard_normal()})
        rows.append({"embedder": "none", "ranker": "random", "n_train": 10, "auc": 0.6 + 0.02 * rng.standard_normal()})
        for size, base in ((40, 0.7), (80, 0.8)):
            rows.append({"embedder": "none", "ranker": "random", "n_train": size, "auc": base + 0.02 * rng.standard_normal()})
            rows.append({"embedder": "vae", "ranker": "enrich", "n_train": size, "auc": base + 0.06 + 0.02 * rng.standard_normal()})
            rows.append({"embedder": "pixels", "ranker": "enrich", "n_train": size, "auc": base + 0.01 + 0.02 * rng.standard_normal()})
            rows.append({"embedder": "vae", "ranker": "enrich", "n_train": 10, "auc": 0.6})
            rows.append({"embedder": "pixels", "ranker": "enrich", "n_train": 10, "auc": 0.6})
    aucs = pd.DataFrame(rows).assign(dataset="toy", model=0, model_seed=0,
                                     fraction=lambda d: d["n_train"] / 200, steps=10, best_step=5, step_cap=10)
    aucs["replicate"] = aucs.groupby(["embedder", "ranker", "n_train"]).cumcount() % 4
    run = out / "toy"
    run.mkdir(parents=True)
    aucs.to_csv(run / "aucs.csv", index=False)
    summary, budget = summarize(aucs, ev, 200, 3.0)
    summary.to_csv(run / "summary.csv", index=False)
    budget.to_csv(run / "budget.csv", index=False)
    pd.DataFrame([{"embedder": "vae", "replicate": 0, "vae_seed": 0, "effective_dimension": 5.0, "active_units": 8,
                   "nn_median": 0.9, "seconds": 1.0}]).to_csv(run / "embeddings.csv", index=False)
    (run / "summary.json").write_text(json.dumps({"config": {"alpha": ev.alpha}, "n_train": 200, "full_auc_mean": 0.9,
                                                  "full_auc_sd": 0.01, "classifiers": 100, "seconds_per_classifier": 1.0,
                                                  "seconds": 100.0}))
    return aucs


def test_the_comparison_by_seed_set_pairs_the_replicates_means(tmp_path):
    aucs = _run_folder(tmp_path, np.random.default_rng(4))
    text = TABLES["deciding_tables"](tmp_path, "vae", ["enrich"])
    table = text.split("With the seed set as the unit")[1].split("\n\n")[1]
    lines = [line for line in table.splitlines() if line.startswith("| toy")]
    assert [line.split(" | ")[1] for line in lines] == ["20.0%", "40.0%"]
    for line, size in zip(lines, (40, 80)):
        at = aucs[aucs["n_train"] == size]
        ranker = at[(at["embedder"] == "vae") & (at["ranker"] == "enrich")].groupby("replicate")["auc"].mean()
        random = at[at["ranker"] == "random"].groupby("replicate")["auc"].mean()
        d = (ranker - random).to_numpy()
        cells = line.split(" | ")
        assert cells[2] == "4"
        diff, low, high, p = map(float, re.findall(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?", cells[3]))
        ci = ttest_1samp(d, 0.0).confidence_interval(0.95)
        assert (diff, low, high) == (round(d.mean(), 3), round(ci.low, 3), round(ci.high, 3))
        assert p == float(f"{wilcoxon(d).pvalue:.2g}") == 0.12  # 4 replicates all above: 2/16 at best, not significant
        assert not cells[3].startswith("**")


def test_the_baseline_table_compares_each_ranker_with_itself_on_the_baseline(tmp_path):
    aucs = _run_folder(tmp_path, np.random.default_rng(3))
    text = TABLES["baseline_table"](tmp_path, "vae", "pixels", ["enrich"])
    lines = [line for line in text.splitlines() if line.startswith("| toy")]
    assert [line.split(" | ")[1] for line in lines] == ["20.0%", "40.0%"]  # the seed set is left out
    for line, size in zip(lines, (40, 80)):
        a = aucs[(aucs["embedder"] == "vae") & (aucs["ranker"] == "enrich") & (aucs["n_train"] == size)]["auc"]
        b = aucs[(aucs["embedder"] == "pixels") & (aucs["ranker"] == "enrich") & (aucs["n_train"] == size)]["auc"]
        r = aucs[(aucs["ranker"] == "random") & (aucs["n_train"] == size)]["auc"]
        cells = line.split(" | ")
        assert cells[2] == "12"
        diff, low, high, p = map(float, re.findall(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?", cells[3]))
        assert diff == round(a.mean() - b.mean(), 3)
        half = ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
        assert (low, high) == (round(half.low, 3), round(half.high, 3))
        assert p == float(f"{mannwhitneyu(a, b, alternative='two-sided').pvalue:.2g}")
        assert cells[3].startswith("**")  # 0.05 apart at sd 0.02, 12 a side: detected
        assert float(re.findall(r"[-+]?\d+\.\d+", cells[4])[0]) == round(b.mean() - r.mean(), 3)  # pixels' enrich vs random
