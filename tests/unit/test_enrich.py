"""ENRICH: every fast path against the plain loop, on random ties/duplicates and on real images."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enrich_ray.selection import enrich
from enrich_ray.selection.enrich import (
    CoverageIndex,
    coverage_curve,
    enrich_greedy,
    max_similarity,
)

TOL = 1e-6


def unit_rows(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def pixel_embeddings(npz_path, n: int) -> np.ndarray:
    """Raw-pixel unit embeddings of the first n PneumoniaMNIST training images, mean image removed."""
    images = np.load(npz_path)["train_images"][:n].reshape(n, -1).astype(np.float32)
    return unit_rows(images - images.mean(axis=0))


def assert_valid_greedy(x: np.ndarray, order: np.ndarray, score: np.ndarray, n_seed: int) -> None:
    """Replay in float64: every pick's m is the minimum over unranked rows and equals its score (1e-6)."""
    x64 = x.astype(np.float64)
    m = (x64 @ x64[order[:n_seed]].T).max(axis=1)
    ranked = np.zeros(x.shape[0], dtype=bool)
    ranked[order[:n_seed]] = True
    assert np.isnan(score[:n_seed]).all()
    for i in range(n_seed, order.size):
        p = order[i]
        assert not ranked[p], f"row {p} ranked twice"
        assert m[p] <= m[~ranked].min() + TOL, f"pick {i} (row {p}) is not a greedy pick"
        assert abs(score[i] - m[p]) <= TOL, f"pick {i}: score {score[i]} but max similarity {m[p]}"
        ranked[p] = True
        np.maximum(m, x64 @ x64[p], out=m)


def first_near_tie(x: np.ndarray, order: np.ndarray, n_seed: int) -> int:
    """The first position at which the reference's choice was within 1e-6 of another row (or the end)."""
    x64 = x.astype(np.float64)
    m = (x64 @ x64[order[:n_seed]].T).max(axis=1)
    m[order[:n_seed]] = np.inf
    for i in range(n_seed, order.size):
        low = np.partition(m, 1)[:2] if m.size > 1 else m
        if low.size == 2 and low[1] - low[0] <= TOL:
            return i
        m[order[i]] = np.inf
        np.maximum(m, x64 @ x64[order[i]], out=m)
    return order.size


def assert_same_as_reference(x, reference, order, score, stop: int | None = None) -> None:
    """Identical order until the reference meets a near-tie (`stop`); every pick valid throughout."""
    if stop is None:
        stop = first_near_tie(x, reference.order, reference.n_seed)
    np.testing.assert_array_equal(order[:stop], reference.order[:stop])
    assert order.size == reference.order.size
    assert_valid_greedy(x, order, score, reference.n_seed)


def clustered(x: np.ndarray, seed: np.ndarray, k: int, batch: int, n_clusters: int | None = None):
    """The clustered path with a chosen batch size, so small inputs exercise the batch logic."""
    index = CoverageIndex(x, max_similarity(x, seed), ranked=seed, n_clusters=n_clusters)
    order, score, rest = enrich._greedy_clustered(index, k, batch=batch)
    return np.concatenate([seed, order]), np.concatenate([np.full(seed.size, np.nan, np.float32), score]), rest


