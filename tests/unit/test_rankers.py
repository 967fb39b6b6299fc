"""Seeds, random, EXAMINE, targeted SMI and TypiClust against brute-force references.

Every test that takes `labeled` runs twice: on synthetic clustered embeddings with a planted rare
class (always), and on raw-pixel embeddings of real PneumoniaMNIST images (skipped without
../shared/data).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from enrich_ray.config import SelectionConfig
from enrich_ray.selection import rank, seed_rows
from enrich_ray.selection.examine import examine_ranking, examine_scores
from enrich_ray.selection.smi import FLQMI, FLVMI, kernel, smi_ranking
from enrich_ray.selection.typiclust import kmeans_labels, typicality, typiclust_ranking


def unit(x: np.ndarray) -> np.ndarray:
    """Rows centred on their mean and L2-normalised, float32."""
    x = x - x.mean(axis=0)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def planted_clusters(n: int = 400, d: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit embeddings around 8 random centres, and labels: class 0 (about a quarter, the rare class)
    lives around 2 of the centres, class 1 around the other 6."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((8, d))
    labels = (rng.random(n) >= 0.25).astype(np.int64)
    cluster = np.where(labels == 0, rng.integers(0, 2, n), rng.integers(2, 8, n))
    return unit(centres[cluster] + 0.6 * rng.standard_normal((n, d))), labels


@pytest.fixture(scope="module", params=["synthetic", "pneumoniamnist"])
def labeled(request) -> tuple[np.ndarray, np.ndarray]:
    """Unit embeddings and class labels of 400 frames: planted clusters, or raw pixels (mean image
    removed) of 400 real PneumoniaMNIST images, where class 0 (normal) is the minority."""
    if request.param == "synthetic":
        return planted_clusters()
    data = np.load(request.getfixturevalue("pneumonia_npz"))
    images = data["train_images"][:400].reshape(400, -1).astype(np.float64)
    return unit(images), data["train_labels"][:400, 0]


def test_planted_clusters_have_a_rare_class_and_unit_rows():
    x, labels = planted_clusters()
    assert x.shape == (400, 32) and np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    assert 0.15 < np.mean(labels == 0) < 0.35
    same = (x @ x.T)[np.ix_(labels == 0, labels == 0)].mean()
    across = (x @ x.T)[np.ix_(labels == 0, labels == 1)].mean()
    assert same > across + 0.2  # the rare class is a region of its own, so targeting it can succeed


def test_seed_rows_count_fraction_mask():
    cfg = SelectionConfig(seed_count=5, random_seed=3)
    a = seed_rows(100, cfg, None)
    assert a.dtype == np.int64 and a.size == 5 and np.unique(a).size == 5
    np.testing.assert_array_equal(a, seed_rows(100, cfg, None))
    assert not np.array_equal(a, seed_rows(100, dataclasses.replace(cfg, random_seed=4), None))
    assert seed_rows(100, SelectionConfig(seed_fraction=0.1), None).size == 10
    assert seed_rows(3, SelectionConfig(seed_fraction=0.01), None).size == 1
    mask = np.zeros(100, dtype=bool)
    mask[[4, 9]] = True
    assert seed_rows(100, cfg, mask).tolist() == [4, 9]
    with pytest.raises(ValueError, match="no frame"):
        seed_rows(100, cfg, np.zeros(100, dtype=bool))
    with pytest.raises(ValueError, match="shape"):
        seed_rows(100, cfg, np.zeros(99, dtype=bool))
    with pytest.raises(ValueError, match="seed_count"):
        seed_rows(4, SelectionConfig(seed_count=5), None)
    with pytest.raises(ValueError, match="seed_fraction"):
        seed_rows(4, SelectionConfig(seed_fraction=1.5), None)


def test_random_is_a_seeded_permutation_after_the_seeds():
    cfg = SelectionConfig(random_seed=1)
    x = np.eye(50, dtype=np.float32)
    r = rank("random", x, [3, 1], None, cfg)
    assert r.order[:2].tolist() == [3, 1] and np.array_equal(np.sort(r.order), np.arange(50))
    np.testing.assert_array_equal(r.order, rank("random", x, [3, 1], None, cfg).order)
    assert not np.array_equal(r.order, rank("random", x, [3, 1], None, SelectionConfig(random_seed=2)).order)
    assert rank("random", x, [0], 7, cfg).order.size == 8


# EXAMINE against the SVD reference: the rankers renormalise float32 rows (check_embeddings), so the
# two see rows an ulp apart: measured differences reach 1.4e-8, while the first-order form's errors
# are about 3e-3 (median, planted clusters).
TOL = 1e-7


def brute_examine(x: np.ndarray) -> np.ndarray:
    """σ1(X) − σ1(X without row i) by one SVD per row."""
    x = x.astype(np.float64)
    top = np.linalg.svd(x, compute_uv=False)[0]
    return np.array([top - np.linalg.svd(np.delete(x, i, axis=0), compute_uv=False)[0] for i in range(len(x))])


def test_examine_matches_leave_one_out_svd(labeled):
    x = labeled[0][:50]
    brute = brute_examine(x)
    np.testing.assert_allclose(examine_scores(x), brute, atol=TOL, rtol=0)
    rough = examine_scores(x, exact=False)
    assert np.corrcoef(rough, brute)[0, 1] > 0.99  # the first-order form keeps the picture
    # a synthetic case where the top two eigenvalues nearly meet
    rng = np.random.default_rng(0)
    y = rng.standard_normal((40, 6)) * np.array([3, 2.99, 1, 1, 1, 1])
    y = (y / np.linalg.norm(y, axis=1, keepdims=True)).astype(np.float32)
    np.testing.assert_allclose(examine_scores(y), brute_examine(y), atol=TOL, rtol=0)


def test_examine_order_seeds_and_transform(labeled):
    x = labeled[0][:120]
    scores = examine_scores(x)
    r = examine_ranking(x, [5], 20)
    assert r.order[0] == 5 and np.isnan(r.score[0])
    rest = np.setdiff1d(np.arange(120), [5])
    np.testing.assert_array_equal(r.order[1:], rest[np.argsort(-scores[rest], kind="stable")][:20])
    low = examine_ranking(x, [5], 20, most_valuable_first=False)
    np.testing.assert_array_equal(low.order[1:], rest[np.argsort(scores[rest], kind="stable")][:20])
    e = examine_ranking(x, [5], 20, exponential=True)
    np.testing.assert_array_equal(e.order, r.order)
    np.testing.assert_allclose(e.score[1:], np.exp(r.score[1:]), rtol=1e-6)


def step_gains(value, n: int, picks: list[int]) -> list[np.ndarray]:
    """f(A + x) - f(A) for every x at each step of the pick sequence (-inf for rows already chosen)."""
    out = []
    for t in range(len(picks)):
        chosen = list(picks[:t])
        base = value(chosen)
        out.append(np.array([value(chosen + [i]) - base if i not in chosen else -np.inf for i in range(n)]))
    return out


def brute_greedy(value, n: int, k: int) -> tuple[list[int], list[np.ndarray]]:
    """Plain greedy: evaluate f(A + x) for every x each step; ties to the lowest row."""
    chosen: list[int] = []
    gains = []
    for _ in range(k):
        g = step_gains(value, n, chosen + [0])[-1]
        chosen.append(int(np.argmax(g)))
        gains.append(g)
    return chosen, gains


def smi_values(data, query, eta, lam, function):
    """f(A) over the ground set `data` (A: row indices into it), straight from the formulas (docs/architecture.md §3)."""
    s_xq, s_xx, s_qq = kernel(data, query), kernel(data, data), kernel(query, query)

    def flvmi(a):
        if not a:
            return 0.0
        return s_xq[a].max(axis=0).sum() + eta * s_xq[a].max(axis=1).sum()

    def flqmi(a):
        if not a:
            return 0.0
        return np.minimum(s_xx[:, a].max(axis=1), eta * s_xq.max(axis=1)).sum()

    def logdetmi(a):
        if not a:
            return 0.0
        sa = s_xx[np.ix_(a, a)] + lam * np.eye(len(a))
        inner = sa - eta**2 * s_xq[a] @ np.linalg.solve(s_qq + lam * np.eye(len(query)), s_xq[a].T)
        return np.linalg.slogdet(sa)[1] - np.linalg.slogdet(inner)[1]

    return {"flvmi": flvmi, "flqmi": flqmi, "logdetmi": logdetmi}[function]


def first_near_tie(gains_per_step: list[np.ndarray]) -> int:
    """The first step at which the best gain is within 1e-6 of the second best."""
    for i, g in enumerate(gains_per_step):
        top = np.sort(g)[-2:]
        if top.size == 2 and top[1] - top[0] < 1e-6:
            return i
    return len(gains_per_step)


@pytest.mark.parametrize("function, eta", [("flvmi", 1.0), ("flvmi", 0.3), ("flqmi", 1.0), ("flqmi", 0.9), ("logdetmi", 1.0), ("logdetmi", 0.7)])
def test_smi_greedy_matches_brute_force(labeled, function, eta):
    x = labeled[0][:60]
    q = np.array([3, 17, 40])
    r = smi_ranking(x, [0], q, 12, function=function, eta=eta, lam=1.0, pool=60)
    cand = np.arange(1, 60)  # the pool (all rows but the seed), ascending
    on_pool = smi_values(x[cand], x[q], eta, 1.0, function)
    order, gains = brute_greedy(on_pool, cand.size, 12)
    stop = first_near_tie(gains)
    assert stop >= 2
    picks = np.searchsorted(cand, r.order[1:])
    np.testing.assert_array_equal(picks[:stop], order[:stop])
    for t, g in enumerate(step_gains(on_pool, cand.size, list(picks))):  # later picks: valid greedy picks
        assert g[picks[t]] >= g.max() - 1e-6
        assert abs(r.score[1 + t] - g[picks[t]]) <= 1e-5 * max(1.0, abs(g[picks[t]]))


def test_gcmi_is_top_k_by_query_similarity(labeled):
    x = labeled[0][:100]
    q = np.array([1, 2])
    r = smi_ranking(x, [0], q, 10, function="gcmi", lam=0.5)
    total = kernel(x, x[q]).sum(axis=1)
    total[0] = -np.inf
    np.testing.assert_array_equal(r.order[1:], np.argsort(-total, kind="stable")[:10])
    np.testing.assert_allclose(r.score[1:], total[r.order[1:]], rtol=1e-6)


def test_lazy_gains_are_the_vectorised_gains(labeled):
    x, q = labeled[0][:50], labeled[0][50:53]
    for f in (FLVMI(x, q, 1.0), FLQMI(x, q, 1.0)):
        allg = f.gains(np.arange(50), None)
        assert np.array_equal(np.array([f.gains(np.array([i]), None)[0] for i in range(50)]), allg)


def test_targeted_selection_finds_the_query_class(labeled):
    x, labels = labeled
    rare = np.flatnonzero(labels == 0)  # the minority class (normal chest X-rays in PneumoniaMNIST)
    q = rare[:5]
    picks = smi_ranking(x, [int(np.flatnonzero(labels == 1)[0])], q, 40, function="flvmi").order[1:]
    share = np.isin(picks, rare).mean()
    assert share > 1.5 * np.mean(labels == 0), f"only {share:.0%} of FLVMI picks are of the query class"


def test_rank_dispatches_by_name(labeled):
    x = labeled[0][:80]
    cfg = SelectionConfig(smi_function="flqmi", smi_pool=30)
    for name in ("enrich", "random", "examine", "typiclust", "typiclust_enrich"):
        r = rank(name, x, [2], 5, cfg)
        assert r.ranker == name and r.order[0] == 2 and r.order.size == 6 and np.unique(r.order).size == 6
    s = rank("smi", x, [2], 50, cfg, query=[4, 5])
    assert s.ranker == "smi:flqmi" and s.order.size == 31  # the pool caps the ranking
    with pytest.raises(ValueError, match="query"):
        rank("smi", x, [2], 5, cfg)
    with pytest.raises(ValueError, match="unknown ranker"):
        rank("kmeans", x, [2], 5, cfg)


def test_typicality_is_the_inverse_mean_distance_to_the_nearest_others(labeled):
    x = labeled[0][:150]
    d = np.sqrt(np.maximum(((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1), 0))
    np.fill_diagonal(d, np.inf)
    want = 1.0 / np.sort(d, axis=1)[:, :20].mean(axis=1)
    assert np.allclose(typicality(x, 20), want, rtol=1e-3)


def reference_typiclust(x: np.ndarray, seed: list[int], k: int, random_seed: int = 0) -> list[int]:
    """TypiClust in plain loops over the same k-means labels: each round clusters into twice the
    ranked set, then takes the most typical frame of each cluster without a ranked frame, largest first."""
    typ = typicality(x, 20)
    order = list(seed)
    r = 0
    while len(order) < len(seed) + k:
        target = min(len(x), 2 * len(order))
        labels = kmeans_labels(x, target, random_seed + r)
        clusters = [c for c in range(target) if (labels == c).any() and not any(labels[i] == c for i in order)]
        clusters.sort(key=lambda c: -(labels == c).sum())
        for c in clusters[: target - len(order)]:
            members = [i for i in range(len(x)) if labels[i] == c]
            order.append(max(members, key=lambda i: (typ[i], -i)))
            if len(order) == len(seed) + k:
                break
        r += 1
    return order


def test_typiclust_matches_the_plain_reference(labeled):
    x = labeled[0][:300]
    got = typiclust_ranking(x, [5, 17], 100)
    assert got.order.tolist() == reference_typiclust(x, [5, 17], 100)
    assert got.ranker == "typiclust" and got.n_seed == 2 and np.isnan(got.score[:2]).all() and np.isfinite(got.score[2:]).all()
    assert np.unique(got.order).size == got.order.size
    assert got.order.tolist() == typiclust_ranking(x, [5, 17], 100).order.tolist()  # deterministic


def test_typiclust_picks_the_dense_middle_before_the_edge():
    # 6 tight clusters of 60 and 40 scattered frames: the first picks are cluster frames, one per
    # cluster, among the half nearest its centre; ENRICH's first picks are mostly the scattered ones.
    rng = np.random.default_rng(4)
    centres = rng.standard_normal((6, 16)) * 3
    x = np.concatenate([np.repeat(centres, 60, axis=0) + 0.3 * rng.standard_normal((360, 16)), 3 * rng.standard_normal((40, 16))])
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    scattered = np.arange(360, 400)
    picks = typiclust_ranking(x, [0], 5).order[1:]
    assert not np.isin(picks, scattered).any()
    assert sorted(picks // 60) == [1, 2, 3, 4, 5]  # once each cluster the seed's is not
    for p in picks:
        members = x[(p // 60) * 60 : (p // 60 + 1) * 60]
        centre = members.mean(axis=0)
        assert np.linalg.norm(x[p] - centre) <= np.median(np.linalg.norm(members - centre, axis=1))
    assert np.isin(rank("enrich", x, [0], 6, SelectionConfig()).order[1:], scattered).mean() >= 0.5


def test_typiclust_then_enrich_is_typiclust_s_first_round_then_the_plain_greedy():
    """TypiClust's first round (selection.typiclust_fraction of the frames, at least the seed set's
    size), then ENRICH seeded by all of them: equal to the two rankers run one after the other, the
    plain greedy loop included."""
    from enrich_ray.selection.enrich import enrich_greedy

    rng = np.random.default_rng(6)
    centres = rng.standard_normal((6, 16)) * 3
    x = np.concatenate([np.repeat(centres, 60, axis=0) + 0.3 * rng.standard_normal((360, 16)), 3 * rng.standard_normal((40, 16))])
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    seed = [0, 61, 130]
    for fraction, typical in ((0.0, 3), (0.02, 8), (0.05, 20)):  # the seed set's size, then 2% and 5% of 400
        cfg = SelectionConfig(typiclust_fraction=fraction)
        both = rank("typiclust_enrich", x, seed, 30, cfg)
        first = typiclust_ranking(x, seed, typical).order
        np.testing.assert_array_equal(both.order[: 3 + typical], first)
        np.testing.assert_array_equal(both.order, enrich_greedy(x, first, 30 - typical, method="plain").order)
        assert both.n_seed == 3 and both.info["typiclust_picks"] == typical and np.isnan(both.score[:3]).all()
        assert np.isfinite(both.score[3:]).all()
    one = rank("typiclust_enrich", x, [0], None, SelectionConfig())  # curate's default seed set: one frame
    assert one.info["typiclust_picks"] == 8 and one.order.size == 400
    np.testing.assert_array_equal(one.order[:9], typiclust_ranking(x, [0], 8).order)
    assert rank("typiclust_enrich", x, seed, 2, SelectionConfig()).order.size == 5  # a budget inside the first round


