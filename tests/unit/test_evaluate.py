"""The evaluation job: statistics against plain references and scipy, the smallest-matching-fraction
rule, early stopping, dataset loading (MedMNIST .npz, a packed BUSI archive with labels, a folder of
class subfolders), the job end to end on a few hundred real PneumoniaMNIST images and on synthetic
images, and a resumed run ending with the same aucs.csv as an uninterrupted one."""
from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from enrich_ray.config import ConfigError, DecodeConfig, load_config
from enrich_ray.evaluate.classifier import SmallResNet, TrainSettings, auc, binary_auc, predict_proba, train_classifier
from enrich_ray.evaluate.datasets import (is_class_folder, load_dataset, natural_images, pack_class_folder,
                                          stratified_share, with_val_split)
from enrich_ray.evaluate.stats import (mann_whitney_p, mean_difference_ci, minimum_detectable_difference, pooled_sd,
                                       seed_set_comparison, significance_mark, smallest_matching_fraction)
from enrich_ray.pipelines.evaluate import check_evaluate_config, run_evaluation, subset_plan, subset_sizes, summarize

ROOT = Path(__file__).resolve().parents[2]


def pairwise_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Reference AUC: count every (positive, negative) pair, ties one half."""
    pos, neg = scores[positive], scores[~positive]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def exact_mann_whitney_p(x: list[float], y: list[float]) -> float:
    """Reference two-sided exact p of U without ties: enumerate every split of the pooled values."""
    pooled = np.array(x + y)
    mean_u = len(x) * len(y) / 2

    def u_stat(idx: tuple[int, ...]) -> float:
        a = pooled[list(idx)]
        b = np.delete(pooled, list(idx))
        return float(sum((ai > bj) for ai in a for bj in b))

    observed = abs(u_stat(tuple(range(len(x)))) - mean_u)
    splits = list(itertools.combinations(range(len(pooled)), len(x)))
    return sum(abs(u_stat(s) - mean_u) >= observed - 1e-12 for s in splits) / len(splits)


def test_auc_by_hand():
    assert binary_auc(np.array([0, 0, 1, 1], bool), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    # ties count one half: positives 0.5 and 0.9 against negatives 0.5, 0.5 -> (0.5 + 0.5 + 1 + 1) / 4
    assert binary_auc(np.array([0, 1, 0, 1], bool), np.array([0.5, 0.5, 0.5, 0.9])) == pytest.approx(0.75)
    assert auc(np.array([1, 0]), np.array([[0.2, 0.8], [0.9, 0.1]])) == 1.0
    # three classes: one-vs-rest of each class, averaged
    proba = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.4, 0.4, 0.2]])
    labels = np.array([0, 1, 2, 1])
    expected = np.mean([pairwise_auc(labels == c, proba[:, c]) for c in range(3)])
    assert auc(labels, proba) == pytest.approx(expected)
    with pytest.raises(ValueError, match="both classes"):
        binary_auc(np.array([1, 1], bool), np.array([0.1, 0.2]))


def test_auc_matches_pair_counting_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = rng.integers(0, 6, size=40).astype(float)  # many ties
        positive = rng.random(40) < 0.4
        if positive.all() or not positive.any():
            continue
        assert binary_auc(positive, scores) == pytest.approx(pairwise_auc(positive, scores))


def test_mann_whitney_matches_exact_enumeration():
    rng = np.random.default_rng(1)
    assert mann_whitney_p([1, 2, 3], [4, 5, 6]) == pytest.approx(0.1)  # 2 of 20 splits as extreme
    for _ in range(5):
        values = rng.permutation(12).astype(float).tolist()  # distinct values: scipy's exact method
        x, y = values[:5], values[5:]
        assert mann_whitney_p(x, y) == pytest.approx(exact_mann_whitney_p(x, y))
    assert mann_whitney_p([0.9, 0.9, 0.9], [0.9, 0.9]) == 1.0  # identical AUCs: no difference, not NaN
    with pytest.raises(ValueError, match="non-empty"):
        mann_whitney_p([], [0.5])


def test_welch_interval_matches_scipy():
    from scipy.stats import ttest_ind

    rng = np.random.default_rng(3)
    for n_a, n_b, sd_a, sd_b in [(30, 30, 0.02, 0.02), (30, 12, 0.01, 0.05), (5, 40, 0.08, 0.01)]:
        a, b = rng.normal(0.9, sd_a, n_a), rng.normal(0.88, sd_b, n_b)
        diff, low, high = mean_difference_ci(a, b)
        ci = ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
        assert diff == pytest.approx(a.mean() - b.mean())
        assert (low, high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert mean_difference_ci([0.9, 0.9], [0.8, 0.8]) == (pytest.approx(0.1), pytest.approx(0.1), pytest.approx(0.1))
    with pytest.raises(ValueError, match="two values"):
        mean_difference_ci([0.9], [0.8, 0.7])


def exact_signed_rank_p(d: np.ndarray) -> float:
    """Reference two-sided exact p of Wilcoxon's signed-rank statistic without ties or zeros: every
    sign pattern of the ranks is equally likely under no difference."""
    ranks = np.argsort(np.argsort(np.abs(d))) + 1.0
    observed = abs(ranks[d > 0].sum() - ranks.sum() / 2)
    sums = [abs(sum(r for r, s in zip(ranks, signs) if s) - ranks.sum() / 2)
            for signs in itertools.product([False, True], repeat=d.size)]
    return float(np.mean([v >= observed - 1e-12 for v in sums]))


def test_the_comparison_by_seed_set_matches_enumeration_and_scipy():
    """The paired replicate means: the signed-rank p against an enumeration of every sign pattern,
    the interval against scipy's one-sample t; three replicates all on one side give 2/8 at best."""
    from scipy.stats import ttest_1samp

    rng = np.random.default_rng(5)
    for r in (3, 6, 10):
        ranker, random = rng.normal(0.72, 0.04, r), rng.normal(0.70, 0.04, r)
        diff, low, high, p = seed_set_comparison(ranker, random)
        d = ranker - random
        ci = ttest_1samp(d, 0.0).confidence_interval(0.95)
        assert diff == pytest.approx(d.mean())
        assert (low, high) == (pytest.approx(ci.low), pytest.approx(ci.high))
        assert p == pytest.approx(exact_signed_rank_p(d))
    assert seed_set_comparison([0.8, 0.9, 0.85], [0.7, 0.7, 0.7])[3] == pytest.approx(0.25)
    assert seed_set_comparison([0.7] * 10, [0.6] * 10)[3] == pytest.approx(2 / 1024)  # ties all at one rank
    assert seed_set_comparison([0.7, 0.7], [0.7, 0.7]) == (0.0, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="two or more"):
        seed_set_comparison([0.8], [0.7])


