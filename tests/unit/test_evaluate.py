"""The evaluation job: statistics against plain references, the smallest-matching-fraction rule,
dataset loading (MedMNIST .npz, a packed BUSI archive with labels) and the job end to end on
a few hundred real PneumoniaMNIST images."""
from __future__ import annotations

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
from enrich_ray.evaluate.datasets import load_dataset
from enrich_ray.evaluate.stats import mann_whitney_p, significance_mark, smallest_matching_fraction
from enrich_ray.pipelines.evaluate import check_evaluate_config, run_evaluation, subset_sizes, summarize

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
    """ENRICH reaches the full set's AUC at 20%, random never does; the table says so."""
    cfg = load_config(None, ["evaluate.fractions=[0.1,0.2,0.4]"]).evaluate
    rng = np.random.default_rng(2)
    rows = []
    for i in range(6):
        noise = rng.normal(0, 0.002)
        rows.append({"embedder": "none", "ranker": "full", "fraction": 1.0, "n_train": 1000, "auc": 0.95 + noise})
        for f, n, enrich, random in [(0.1, 100, 0.80, 0.80), (0.2, 200, 0.95, 0.85), (0.4, 400, 0.95, 0.90)]:
            rows.append({"embedder": "vae", "ranker": "enrich", "fraction": f, "n_train": n, "auc": enrich + rng.normal(0, 0.002)})
            rows.append({"embedder": "none", "ranker": "random", "fraction": f, "n_train": n, "auc": random + rng.normal(0, 0.002)})
    summary, budget = summarize(pd.DataFrame(rows), cfg, n_train=1000, seconds_per_image=3.0)
    enrich = summary[summary["ranker"] == "enrich"].set_index("fraction")
    assert enrich.loc[0.1, "vs_random"] == ""  # the seed set is common to every ranker
    assert enrich.loc[0.2, "vs_random"] == "**"  # 6 vs 6 fully separated: exact p = 2/924
    assert enrich.loc[0.2, "p_vs_random"] == pytest.approx(2 / 924)
    assert enrich["matches_full"].tolist() == [False, True, True]
    b = budget.set_index("ranker")
    assert b.loc["enrich", "smallest_matching_fraction"] == 0.2
    assert b.loc["enrich", "images_saved"] == 800
    assert b.loc["enrich", "labeling_hours_saved"] == pytest.approx(800 * 3.0 / 3600)
    assert np.isnan(b.loc["random", "smallest_matching_fraction"]) and b.loc["random", "images_saved"] == 0
    assert b.loc["random", "embedder"] == "none"  # random ignores the embedding: one row


def test_config_checks_name_the_key():
    check_evaluate_config(load_config(None).evaluate)
    bad = [
        (["evaluate.fractions=[0.2,0.1]"], "evaluate.fractions"),
        (["evaluate.fractions=[0.1,1.0]"], "evaluate.fractions"),
        (["evaluate.rankers=[enrich]"], "include random"),
        (["evaluate.rankers=[enrich,random,smi]"], "query_label"),
        (["evaluate.replicates=0"], "evaluate.replicates"),
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
        settings = TrainSettings(steps=3, batch_size=16, device=torch.device("cpu"), amp=amp)
        model = train_classifier(data.images[rows], data.labels[rows], 2, seed=7, settings=settings)
        runs.append(predict_proba(model, data.images[test], settings))
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_array_equal(runs[0], runs[2])
    assert 0.0 <= auc(data.labels[test], runs[0]) <= 1.0
    other = train_classifier(data.images[rows], data.labels[rows], 2, seed=8, settings=settings)
    assert not np.array_equal(predict_proba(other, data.images[test], settings), runs[2])


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


def _pneumonia_subset(pneumonia_npz: Path, path: Path, n_train: int, n_test: int) -> Path:
    """A few hundred real PneumoniaMNIST images in MedMNIST's layout."""
    rng = np.random.default_rng(0)
    with np.load(pneumonia_npz) as npz:
        tr = rng.choice(len(npz["train_labels"]), n_train, replace=False)
        te = rng.choice(len(npz["test_labels"]), n_test, replace=False)
        np.savez(path, train_images=npz["train_images"][tr], train_labels=npz["train_labels"][tr],
                 test_images=npz["test_images"][te], test_labels=npz["test_labels"][te])
    return path


def test_evaluation_end_to_end(pneumonia_npz, tmp_path):
    npz = _pneumonia_subset(pneumonia_npz, tmp_path / "pneumo_small.npz", 300, 200)
    cfg = load_config(None, [
        "evaluate.embedders=[pixels]", "evaluate.rankers=[enrich,random,examine,smi]", "evaluate.query_label=0",
        "evaluate.fractions=[0.05,0.2,0.5]",
        "evaluate.replicates=1", "evaluate.models_per_replicate=1", "evaluate.train_steps=15",
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
    assert result["classifiers_trained"] == 1 + 1 + 4 * 2  # identical subsets train once
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
    assert result["summary"].startswith("pneumo_small: full-set AUC")
