"""Balanced selection (selection.quota): every ENRICH path against a plain constrained reference loop."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enrich_ray.selection import enrich, rank
from enrich_ray.selection.enrich import CoverageIndex, enrich_greedy, max_similarity
from enrich_ray.config import SelectionConfig
from enrich_ray.selection.quota import QUOTA_COLUMNS, QuotaState, quota_line, quotas_for

TOL = 1e-6


def unit_rows(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def allowed_rows(ranked: list[int], frames: pd.DataFrame, quota: dict[str, int]) -> list[int]:
    """The unranked rows whose every keyed group holds fewer ranked frames than its cap."""
    keys = {c: [None if pd.isna(v) else v for v in frames[c]] for c in quota}
    held = {c: Counter(keys[c][r] for r in ranked) for c in quota}
    return [r for r in range(len(frames)) if r not in ranked
            and all(keys[c][r] is None or held[c][keys[c][r]] < cap for c, cap in quota.items())]


def reference(x: np.ndarray, seed: list[int], k: int | None, frames: pd.DataFrame, quota: dict[str, int]):
    """The constrained greedy written plainly (float64): among unranked frames whose groups have room,
    the one least similar to everything ranked (ties: lowest row), until k picks or none is allowed.
    Returns the ranked rows, and at each pick the gap to the next-best allowed frame (inf: none)."""
    x64 = x.astype(np.float64)
    ranked = list(seed)
    gaps = []
    k = x.shape[0] - len(seed) if k is None else k
    while len(ranked) < len(seed) + k:
        rows = allowed_rows(ranked, frames, quota)
        if not rows:
            break
        m = {r: max(float(x64[r] @ x64[s]) for s in ranked) for r in rows}
        best = min(rows, key=lambda r: (m[r], r))
        rest = sorted(m[r] for r in rows if r != best)
        gaps.append(rest[0] - m[best] if rest else np.inf)
        ranked.append(best)
    return ranked, gaps


def coverage_after(x: np.ndarray, ranked: list[int], n_seed: int) -> np.ndarray:
    """After each pick, the smallest max-similarity of any unranked frame, closed or not (1: none left)."""
    x64 = x.astype(np.float64)
    sims = x64 @ x64.T
    out = []
    for i in range(n_seed, len(ranked)):
        rest = np.setdiff1d(np.arange(x.shape[0]), ranked[: i + 1])
        out.append(sims[np.ix_(rest, ranked[: i + 1])].max(axis=1).min() if rest.size else 1.0)
    return np.array(out)


def assert_matches(x, frames, quota, seed, k, order, score, coverage):
    """The fast path's ranking is the reference's until the reference meets a near-tie (two allowed
    frames within 1e-6); throughout, every pick is allowed and least covered among the allowed, no
    cap is exceeded beyond what the seeds hold, the ranking ends only at k or when no frame is allowed,
    and the coverage is the smallest max-similarity over every unranked frame."""
    ref, gaps = reference(x, list(seed), k, frames, quota)
    stop = len(seed) + next((i for i, g in enumerate(gaps) if g <= TOL), len(gaps))
    np.testing.assert_array_equal(order[:stop], ref[:stop])
    x64 = x.astype(np.float64)
    ranked = list(seed)
    for i in range(len(seed), order.size):
        p = int(order[i])
        rows = allowed_rows(ranked, frames, quota)
        assert p in rows, f"pick {i} (row {p}) is not allowed"
        m = (x64 @ x64[ranked].T).max(axis=1)
        assert m[p] <= m[rows].min() + TOL, f"pick {i} (row {p}) is not the least covered allowed frame"
        assert abs(score[i] - m[p]) <= TOL
        ranked.append(p)
    wanted = x.shape[0] - len(seed) if k is None else min(k, x.shape[0] - len(seed))
    if order.size < len(seed) + wanted:
        assert not allowed_rows(ranked, frames, quota), "the ranking ended while a frame was allowed"
    for column, cap in quota.items():
        keys = frames[column].iloc[order[len(seed):]]
        held = frames[column].iloc[list(seed)].value_counts()
        for key, n in keys.dropna().value_counts().items():
            assert n + held.get(key, 0) <= max(cap, held.get(key, 0)), f"{column}={key}: {n} picks over the cap {cap}"
    np.testing.assert_allclose(coverage[len(seed):], coverage_after(x, list(order), len(seed)), atol=TOL)


@st.composite
def problems(draw):
    """Small grid embeddings (exact ties and duplicates), two or three quota columns with null keys,
    caps from 1, seeds that may already fill a group, and k."""
    n = draw(st.integers(2, 40))
    d = draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    raw = rng.integers(-2, 3, size=(n, d)).astype(np.float64)
    raw[np.abs(raw).sum(axis=1) == 0, 0] = 1.0

    def keys(alphabet: int) -> list:
        return [None if v == 0 else f"g{v}" for v in rng.integers(0, alphabet + 1, size=n)]

    frames = pd.DataFrame({"patient_key": keys(draw(st.integers(1, 8))), "study_uid": keys(draw(st.integers(1, 4))),
                           "modality": keys(2), "station": keys(3)})
    columns = draw(st.sampled_from([["patient_key"], ["patient_key", "modality"], ["patient_key", "study_uid", "modality"],
                                    ["station"], ["patient_key", "station"]]))
    quota = {c: draw(st.integers(1, 3)) for c in columns}
    seed = rng.choice(n, size=draw(st.integers(1, max(1, n // 3))), replace=False).astype(np.int64)
    k = draw(st.one_of(st.none(), st.integers(0, n)))
    return unit_rows(raw), frames, quota, seed, k


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(), st.integers(1, 6), st.integers(1, 5))
def test_every_path_is_the_constrained_reference(problem, batch, n_clusters):
    x, frames, quota, seed, k = problem
    quotas = quotas_for(frames, quota)
    for method in ("plain", "clustered", "torch"):
        r = enrich_greedy(x, seed, k, method=method, device="cpu" if method == "torch" else None, quotas=quotas)
        assert_matches(x, frames, quota, seed, k, r.order, r.score, r.coverage)
    # small batches and few clusters: groups fill in the middle of a batch
    index = CoverageIndex(x, max_similarity(x, seed), ranked=seed, n_clusters=min(n_clusters, x.shape[0]))
    wanted = x.shape[0] - seed.size if k is None else min(k, x.shape[0] - seed.size)
    order, score, cover = enrich._greedy_clustered(index, wanted, batch=batch, state=QuotaState(quotas, seed))
    nan = np.full(seed.size, np.nan, np.float32)
    assert_matches(x, frames, quota, seed, k, np.concatenate([seed, order]), np.concatenate([nan, score]),
                   np.concatenate([nan, cover]))


def test_continuous_data_ranks_exactly_the_reference_order():
    """Gaussian embeddings have no near-ties: the whole constrained order is the reference's, on every path."""
    rng = np.random.default_rng(7)
    n = 240
    x = unit_rows(rng.standard_normal((n, 6)))
    frames = pd.DataFrame({"patient_key": [f"p{i % 40}" for i in rng.permutation(n)],
                           "study_uid": [f"s{i % 90}" for i in range(n)],
                           "modality": rng.choice(["US", "CT", None], n)})
    quota = {"patient_key": 2, "study_uid": 1, "modality": 30}
    seed = np.array([3, 50, 51])
    ref, gaps = reference(x, list(seed), None, frames, quota)
    assert min(gaps[:-1]) > TOL and len(ref) < n  # decided beyond float noise, and the quota ends the ranking
    quotas = quotas_for(frames, quota)
    for method in ("plain", "clustered", "torch"):
        r = enrich_greedy(x, seed, method=method, device="cpu" if method == "torch" else None, quotas=quotas)
        np.testing.assert_array_equal(r.order, ref)
        np.testing.assert_allclose(r.coverage[3:], coverage_after(x, ref, 3), atol=TOL)
        assert r.info["quota"] == {"columns": quota, "frames_without_key": {"patient_key": 0, "study_uid": 0,
                                   "modality": int(frames["modality"].isna().sum())},
                                   "reached": True, "ranked": len(ref), "asked": n, "frames": n}
    index = CoverageIndex(x, max_similarity(x, seed), ranked=seed, n_clusters=9)
    order, _, _ = enrich._greedy_clustered(index, n - 3, batch=16, state=QuotaState(quotas, seed))
    np.testing.assert_array_equal(order, ref[3:])