def test_pooled_sd_by_hand():
    a, b = [1.0, 2.0, 3.0], [2.0, 6.0]
    assert pooled_sd(a, b) == pytest.approx(np.sqrt((2 * 1.0 + 1 * 8.0) / 3))


def test_minimum_detectable_difference_has_the_power_it_claims():
    """The textbook values (Cohen: d = 0.5 needs 64 per group; G*Power: 30 per group detect d = 0.7356),
    and simulated t-tests (scipy) at that difference reject about 80% of the time."""
    from scipy.stats import ttest_ind

    assert minimum_detectable_difference(1.0, 64, 64) == pytest.approx(0.5, abs=0.002)
    assert minimum_detectable_difference(1.0, 30, 30) == pytest.approx(0.7356, abs=5e-4)
    assert minimum_detectable_difference(0.02, 30, 30) == pytest.approx(0.02 * 0.7356, abs=1e-5)  # scales with sd
    assert minimum_detectable_difference(1.0, 30, 30, power=0.9) > minimum_detectable_difference(1.0, 30, 30)
    assert minimum_detectable_difference(0.0, 30, 30) == 0.0
    rng = np.random.default_rng(4)
    delta = minimum_detectable_difference(1.0, 10, 12)
    a = rng.normal(delta, 1.0, (8000, 10))
    b = rng.normal(0.0, 1.0, (8000, 12))
    rejected = (ttest_ind(a, b, axis=1).pvalue < 0.05).mean()
    assert rejected == pytest.approx(0.8, abs=0.015)
    with pytest.raises(ValueError, match="n >= 2"):
        minimum_detectable_difference(1.0, 1, 30)


def test_significance_marks_follow_the_paper():
    assert [significance_mark(p) for p in (0.2, 0.05, 0.0101, 0.01, 0.0005, 0.0001, 1e-9)] == [
        "ns", "*", "*", "**", "***", "****", "****"]


def test_smallest_matching_fraction_ignores_an_early_fluke():
    fractions = [0.02, 0.05, 0.1, 0.2, 0.4]
    # 5% looks like the full set by chance, 10% does not: the budget starts at 20%
    assert smallest_matching_fraction(fractions, [0.001, 0.2, 0.01, 0.3, 0.6]) == 0.2
    assert smallest_matching_fraction(fractions, [0.3] * 5) == 0.02
    assert smallest_matching_fraction(fractions, [0.3, 0.3, 0.3, 0.3, 0.04]) is None
    assert smallest_matching_fraction(fractions, [0.3, 0.3, 0.3, 0.3, 0.05]) is None  # p must exceed alpha
    # the order of the input does not matter
    assert smallest_matching_fraction([0.4, 0.02, 0.2, 0.1, 0.05], [0.6, 0.001, 0.3, 0.01, 0.2]) == 0.2
    assert smallest_matching_fraction([0.1, 0.2], [0.2, 0.2], alpha=0.25) is None