@st.composite
def problems(draw):
    """Small embedding sets from a coarse grid (many exact ties and duplicates), seeds and k."""
    n = draw(st.integers(2, 60))
    d = draw(st.integers(1, 6))
    grid = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    raw = rng.integers(-grid, grid + 1, size=(n, d)).astype(np.float64)
    raw[np.abs(raw).sum(axis=1) == 0, 0] = 1.0
    n_seed = draw(st.integers(1, max(1, n // 3)))
    seed = rng.choice(n, size=n_seed, replace=False).astype(np.int64)
    k = draw(st.one_of(st.none(), st.integers(0, n)))
    return unit_rows(raw), seed, k


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(), st.integers(1, 8), st.integers(1, 6))
def test_fast_paths_match_the_plain_loop(problem, batch, n_clusters):
    x, seed, k = problem
    reference = enrich_greedy(x, seed, k, method="plain")
    assert_valid_greedy(x, reference.order, reference.score, seed.size)
    stop = first_near_tie(x, reference.order, seed.size)
    order, score, _ = clustered(x, seed, reference.order.size - seed.size, batch, min(n_clusters, x.shape[0]))
    assert_same_as_reference(x, reference, order, score, stop)
    for method in ("clustered", "torch"):
        fast = enrich_greedy(x, seed, k, method=method)
        assert_same_as_reference(x, reference, fast.order, fast.score, stop)
        np.testing.assert_array_equal(fast.coverage[seed.size : -1], fast.score[seed.size + 1 :])
        np.testing.assert_allclose(fast.coverage[: stop - 1], reference.coverage[: stop - 1], atol=TOL)


def test_real_images_all_paths_agree(pneumonia_npz):
    x = pixel_embeddings(pneumonia_npz, 800)
    seed = np.array([7, 300])
    reference = enrich_greedy(x, seed, method="plain")
    stop = first_near_tie(x, reference.order, seed.size)
    assert stop > 100  # real images: the greedy is decided well beyond float noise
    order, score, _ = clustered(x, seed, x.shape[0] - seed.size, batch=64)
    assert_same_as_reference(x, reference, order, score, stop)
    for method in ("clustered", "torch"):
        fast = enrich_greedy(x, seed, method=method)
        assert_same_as_reference(x, reference, fast.order, fast.score, stop)
    # real chest X-rays: the first picks are far from the seeds, the last are near-duplicates
    assert reference.score[2] < 0.2 and reference.score[-1] > 0.8


def test_contract_and_coverage():
    rng = np.random.default_rng(3)
    x = unit_rows(rng.standard_normal((200, 8)))
    r = enrich_greedy(x, [4, 2], 50)
    assert r.order.dtype == np.int64 and r.score.dtype == np.float32
    assert r.order.size == r.score.size == r.coverage.size == 52
    assert list(r.order[:2]) == [4, 2] and np.isnan(r.score[:2]).all() and np.isnan(r.coverage[:2]).all()
    np.testing.assert_array_equal(r.coverage[2:-1], r.score[3:])  # coverage after a pick = next score
    full = enrich_greedy(x, [4, 2])
    assert np.array_equal(np.sort(full.order), np.arange(200)) and full.coverage[-1] == 1.0
    assert np.all(np.diff(full.score[2:]) >= -TOL)  # the covering radius only shrinks
    np.testing.assert_allclose(coverage_curve(x, full.order, 2), full.coverage, atol=TOL)
    assert enrich_greedy(x, [0], 0).order.tolist() == [0]
    assert enrich_greedy(x, [0], 10_000).order.size == 200


def test_coverage_curve_clustered_matches_plain(monkeypatch):
    rng = np.random.default_rng(5)
    x = unit_rows(rng.standard_normal((300, 6)))
    order = np.concatenate([[10], rng.permutation(np.setdiff1d(np.arange(300), [10]))[:120]])
    plain = coverage_curve(x, order, 1)
    monkeypatch.setattr(enrich, "PLAIN_MAX_ROWS", 0)
    np.testing.assert_allclose(coverage_curve(x, order, 1), plain, atol=TOL)
    monkeypatch.setattr(enrich, "_CURVE_BATCH", 7)  # the index's curve across batches of rows
    np.testing.assert_allclose(coverage_curve(x, order, 1), plain, atol=TOL)
    full = np.concatenate([[10], np.setdiff1d(np.arange(300), [10])])
    assert coverage_curve(x, full, 1)[-1] == 1.0


def test_auto_chooses_by_device_and_size(monkeypatch):
    monkeypatch.setattr(enrich, "_default_device", lambda: "cpu")
    assert enrich._choose_method("auto", None, 1000) == "plain"
    assert enrich._choose_method("auto", None, enrich.PLAIN_MAX_ROWS + 1) == "clustered"
    assert enrich._choose_method("auto", "cpu", 10) == "torch"
    monkeypatch.setattr(enrich, "_default_device", lambda: "cuda")
    assert enrich._choose_method("auto", None, 10) == "torch"
    assert enrich._choose_method("plain", None, 10) == "plain"


@pytest.mark.parametrize(
    "embeddings, seed, message",
    [
        (np.ones((3, 2)), [0], "unit rows"),
        (np.array([[1.0, 0.0], [np.nan, 0.0]]), [0], "NaN"),
        (np.eye(3), [], "at least one"),
        (np.eye(3), [0, 0], "repeat"),
        (np.eye(3), [3], r"\[0, 3\)"),
        (np.eye(3)[0], [0], "shape"),
    ],
)
def test_bad_input_is_a_clear_error(embeddings, seed, message):
    with pytest.raises(ValueError, match=message):
        enrich_greedy(embeddings, seed)


@pytest.mark.parametrize("full_share", [0.0, 0.5, 2.0])
def test_clustered_updates_match_the_plain_loop(monkeypatch, full_share):
    """Grouped Gaussian rows: the pruned update (clusters skipped, rows whose m is above the bound
    skipped), the one-product update of every row, and the mix of the two each give the plain loop's
    ranking up to its first near-tie and a valid greedy after it; under a quota, the plain loop's
    ranking until the two first differ, at a near-tie."""
    from enrich_ray.selection.quota import QuotaState, quotas_for
    import pandas as pd

    monkeypatch.setattr(enrich, "_FULL_UPDATE_SHARE", full_share)
    rng = np.random.default_rng(11)
    n = 2000
    centres = rng.standard_normal((40, 16))
    x = unit_rows(centres[rng.integers(40, size=n)] + 0.35 * rng.standard_normal((n, 16)))
    seed = np.array([5])
    reference = enrich_greedy(x, seed, method="plain")
    stop = first_near_tie(x, reference.order, 1)
    assert stop > 100
    order, score, _ = clustered(x, seed, n - 1, batch=256, n_clusters=60)
    assert_same_as_reference(x, reference, order, score, stop)
    quotas = quotas_for(pd.DataFrame({"patient_key": [f"p{i % 300}" for i in range(n)]}), {"patient_key": 2})
    capped = enrich_greedy(x, seed, method="plain", quotas=quotas)
    index = CoverageIndex(x, max_similarity(x, seed), ranked=seed, n_clusters=60)
    order, score, _ = enrich._greedy_clustered(index, n - 1, batch=256, state=QuotaState(quotas, seed))
    assert order.size == capped.order.size - 1 == 599  # 300 patients, 2 each, the seed one of them
    differ = np.flatnonzero(order != capped.order[1:])
    agree = differ[0] if differ.size else order.size
    assert agree > 100
    np.testing.assert_allclose(score[:agree], capped.score[1 : agree + 1], atol=TOL)
    if differ.size:
        assert abs(score[agree] - capped.score[agree + 1]) <= TOL