def test_one_frame_per_patient_and_seeds_over_the_cap():
    """patient_key=1: one frame of each patient, the seeds' patients none more (two seeds of p0 stay),
    and the frames without a patient key are not limited."""
    rng = np.random.default_rng(1)
    x = unit_rows(rng.standard_normal((60, 4)))
    patients = [None if r % 10 == 9 else f"p{r % 5}" for r in range(60)]  # 6 frames without a key
    frames = pd.DataFrame({"patient_key": patients})
    seed = np.array([0, 5, 1])  # p0, p0, p1
    r = enrich_greedy(x, seed, quotas=quotas_for(frames, {"patient_key": 1}))
    picked = frames["patient_key"].iloc[r.order[3:]]
    assert sorted(picked.dropna()) == ["p2", "p3", "p4"]
    assert picked.isna().sum() == 6 and r.order.size == 3 + 3 + 6
    assert r.info["quota"]["reached"] and r.info["quota"]["frames_without_key"] == {"patient_key": 6}
    assert r.coverage[-1] < 1.0  # the frames the quota left out are not covered by themselves
    assert quota_line(r.info["quota"]) == "quota reached (patient_key=1): 12 frames ranked of the 60 asked for"


def test_k_below_the_quota_is_not_reached():
    rng = np.random.default_rng(2)
    x = unit_rows(rng.standard_normal((50, 4)))
    frames = pd.DataFrame({"patient_key": [f"p{r % 10}" for r in range(50)]})
    r = enrich_greedy(x, [0], 5, quotas=quotas_for(frames, {"patient_key": 3}))
    assert r.order.size == 6 and not r.info["quota"]["reached"]
    assert quota_line(r.info["quota"]) == "within quota patient_key=3"
    assert enrich_greedy(x, [0], 5).info == {}  # no quota, no quota facts
    unkeyed = rank("enrich", x, [0], None, SelectionConfig(), quotas=quotas_for(frames.assign(study_uid=None), {"study_uid": 1}))
    assert unkeyed.order.size == 50 and quota_line(unkeyed.info["quota"]).endswith(
        "within quota study_uid=1; no frame has a study_uid, so its quota limits nothing")
    with pytest.raises(ValueError, match="enrich ranker only, not random"):
        rank("random", x, [0], None, SelectionConfig(), quotas=quotas_for(frames, {"patient_key": 3}))