def test_summary_on_a_constructed_table():
    """ENRICH reaches the full set's AUC at 20%, random never does; the table says so, with the
    effect, its interval and the detectable difference beside each p."""
    cfg = load_config(None, ["evaluate.fractions=[0.1,0.2,0.4]"]).evaluate
    rng = np.random.default_rng(2)
    rows = []
    steps = {"steps": 60, "step_cap": 80}
    for i in range(6):
        noise = rng.normal(0, 0.002)
        rows.append({"embedder": "none", "ranker": "full", "fraction": 1.0, "n_train": 1000, "auc": 0.95 + noise,
                     "replicate": 0, **steps})
        for f, n, enrich, random in [(0.1, 100, 0.80, 0.80), (0.2, 200, 0.95, 0.85), (0.4, 400, 0.95, 0.90)]:
            rows.append({"embedder": "vae", "ranker": "enrich", "fraction": f, "n_train": n, "auc": enrich + rng.normal(0, 0.002),
                         "replicate": i % 3, "steps": 80, "step_cap": 80})
            rows.append({"embedder": "none", "ranker": "random", "fraction": f, "n_train": n, "auc": random + rng.normal(0, 0.002),
                         "replicate": i % 3, **steps})
    aucs = pd.DataFrame(rows)
    summary, budget = summarize(aucs, cfg, n_train=1000, seconds_per_image=3.0)
    enrich = summary[summary["ranker"] == "enrich"].set_index("fraction")
    assert enrich.loc[0.1, "vs_random"] == "" and np.isnan(enrich.loc[0.1, "diff_vs_random"])  # the common seed set
    assert enrich.loc[0.2, "vs_random"] == "**"  # 6 vs 6 fully separated: exact p = 2/924
    assert enrich.loc[0.2, "p_vs_random"] == pytest.approx(2 / 924)
    a = aucs[(aucs["ranker"] == "enrich") & (aucs["n_train"] == 200)]["auc"]
    b = aucs[(aucs["ranker"] == "random") & (aucs["n_train"] == 200)]["auc"]
    diff, low, high = mean_difference_ci(a, b)
    assert enrich.loc[0.2, "diff_vs_random"] == pytest.approx(diff) and diff == pytest.approx(0.10, abs=0.005)
    assert (enrich.loc[0.2, "low_vs_random"], enrich.loc[0.2, "high_vs_random"]) == (pytest.approx(low), pytest.approx(high))
    assert enrich.loc[0.2, "mde_vs_random"] == pytest.approx(minimum_detectable_difference(pooled_sd(a, b), 6, 6))
    # by seed set: 3 replicates of 2 models, each replicate's mean 0.10 above random's: the best p of 3 pairs
    reps = aucs[aucs["n_train"] == 200].groupby(["ranker", "replicate"])["auc"].mean()
    assert enrich.loc[0.2, "seed_sets"] == 3 and enrich.loc[0.2, "p_by_seed_set"] == pytest.approx(0.25)
    assert enrich.loc[0.2, "diff_by_seed_set"] == pytest.approx((reps["enrich"] - reps["random"]).mean())
    assert 0 < enrich.loc[0.2, "low_by_seed_set"] < enrich.loc[0.2, "diff_by_seed_set"] < enrich.loc[0.2, "high_by_seed_set"]
    assert enrich.loc[0.1, "seed_sets"] == 0 and np.isnan(enrich.loc[0.1, "p_by_seed_set"])  # the seed set: no comparison
    assert enrich["matches_full"].tolist() == [False, True, True]
    assert enrich["stopped_early"].tolist() == [0.0, 0.0, 0.0]
    assert summary[summary["ranker"] == "random"]["stopped_early"].tolist() == [1.0, 1.0, 1.0]
    b = budget.set_index("ranker")
    assert b.loc["enrich", "smallest_matching_fraction"] == 0.2
    assert b.loc["enrich", "images_saved"] == 800
    assert b.loc["enrich", "labeling_hours_saved"] == pytest.approx(800 * 3.0 / 3600)
    assert np.isnan(b.loc["random", "smallest_matching_fraction"]) and b.loc["random", "images_saved"] == 0
    assert b.loc["random", "embedder"] == "none"  # random ignores the embedding: one row


def test_subset_plan_fractions_and_fixed_increments():
    fractions = load_config(None).evaluate
    assert subset_plan(fractions, 1000) == [20, 50, 100, 200, 400]
    increments = load_config(None, ["evaluate.increment=300"]).evaluate
    assert subset_plan(increments, 1000) == [20, 320, 620, 920]  # the seed set, then +300 while below the full set
    with pytest.raises(ConfigError, match="evaluate.increment"):
        subset_plan(load_config(None, ["evaluate.increment=5000"]).evaluate, 1000)


def test_config_checks_name_the_key():
    check_evaluate_config(load_config(None).evaluate)
    bad = [
        (["evaluate.fractions=[0.2,0.1]"], "evaluate.fractions"),
        (["evaluate.fractions=[0.1,1.0]"], "evaluate.fractions"),
        (["evaluate.rankers=[enrich]"], "include random"),
        (["evaluate.rankers=[enrich,random,smi]"], "query_label"),
        (["evaluate.replicates=0"], "evaluate.replicates"),
        (["evaluate.min_steps=500", "evaluate.max_steps=100"], "evaluate.min_steps"),
        (["evaluate.patience=0"], "evaluate.patience"),
        (["evaluate.val_fraction=1.5"], "evaluate.val_fraction"),
        (["evaluate.increment=0"], "evaluate.increment"),
    ]
    for overrides, message in bad:
        with pytest.raises(ConfigError, match=message):
            check_evaluate_config(load_config(None, overrides).evaluate)
    with pytest.raises(ConfigError, match="repeated subset sizes"):
        subset_sizes([0.01, 0.011], 50)


