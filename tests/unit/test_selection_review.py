"""Review fixes in selection: near-unit rows in the clustered ENRICH path, LogDetMI's η range,
and FLQMI/LogDetMI saying when they stop at the pool size."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from enrich_ray.config import ConfigError, SelectionConfig, load_config
from enrich_ray.selection import rank
from enrich_ray.selection.enrich import enrich_greedy
from enrich_ray.selection.smi import smi_ranking
from tests.unit.test_enrich import assert_valid_greedy, first_near_tie


def plain_enrich(x: np.ndarray, seed: list[int], k: int) -> list[int]:
    """Reference farthest-first traversal over cosine similarity, float64, ties to the lowest row."""
    u = x.astype(np.float64)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    m = (u @ u[seed].T).max(axis=1)
    m[seed] = np.inf
    order = []
    for _ in range(k):
        p = int(np.argmin(m))
        order.append(p)
        m[p] = np.inf
        m = np.maximum(m, u @ u[p])
    return order


def test_clustered_enrich_on_rows_of_norm_1_0009_equals_the_plain_loop():
    # Tight clusters, every row scaled to norm 1.0009 (within the input check's 1e-3): unrenormalised,
    # the clustered path's pruning bounds (1e-5 slack) missed raises and pick 597 was not greedy.
    rng = np.random.default_rng(4)
    centres = rng.standard_normal((30, 16))
    x = centres[rng.integers(0, 30, 4000)] + 0.05 * rng.standard_normal((4000, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x = (x * 1.0009).astype(np.float32)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    expected = plain_enrich(x, [0], 600)
    stop = first_near_tie(unit, np.array([0, *expected]), 1)
    for method in ("clustered", "plain"):
        got = enrich_greedy(x, [0], 600, method=method)
        assert got.order[1:stop].tolist() == expected[: stop - 1], method
        assert_valid_greedy(unit, got.order, got.score, 1)


def kernel_rows(n: int, d: int = 8, seed: int = 1) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_logdet_eta_has_its_own_range_and_smi_eta_keeps_flvmi_above_one():
    x = kernel_rows(80)
    query = [1, 2, 3]
    ok = rank("smi", x, [0], 20, SelectionConfig(smi_function="logdetmi", logdet_eta=1.0, smi_eta=3.0), query=query)
    assert np.isfinite(ok.score[1:]).all() and len(set(ok.order.tolist())) == 21
    flvmi = rank("smi", x, [0], 20, SelectionConfig(smi_function="flvmi", smi_eta=3.0), query=query)
    assert np.isfinite(flvmi.score[1:]).all()
    with pytest.raises(ValueError, match="logdet_eta"):
        smi_ranking(x, [0], query, 20, function="logdetmi", eta=1.5)
    with pytest.raises(ConfigError, match="selection.logdet_eta"):
        load_config(overrides=["selection.logdet_eta=1.5"])
    with pytest.raises(ConfigError, match="selection.smi_eta"):
        load_config(overrides=["selection.smi_eta=-0.1"])
    assert load_config(overrides=["selection.smi_eta=4"]).selection.smi_eta == 4.0


def test_logdet_with_eta_above_one_was_indefinite():
    """Why the range: with η > 1 the second Schur complements go negative (the gains' NaN)."""
    from enrich_ray.selection.smi import kernel

    x = kernel_rows(80)
    data, query = x[10:], x[:3]
    k1 = kernel(data, data) + np.eye(len(data))
    cross = kernel(data, query)
    k2 = lambda eta: k1 - eta**2 * cross @ np.linalg.solve(kernel(query, query) + np.eye(3), cross.T)  # noqa: E731
    assert np.linalg.eigvalsh(k2(1.0)).min() > 0
    assert np.linalg.eigvalsh(k2(3.0)).min() < 0


@pytest.mark.parametrize("function", ["flqmi", "logdetmi"])
def test_pool_limited_rankers_say_they_stopped(function, caplog):
    x = kernel_rows(120)
    with caplog.at_level(logging.WARNING):
        r = smi_ranking(x, [0], [1, 2], None, function=function, pool=30)
    assert r.order.size == 31
    assert r.info["pool"] == 30 and r.info["unranked"] == 119 - 30
    assert any("pool" in rec.getMessage() and "selection.smi_pool" in rec.getMessage() for rec in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        whole = smi_ranking(x, [0], [1, 2], 10, function=function, pool=30)
    assert whole.info.get("unranked", 0) == 0 and not caplog.records