def test_a_quota_per_station_balances_the_scanners():
    """station=N: a scanner that made most of the frames gives N of them, the others fill the rest; the
    frames without a station (PNGs, headers without one) are not limited; every path is the reference."""
    rng = np.random.default_rng(3)
    x = unit_rows(rng.standard_normal((120, 5)))
    stations = ["JFK IMAGING CENTER / CT01_OC0"] * 80 + ["BAPTIST MED CTR / mvme22"] * 20 + ["TOSHIBA"] * 10 + [None] * 10
    frames = pd.DataFrame({"station": [stations[i] for i in rng.permutation(120)]})
    quota = {"station": 4}
    seed = np.flatnonzero(frames["station"].eq("BAPTIST MED CTR / mvme22").to_numpy())[:5]  # a seeded station over its cap
    ref, gaps = reference(x, list(seed), None, frames, quota)
    assert min(gaps[:-1]) > TOL
    quotas = quotas_for(frames, quota)
    for method in ("plain", "clustered", "torch"):
        r = enrich_greedy(x, seed, method=method, device="cpu" if method == "torch" else None, quotas=quotas)
        np.testing.assert_array_equal(r.order, ref)
        picked = frames["station"].iloc[r.order[seed.size:]]
        assert picked.value_counts().to_dict() == {"JFK IMAGING CENTER / CT01_OC0": 4, "TOSHIBA": 4}
        assert picked.isna().sum() == 10
        assert r.info["quota"]["frames_without_key"] == {"station": 10} and r.info["quota"]["reached"]
    assert quota_line(r.info["quota"]) == "quota reached (station=4): 23 frames ranked of the 120 asked for"


def test_the_settings_name_the_quota_columns():
    import typing

    hint = typing.get_type_hints(SelectionConfig)["quota"]
    assert typing.get_args(typing.get_args(hint)[0]) == QUOTA_COLUMNS


@pytest.mark.parametrize("quota, message", [({"body_part": 2}, "not a key column"), ({"patient_key": 0}, "at least 1")])
def test_bad_quota_is_a_clear_error(quota, message):
    with pytest.raises(ValueError, match=message):
        quotas_for(pd.DataFrame({"patient_key": ["a"]}), quota)


def test_quotas_must_cover_the_frames():
    quotas = quotas_for(pd.DataFrame({"patient_key": ["a", "b"]}), {"patient_key": 1})
    with pytest.raises(ValueError, match="quotas cover 2 frames but there are 3"):
        enrich_greedy(np.eye(3, dtype=np.float32), [0], quotas=quotas)