def test_the_shipped_config_loads():
    cfg = load_config(ROOT / "configs" / "evaluate.yaml")
    check_evaluate_config(cfg.evaluate)


def test_small_resnet_takes_28_and_64_px():
    import torch

    for side in (28, 64):
        assert SmallResNet(3, side)(torch.zeros(2, 1, side, side)).shape == (2, 3)


def test_classifier_is_seeded_and_amp_is_a_no_op_on_cpu(pneumonia_npz):
    """Same seed, same model; the GPU path's autocast leaves CPU training in exact float32."""
    import torch

    data, _ = load_dataset(str(pneumonia_npz), DecodeConfig())
    rows, test = data.rows("train")[:64], data.rows("test")[:100]
    runs = []
    for amp in (True, True, False):
        settings = TrainSettings(min_steps=3, max_steps=3, batch_size=16, device=torch.device("cpu"), amp=amp)
        fit = train_classifier(data.images[rows], data.labels[rows], 2, seed=7, settings=settings)
        runs.append(predict_proba(fit.model, data.images[test], settings))
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_array_equal(runs[0], runs[2])
    assert 0.0 <= auc(data.labels[test], runs[0]) <= 1.0
    other = train_classifier(data.images[rows], data.labels[rows], 2, seed=8, settings=settings)
    assert not np.array_equal(predict_proba(other.model, data.images[test], settings), runs[2])


