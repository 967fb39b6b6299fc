"""The leakage check (analysis.leakage) against a plain all-pairs reference, on synthetic frames whose
duplicate groups come from the real duplicate search (analysis.duplicates)."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from enrich_ray.analysis.duplicates import near_duplicates
from enrich_ray.analysis.leakage import CANDIDATES, KINDS, SPLITS, crossing_pairs, split_names
from enrich_ray.index.knn import exact_rows_graph, unit_rows


def _frames(seed: int, n_base: int = 30):
    """Unit embeddings of base frames, their near copies (noise) and pixel-identical copies (same hash),
    the duplicate table of the real search, and patient and study keys with unknowns."""
    rng = np.random.default_rng(seed)
    base = unit_rows(rng.normal(size=(n_base, 16)))
    vectors, hashes = list(base), [f"h{i}" for i in range(n_base)]
    for i in rng.choice(n_base, 10, replace=False):
        for j in range(int(rng.integers(1, 4))):
            vectors.append(unit_rows((base[i] + 0.15 * rng.normal(size=16))[None])[0])
            hashes.append(f"h{i}-near{j}")
    for i in rng.choice(len(vectors), 8, replace=False):
        vectors.append(vectors[i])
        hashes.append(hashes[i])
    x = unit_rows(np.array(vectors))
    graph = exact_rows_graph(x, np.arange(len(x)), 8)
    dups = near_duplicates(graph, 0.85, x, pixel_hash=hashes)
    patients = np.array([None, "", *[f"p{i}" for i in range(6)]], dtype=object)
    studies = np.array([None, *[f"s{i}" for i in range(9)]], dtype=object)
    return x, dups, patients[rng.integers(0, len(patients), len(x))], studies[rng.integers(0, len(studies), len(x))]


def _placements(n: int, seed: int):
    """Most frames on one side, some on none, a few on two (one file named at two paths)."""
    rng = np.random.default_rng(seed + 100)
    row = [r for r in range(n) if rng.random() > 0.1]
    row += list(rng.choice(n, 6, replace=False))
    return np.array(row, np.int64), np.array(SPLITS, dtype=object)[rng.integers(0, 3, len(row))]


def _reference(row, split, dups, patient, study):
    """Every pair of placements on different sides with the set of its kinds, by plain loops."""
    exact = {int(r): int(g) for g, r, k in zip(dups["group_id"], dups["row"], dups["kind"]) if k == "exact"}
    members = {}
    for r, g in exact.items():
        members.setdefault(g, []).append(r)
    unit = {r: min(members[g]) for r, g in exact.items()}
    near = {unit.get(int(r), int(r)): (int(g), bool(rep))
            for g, r, k, rep in zip(dups["group_id"], dups["row"], dups["kind"], dups["is_representative"]) if k == "near"}
    known = lambda v: v is not None and str(v).strip() != ""  # noqa: E731
    out = {}
    for p, q in itertools.combinations(range(len(row)), 2):
        if split[p] == split[q]:
            continue
        rp, rq = int(row[p]), int(row[q])
        kinds = set()
        if rp == rq or (rp in exact and exact.get(rq) == exact[rp]):
            kinds.add("exact_duplicate")
        up, uq = unit.get(rp, rp), unit.get(rq, rq)
        if up != uq and up in near and uq in near and near[up][0] == near[uq][0] and near[up][1] != near[uq][1]:
            kinds.add("near_duplicate")
        if known(patient[rp]) and patient[rp] == patient[rq]:
            kinds.add("same_patient")
        if known(study[rp]) and study[rp] == study[rq]:
            kinds.add("same_study")
        if kinds:
            a, b = (p, q) if SPLITS.index(split[p]) < SPLITS.index(split[q]) else (q, p)
            out[(a, b)] = kinds
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_counts_and_pairs_equal_the_all_pairs_reference(seed):
    x, dups, patient, study = _frames(seed)
    row, split = _placements(len(x), seed)
    assert (dups["kind"] == "near").any() and (dups["kind"] == "exact").any()  # the search found both kinds
    ref = _reference(row, split, dups, patient, study)
    leak = crossing_pairs(row, split, dups, patient, study, x, pairs_per_group=10**6)
    for kind in KINDS:
        pairs = [k for k, kinds in ref.items() if kind in kinds]
        assert leak.counts["by_kind"][kind]["pairs"] == len(pairs), kind
        assert leak.counts["by_kind"][kind]["frames"] == len({p for pair in pairs for p in pair}), kind
        assert pairs, f"seed {seed} plants no {kind} pair across the split"
    leaking = {p for pair in ref for p in pair}
    for i, s in enumerate(SPLITS):
        assert leak.counts["frames"][s] == int((split == s).sum())
        assert leak.counts["frames_leaking"][s] == sum(1 for p in leaking if split[p] == s)
    # every side holds fewer than CANDIDATES placements and no cap applies: every pair is listed, under its strongest kind
    assert len(split) < CANDIDATES
    listed = {(int(a), int(b)): k for a, b, k in zip(leak.pairs["a"], leak.pairs["b"], leak.pairs["kind"])}
    assert listed == {pair: next(k for k in KINDS if k in kinds) for pair, kinds in ref.items()}
    p = leak.pairs
    assert (p["same_patient"] == [("same_patient" in ref[(a, b)]) for a, b in zip(p["a"], p["b"])]).all()
    assert (p["same_study"] == [("same_study" in ref[(a, b)]) for a, b in zip(p["a"], p["b"])]).all()
    np.testing.assert_allclose(p["similarity"], np.einsum("ij,ij->i", x[row[p["a"]]], x[row[p["b"]]]), atol=1e-6)
    assert (p["kind"].map(KINDS.index).diff().fillna(0) >= 0).all()  # strongest kind first


def test_capped_listing_keeps_the_most_similar_pair_of_each_group_and_its_true_kind():
    x, dups, patient, study = _frames(3)
    row, split = _placements(len(x), 3)
    ref = _reference(row, split, dups, patient, study)
    leak = crossing_pairs(row, split, dups, patient, study, x, pairs_per_group=1)
    listed = {(int(a), int(b)): k for a, b, k in zip(leak.pairs["a"], leak.pairs["b"], leak.pairs["kind"])}
    assert listed and set(listed) <= set(ref)
    assert all(k == next(s for s in KINDS if s in ref[pair]) for pair, k in listed.items())
    sim = {pair: float(x[row[pair[0]]] @ x[row[pair[1]]]) for pair in ref}
    for value in {patient[r] for r in row if patient[r]}:  # each crossing patient: its most similar crossing pair is listed
        pairs = [pair for pair, kinds in ref.items() if "same_patient" in kinds and patient[row[pair[0]]] == value]
        if pairs:
            assert max(sim[pair] for pair in pairs) == max((sim[pair] for pair in pairs if pair in listed), default=None)
    assert leak.counts["pairs_listed"] == len(leak.pairs) < len(ref)


def test_a_clean_split_has_no_pair_and_one_side_alone_crosses_nothing():
    x, dups, patient, study = _frames(0)
    n = len(x)
    alone = crossing_pairs(np.arange(n), ["train"] * n, dups, patient, study, x)
    assert alone.pairs.empty and alone.counts["frames_leaking"] == {"train": 0, "val": 0, "test": 0}
    keys = np.array([f"k{i}" for i in range(n)], dtype=object)
    # no duplicate table, every frame its own patient and study: nothing relates two frames
    clean = crossing_pairs(np.arange(n), np.array(SPLITS, dtype=object)[np.arange(n) % 3], dups.iloc[:0], keys, keys, x)
    assert clean.pairs.empty and all(v["pairs"] == 0 for v in clean.counts["by_kind"].values())
    assert clean.counts["patient_key_known"] == n


def test_split_names_accept_the_usual_spellings_and_refuse_others():
    assert list(split_names(["Train", " validation", "TEST", None, "", "dev", "holdout"])) == \
        ["train", "val", "test", None, None, "val", "test"]
    with pytest.raises(ValueError, match="'fold1', 'unlabeled'"):
        split_names(["train", "fold1", "unlabeled"])