def _planted(n: int, seed: int, flip: float = 0.0, side: int = 12, n_classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic images whose class sets the brightness of a centred square, labels flipped at rate `flip`."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    images = rng.random((n, side, side)).astype(np.float32) * 0.3
    c = side // 4
    images[:, c:-c, c:-c] += (0.7 * labels / max(1, n_classes - 1))[:, None, None].astype(np.float32)
    noisy = rng.random(n) < flip
    labels[noisy] = rng.integers(0, n_classes, noisy.sum())
    return np.clip(images, 0, 1), labels


def test_step_cap_scales_with_the_subset():
    s = TrainSettings(max_epochs=20, min_steps=50, max_steps=400, batch_size=64)
    assert [s.step_cap(n) for n in (10, 100, 640, 1000, 100000)] == [50, 50, 200, 320, 400]


def test_early_stopping_stops_before_the_cap_and_keeps_the_best_checkpoint():
    """An easy problem with noisy labels: the validation AUC tops out long before 3,000 steps,
    so training stops, and the model returned is the one at the best check."""
    x, y = _planted(256, seed=0, flip=0.3)
    xv, yv = _planted(128, seed=1, flip=0.3)
    settings = TrainSettings(max_epochs=1000, min_steps=10, max_steps=3000, check_every=10, patience=3, batch_size=32, width=4)
    fit = train_classifier(x, y, 2, seed=0, settings=settings, val=(xv, yv))
    assert fit.cap == 3000 and fit.stopped_early and fit.steps < 600
    assert fit.best_step == fit.steps - 3 * 10  # three checks without improvement after the best
    assert auc(yv, predict_proba(fit.model, xv, settings)) == fit.best_val_auc  # the kept checkpoint is the best one
    x_clean, y_clean = _planted(200, seed=2)
    assert auc(y_clean, predict_proba(fit.model, x_clean, settings)) > 0.9  # it learned the planted class
    no_val = train_classifier(x, y, 2, seed=0, settings=dataclasses.replace(settings, max_steps=40))
    assert no_val.steps == no_val.cap == 40 and not no_val.stopped_early and np.isnan(no_val.best_val_auc)
    with pytest.raises(ValueError, match="one class"):
        train_classifier(x, y, 2, seed=0, settings=settings, val=(xv, np.zeros_like(yv)))


def test_medmnist_npz_loads_with_splits(pneumonia_npz):
    data, undecodable = load_dataset(str(pneumonia_npz), DecodeConfig())
    assert undecodable == 0 and data.name == "pneumoniamnist"
    assert data.images.shape == (5856, 28, 28) and data.images.dtype == np.float32
    assert 0.0 <= data.images.min() and data.images.max() <= 1.0
    assert data.counts()["train"] == {"0": 1214, "1": 3494}  # MedMNIST's published split
    assert len(data.rows("test")) == 624


def test_archive_with_labels_loads(busi_dir, tmp_path):
    """Real BUSI PNGs packed into an archive, a label and split column added: frames at decode.size."""
    from enrich_ray.io.pack import pack

    files = [sorted((busi_dir / c).glob("*.png"))[:3] for c in ("benign", "malignant", "normal")]
    pack([str(f) for group in files for f in group], str(tmp_path / "archive"), progress=False)
    (shard,) = (tmp_path / "archive").glob("part-*.parquet")
    table = pq.read_table(shard)
    labels = [Path(uri).parent.name for uri in table.column("source_uri").to_pylist()]
    splits = ["test" if "(1)" in uri else "train" for uri in table.column("source_uri").to_pylist()]
    pq.write_table(table.append_column("diagnosis", pa.array(labels)).append_column("part", pa.array(splits)), shard)

    data, undecodable = load_dataset(str(tmp_path / "archive"), DecodeConfig(size=64), "diagnosis", "part")
    assert undecodable == 0
    assert data.images.shape == (9, 64, 64) and data.classes == ["benign", "malignant", "normal"]
    assert sorted(data.labels.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert set(data.split) == {"train", "test"}
    with pytest.raises(ValueError, match="lacks column"):
        load_dataset(str(tmp_path / "archive"), DecodeConfig(size=64), "grade", "part")


def _pneumonia_subset(pneumonia_npz: Path, path: Path, n_train: int, n_test: int, n_val: int = 100) -> Path:
    """A few hundred real PneumoniaMNIST images in MedMNIST's layout."""
    rng = np.random.default_rng(0)
    parts = {}
    with np.load(pneumonia_npz) as npz:
        for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
            rows = rng.choice(len(npz[f"{split}_labels"]), n, replace=False)
            parts[f"{split}_images"], parts[f"{split}_labels"] = npz[f"{split}_images"][rows], npz[f"{split}_labels"][rows]
    np.savez(path, **parts)
    return path


def test_evaluation_end_to_end(pneumonia_npz, tmp_path):
    npz = _pneumonia_subset(pneumonia_npz, tmp_path / "pneumo_small.npz", 300, 200)
    cfg = load_config(None, [
        "evaluate.embedders=[pixels]", "evaluate.rankers=[enrich,random,examine,smi]", "evaluate.query_label=0",
        "evaluate.fractions=[0.05,0.2,0.5]",
        "evaluate.replicates=1", "evaluate.models_per_replicate=1", "evaluate.min_steps=40", "evaluate.max_steps=40",
    ])
    out = tmp_path / "eval"
    result = run_evaluation(str(npz), cfg, str(out))

    run = out / "pneumo_small"
    aucs = pd.read_csv(run / "aucs.csv")
    # the full set, then random and 3 rankers at 3 fractions
    assert len(aucs) == 1 + 4 * 3
    assert aucs["auc"].between(0, 1).all()
    assert sorted(aucs["n_train"].unique().tolist()) == [15, 60, 150, 300]
    seed_aucs = aucs[np.isclose(aucs["fraction"], 0.05)]["auc"]
    assert seed_aucs.nunique() == 1  # every ranker starts from the same seed set: one model, one AUC
    assert result["classifiers"] == result["classifiers_trained_now"] == 1 + 1 + 4 * 2  # identical subsets train once
    assert (aucs["steps"] == aucs["step_cap"]).all() and (aucs["step_cap"] == 40).all()
    assert aucs[aucs["ranker"] == "full"]["auc"].iloc[0] > 0.75  # real signal from 300 images

    summary = pd.read_csv(run / "summary.csv")
    assert set(summary["ranker"]) == {"enrich", "random", "examine", "smi"} and set(summary["embedder"]) == {"pixels"}
    emb = pd.read_csv(run / "embeddings.csv")
    assert emb.loc[0, "dim"] == 256 and 1 < emb.loc[0, "effective_dimension"] < 256
    for name in ("summary.md", "budget.csv", "auc_curves.png", "summary.json"):
        assert (run / name).stat().st_size > 0
    assert "## Labeling budget" in (run / "summary.md").read_text()
    assert json.loads((run / "summary.json").read_text())["n_train"] == 300
    assert (out / "redundancy.png").stat().st_size > 0
    with np.load(run / "nn_similarity.npz") as npz:  # the non-medical images embedded the same way
        assert sorted(npz.files) == ["pixels", "scikit-image faces + photos · pixels"]
    assert result["summary"].startswith("pneumo_small: full-set AUC")


def test_stratified_share_and_val_split_keep_the_classes():
    labels = np.array([0] * 50 + [1] * 20 + [2] * 3)
    mask = stratified_share(labels, 0.2, seed=0)
    assert [int(mask[labels == c].sum()) for c in range(3)] == [10, 4, 1]
    np.testing.assert_array_equal(mask, stratified_share(labels, 0.2, seed=0))
    assert not np.array_equal(mask, stratified_share(labels, 0.2, seed=1))
    x, _ = _planted(73, seed=0)
    from enrich_ray.evaluate.datasets import LabeledImages

    data = LabeledImages("planted", x, labels, np.array(["train"] * 60 + ["test"] * 13), ["a", "b", "c"])
    split = with_val_split(data, 0.1, seed=0)
    assert (split.split == "val").sum() > 0 and (split.split[60:] == "test").all()
    assert with_val_split(split, 0.5, seed=1) is split  # a val split is kept as it is


def test_natural_images_are_bundled_faces_and_photos():
    x = natural_images(28)
    assert x.shape == (216, 28, 28) and x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0


def _png_tree(root: Path, per_class: int = 12) -> Path:
    """A folder of class subfolders of real PNG files (planted brightness per class), and a CSV beside them."""
    from PIL import Image

    for c, name in enumerate(("benign", "malignant", "normal")):
        (root / name).mkdir(parents=True)
        x, _ = _planted(per_class, seed=c, side=32)
        for i, img in enumerate(x):
            img = np.clip(img + 0.3 * c, 0, 1)
            Image.fromarray((img * 255).astype(np.uint8)).save(root / name / f"{name} ({i + 1}).png")
    (root / "captions.csv").write_text("path,label\n")
    return root


def test_class_folder_packs_into_a_labeled_archive(tmp_path):
    tree = _png_tree(tmp_path / "busi_like")
    assert is_class_folder(str(tree)) and not is_class_folder(str(tree / "benign"))
    archive = pack_class_folder(str(tree), str(tmp_path / "archive"), test_fraction=0.25, seed=0)
    data, undecodable = load_dataset(archive, DecodeConfig(size=32))
    assert undecodable == 0 and data.classes == ["benign", "malignant", "normal"]
    assert data.images.shape == (36, 32, 32)
    assert data.counts()["test"] == {"benign": 3, "malignant": 3, "normal": 3}
    # class c was planted brighter by 0.3 c: the label follows the folder
    means = [data.images[data.labels == c].mean() for c in range(3)]
    assert means[0] < means[1] < means[2]
    assert is_class_folder(archive) is False


def _planted_npz(path: Path) -> Path:
    """A synthetic MedMNIST-layout file: 160 train, 40 val, 60 test planted images."""
    parts = {}
    for i, (split, n) in enumerate((("train", 160), ("val", 40), ("test", 60))):
        x, y = _planted(n, seed=10 + i, flip=0.1, side=28)
        parts[f"{split}_images"] = (x * 255).astype(np.uint8)
        parts[f"{split}_labels"] = y[:, None]
    np.savez(path, **parts)
    return path


TINY = ["evaluate.embedders=[pixels]", "evaluate.rankers=[enrich,random]", "evaluate.fractions=[0.05,0.2,0.5]",
        "evaluate.replicates=2", "evaluate.models_per_replicate=2", "evaluate.min_steps=10", "evaluate.max_steps=30",
        "evaluate.check_every=5", "evaluate.patience=2", "evaluate.width=4", "evaluate.natural_images=false"]


# one β-VAE per replicate, each one short epoch: trained twice at one seed (runs a and b), they must agree
PER_REPLICATE_VAE = ["evaluate.embedders=[vae]", "vae.max_epochs=1", "vae.latent_dim=16"]


@pytest.mark.parametrize("embedder", ["pixels", "vae"])
def test_interrupted_run_resumes_to_the_same_aucs(tmp_path, embedder):
    """Planted synthetic data: an uninterrupted run, and a run cut off mid-write (aucs.csv truncated
    in the middle of a row) then rerun, end with byte-identical aucs.csv; a rerun with other
    settings into the same folder is refused. Under the β-VAE each replicate trains its own, and
    the two runs' trainings at the same seeds give identical embeddings."""
    npz = _planted_npz(tmp_path / "planted.npz")
    overrides = TINY + (PER_REPLICATE_VAE if embedder == "vae" else [])
    cfg = load_config(None, overrides)
    reference = run_evaluation(str(npz), cfg, str(tmp_path / "a"))
    expected = (tmp_path / "a" / "planted" / "aucs.csv").read_text()
    # 2 replicates x 2 models x (full, seed set, 2 orders x 2 fractions) classifiers; 2 x 2 x (1 + 3 x 2 + 1) rows
    assert reference["classifiers"] == reference["classifiers_trained_now"] == 24
    assert len(expected.splitlines()) == 1 + 2 * 2 * (1 + 2 * 3)

    run_evaluation(str(npz), cfg, str(tmp_path / "b"))
    with np.load(tmp_path / "a" / "planted" / "embeddings.npz") as a, np.load(tmp_path / "b" / "planted" / "embeddings.npz") as b:
        assert sorted(a.files) == sorted(b.files) == (["vae_r0", "vae_r1"] if embedder == "vae" else ["pixels"])
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])
        if embedder == "vae":  # each seed set its own β-VAE, at its own seed
            assert not np.allclose(a["vae_r0"], a["vae_r1"])
            emb = pd.read_csv(tmp_path / "a" / "planted" / "embeddings.csv")
            assert emb["replicate"].tolist() == [0, 1] and emb["vae_seed"].tolist() == [0, 100]
            assert all((tmp_path / "a" / "planted" / f"vae_r{r}" / "model.safetensors").exists() for r in (0, 1))
    path = tmp_path / "b" / "planted" / "aucs.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:10]) + lines[10][:17])  # killed while writing row 10
    resumed = run_evaluation(str(npz), cfg, str(tmp_path / "b"))
    assert path.read_text() == expected
    assert 0 < resumed["classifiers_trained_now"] < 24
    assert pd.read_csv(tmp_path / "b" / "planted" / "summary.csv").equals(pd.read_csv(tmp_path / "a" / "planted" / "summary.csv"))
    again = run_evaluation(str(npz), cfg, str(tmp_path / "b"))
    assert again["classifiers_trained_now"] == 0 and path.read_text() == expected
    sessions = pd.read_csv(tmp_path / "b" / "planted" / "sessions.csv")  # the time of every session, summed
    assert sessions["classifiers_trained"].tolist() == [24, resumed["classifiers_trained_now"], 0]
    assert again["sessions"] == 3 and again["seconds"] == pytest.approx(sessions["seconds"].sum())
    assert again["seconds_per_classifier"] == pytest.approx(sessions["train_seconds"].sum() / sessions["classifiers_trained"].sum())
    assert "over 3 session(s)" in (tmp_path / "b" / "planted" / "summary.md").read_text()
    path.write_text("dataset,repl")  # killed while writing the header
    run_evaluation(str(npz), cfg, str(tmp_path / "b"))
    assert path.read_text() == expected
    # the job draws each replicate's seed set itself: other selection seed settings (a changed default) resume the run
    moved = run_evaluation(str(npz), load_config(None, [*overrides, "selection.seed_count=7", "selection.random_seed=9"]),
                           str(tmp_path / "b"))
    assert moved["classifiers_trained_now"] == 0 and path.read_text() == expected
    with pytest.raises(ConfigError, match="other settings"):
        run_evaluation(str(npz), load_config(None, [*TINY, "evaluate.max_steps=40"]), str(tmp_path / "b"))


def test_a_rerun_may_add_rankers_and_embedders(tmp_path):
    """A run extended by a second one with another ranker and embedder ends with the records, the
    embeddings and the summary of one run with all of them; the rerun trains only the new
    classifiers, and random's and the full set's stay as the first run wrote them."""
    npz = _planted_npz(tmp_path / "planted.npz")
    both = ["evaluate.embedders=[pixels,vae]", "evaluate.rankers=[enrich,examine,random]"]
    at_once = run_evaluation(str(npz), load_config(None, [*TINY, *PER_REPLICATE_VAE, *both]), str(tmp_path / "a"))
    first = run_evaluation(str(npz), load_config(None, [*TINY, *PER_REPLICATE_VAE, "evaluate.embedders=[pixels]"]), str(tmp_path / "b"))
    before = pd.read_csv(tmp_path / "b" / "planted" / "aucs.csv")
    added = run_evaluation(str(npz), load_config(None, [*TINY, *PER_REPLICATE_VAE, *both]), str(tmp_path / "b"))
    assert first["classifiers_trained_now"] + added["classifiers_trained_now"] == at_once["classifiers_trained_now"]
    assert added["classifiers_trained_now"] > 0

    def rows(run: str) -> pd.DataFrame:
        aucs = pd.read_csv(tmp_path / run / "planted" / "aucs.csv")
        return aucs.sort_values(["replicate", "model", "embedder", "ranker", "n_train"]).reset_index(drop=True)

    pd.testing.assert_frame_equal(rows("a"), rows("b"))
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "b" / "planted" / "aucs.csv").iloc[: len(before)], before)
    assert set(rows("b")["embedder"]) == {"none", "pixels", "vae"} and "examine" in set(rows("b")["ranker"])
    with np.load(tmp_path / "a" / "planted" / "embeddings.npz") as a, np.load(tmp_path / "b" / "planted" / "embeddings.npz") as b:
        assert sorted(a.files) == sorted(b.files) == ["pixels", "vae_r0", "vae_r1"]
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])
    summary = ["embedder", "ranker", "fraction", "auc_mean", "p_vs_random"]
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "a" / "planted" / "summary.csv")[summary].sort_values(summary[:3]).reset_index(drop=True),
        pd.read_csv(tmp_path / "b" / "planted" / "summary.csv")[summary].sort_values(summary[:3]).reset_index(drop=True))
    run = json.loads((tmp_path / "b" / "planted" / "run.json").read_text())["evaluate"]
    assert run["embedders"] == ["pixels", "vae"] and run["rankers"] == ["enrich", "random", "examine"]
    with pytest.raises(ConfigError, match="other settings"):
        run_evaluation(str(npz), load_config(None, [*TINY, "evaluate.patience=3"]), str(tmp_path / "b"))


def test_the_vae_is_trained_per_replicate_unless_told_otherwise():
    """(embedder, replicate) of the run's embeddings: a β-VAE per seed set by default; one for all
    with evaluate.vae_per_replicate=false or a given embed.model; the pixel baseline always one."""
    from enrich_ray.pipelines.evaluate import _embedding_keys

    cfg = load_config(None, ["evaluate.embedders=[vae,pixels]"])
    assert _embedding_keys(cfg.evaluate, cfg) == [("vae", 0), ("vae", 1), ("vae", 2), ("pixels", None)]
    once = load_config(None, ["evaluate.embedders=[vae,pixels]", "evaluate.vae_per_replicate=false"])
    assert _embedding_keys(once.evaluate, once) == [("vae", None), ("pixels", None)]
    given = load_config(None, ["evaluate.embedders=[vae]", "embed.model=/some/model"])
    assert _embedding_keys(given.evaluate, given) == [("vae", None)]


def test_the_ensemble_joins_its_members_codes(tmp_path):
    """vae_ensemble: evaluate.ensemble_size β-VAEs trained at their own seeds, each code the member's
    own vae embedding; the joined rows are unit and their cosine is the members' mean cosine."""
    from enrich_ray.pipelines.evaluate import embed_training_split

    frames = np.load(_planted_npz(tmp_path / "planted.npz"))["train_images"][:120].astype(np.float32) / 255
    cfg = load_config(None, ["vae.max_epochs=1", "vae.latent_dim=8", "evaluate.ensemble_size=2"])
    joined, facts, _ = embed_training_split(frames, "vae_ensemble", cfg, tmp_path / "ensemble")
    member = load_config(None, ["vae.max_epochs=1", "vae.latent_dim=8", "vae.seed=20"])
    second, _, _ = embed_training_split(frames, "vae", member, tmp_path / "second")
    assert joined.shape == (120, 16) and facts["dim"] == 16
    np.testing.assert_allclose(np.linalg.norm(joined, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(joined[:, 8:] * np.sqrt(2), second, atol=1e-6)
    first = joined[:, :8] * np.sqrt(2)
    np.testing.assert_allclose(joined @ joined.T, (first @ first.T + second @ second.T) / 2, atol=1e-5)
    assert not np.allclose(first, second)
    assert sorted(p.name for p in (tmp_path / "ensemble").iterdir()) == ["member_0", "member_1"]
    with pytest.raises(ConfigError, match="ensemble_size"):
        check_evaluate_config(load_config(None, ["evaluate.ensemble_size=10"]).evaluate)


def test_a_class_folder_evaluates_through_the_archive_path(tmp_path):
    """One command on a folder of class subfolders: packed, split, validated and evaluated; the
    non-medical images join the redundancy curves."""
    tree = _png_tree(tmp_path / "busi_like", per_class=20)
    overrides = [o for o in TINY if not o.startswith("evaluate.natural")] + ["decode.size=32", "evaluate.replicates=1",
                                                                              "evaluate.models_per_replicate=1"]
    result = run_evaluation(str(tree), load_config(None, overrides), str(tmp_path / "eval"))
    run = tmp_path / "eval" / "busi_like"
    assert result["read"] == str(run / "archive") and result["classes"] == ["benign", "malignant", "normal"]
    assert result["n_test"] == 12 and result["n_val"] == 6 and result["n_train"] == 42  # per class: 4 test, 2 val
    assert result["full_auc_mean"] > 0.9  # the planted brightness separates the classes
    with np.load(run / "nn_similarity.npz") as npz:
        assert sorted(npz.files) == ["pixels", "scikit-image faces + photos · pixels"]
        assert npz["scikit-image faces + photos · pixels"].shape == (216,)
    assert "## AUC per fraction" in (run / "summary.md").read_text()


def test_enrich_clean_ranks_without_the_junk_curate_would_leave_out():
    """ENRICH without junk: a blank frame and a planted photograph-like outlier never enter the ranking
    (beyond the shared seed set); the order is the plain ENRICH order over the kept rows."""
    from enrich_ray.evaluate.datasets import LabeledImages
    from enrich_ray.pipelines.evaluate import _replicate_rankings, _rows_without_junk
    from enrich_ray.selection import rank

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:28, 0:28] / 27.0
    images = np.stack([np.clip(0.4 + 0.3 * np.sin(6 * xx + p) * yy + rng.normal(0, 0.02, (28, 28)), 0, 1)
                       for p in rng.uniform(0, 0.6, 300)]).astype(np.float32)
    images[7] = 0.0  # blank
    images[11] = (rng.uniform(0, 1, (28, 28)) > 0.5).astype(np.float32)  # nothing like the rest
    unit = images.reshape(300, -1) - images.reshape(300, -1).mean(axis=0)
    unit /= np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-6)
    unit[7] = np.eye(unit.shape[1])[0]
    cfg = load_config(None, [])
    kept = _rows_without_junk(unit, images, cfg, 300)
    assert 7 not in kept and 11 not in kept and len(kept) >= 280
    ev = dataclasses.replace(cfg.evaluate, rankers=["enrich_clean", "random"])
    data = LabeledImages(name="toy", images=images, labels=np.arange(300) % 2, split=np.array(["train"] * 300), classes=["a", "b"])
    train = np.arange(300)
    orders = _replicate_rankings({"vae": unit}, ev, cfg, data, train, 0, [5, 60], {"vae": kept})
    clean, rnd = orders[("vae", "enrich_clean")], orders[("none", "random")]
    assert len(clean) == 60 and np.array_equal(np.sort(clean[:5]), np.sort(rnd[:5]))  # the shared seed set first
    assert not set(clean[5:]) - set(kept)
    rows = np.union1d(kept, rnd[:5])
    ref = rows[rank("enrich", unit[rows], np.searchsorted(rows, np.sort(rnd[:5])), 55, cfg.selection).order]
    np.testing.assert_array_equal(clean, ref)
