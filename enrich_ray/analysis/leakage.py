"""Leakage across a train/val/test split: frames on different sides that are one picture (an exact or a
near duplicate) or come from one patient or one study. A model tested on such frames has seen them, or
their patient, in training, and its results overstate how it does on new patients.

A placement is a frame on one side of the split. A frame is on one side, but a file whose bytes sit at
two paths named on two sides (one archive row) puts its frames on both. Two placements on different
sides are related by (KINDS, strongest first):

- exact_duplicate: the same frame (one file named on both sides) or identical decoded pixels (an `exact`
  group of duplicates.parquet);
- near_duplicate: one in the unit of a `near` group's representative (it and its pixel-identical copies),
  the other in the unit of one of its members. Near groups are stars (enrich_ray/analysis/duplicates.py):
  two members are near their representative, not necessarily each other, so they are not paired;
- same_patient: equal `patient_key`; same_study: equal `study_uid` (an unknown key relates to nothing).

The counts are exact without listing the pairs: a group (one exact group, patient or study) with c_s
placements on side s crosses in (n² − Σ c_s²) / 2 pairs, a near star with c^R_s placements on its
representative's side and c^M_s on its members' in |R||M| − Σ c^R_s c^M_s. A placement leaks when it has
a related placement on another side. Listed are at most `pairs_per_group` pairs per group, the most
similar first (the embeddings' cosine) among the first CANDIDATES placements of each side, each pair once
under its strongest kind and flagged same_patient / same_study. Pairs are oriented train → val → test.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")
# The names a split file or column may give each side, read without case or surrounding spaces.
SPLIT_NAMES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test", "holdout": "test",
}
KINDS = ("exact_duplicate", "near_duplicate", "same_patient", "same_study")
PAIRS_PER_GROUP = 10  # pairs listed per crossing group (exact group, near star, patient, study)
CANDIDATES = 200  # placements per side of a group among which its most similar pairs are sought
KIND_WORDS = {"exact_duplicate": "an exact duplicate", "near_duplicate": "a near-duplicate",
              "same_patient": "the same patient", "same_study": "the same study"}
PAIR_COLUMNS = {"a": np.int64, "b": np.int64, "kind": object, "similarity": np.float32,
                "same_patient": bool, "same_study": bool}


@dataclass
class Leakage:
    """The listed crossing pairs (PAIR_COLUMNS; a and b index the placements, a on the earlier side) and
    the exact counts (`counts`: see crossing_pairs)."""

    pairs: pd.DataFrame
    counts: dict


def split_names(values: Sequence) -> np.ndarray:
    """Each value as its side (SPLITS), None where blank; ValueError naming the values that are no side."""
    text = pd.Series(list(values), dtype=object)
    blank = text.isna() | (text.astype(str).str.strip() == "")
    named = text[~blank].astype(str).str.strip().str.lower()
    bad = sorted(set(named[~named.isin(SPLIT_NAMES)]))
    if bad:
        shown = ", ".join(repr(v) for v in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(f"split values {shown} are none of {', '.join(SPLITS)} (nor {', '.join(n for n in SPLIT_NAMES if n not in SPLITS)})")
    out = np.full(len(text), None, dtype=object)
    out[np.flatnonzero(~blank.to_numpy())] = named.map(SPLIT_NAMES).to_numpy()
    return out


def crossing_pairs(row: np.ndarray, split: Sequence[str], duplicates: pd.DataFrame, patient_key: Sequence,
                   study_uid: Sequence, embeddings: np.ndarray, pairs_per_group: int = PAIRS_PER_GROUP) -> Leakage:
    """The relations of the module docstring between placements on different sides.

    row: each placement's frame row (the rows of `embeddings`, `patient_key`, `study_uid` and of the
    duplicates table's `row`); split: each placement's side (SPLITS). counts: `frames` (placements per
    side), `frames_leaking` (per side, those related to a placement on another side), `by_kind`
    ({kind: {pairs, frames, groups}}: crossing pairs, placements in one, groups that cross), `pairs_listed`,
    and per key how many placements know it (`patient_key_known`, `study_uid_known`).
    """
    row = np.asarray(row, dtype=np.int64)
    side = np.array([SPLITS.index(s) for s in split], dtype=np.int64)
    n = len(embeddings)
    if len(side) != len(row):
        raise ValueError(f"split has {len(side)} values, row {len(row)}")
    if len(row) and (row.min() < 0 or row.max() >= n):
        raise ValueError(f"placement rows must index the {n} frames")
    patient, study = _codes(patient_key, n), _codes(study_uid, n)
    exact, unit, near, near_rep = _duplicate_labels(duplicates, n)
    x = np.asarray(embeddings, dtype=np.float32)
    relations = {
        "exact_duplicate": _Clique(exact[row], side),
        "near_duplicate": _Star(near[unit[row]], near_rep[unit[row]], side),
        "same_patient": _Clique(patient[row], side),
        "same_study": _Clique(study[row], side),
    }
    leaking = np.zeros(len(row), bool)
    by_kind, listed = {}, []
    for kind, rel in relations.items():
        leaking |= rel.partners > 0
        by_kind[kind] = {"pairs": rel.pairs, "frames": int((rel.partners > 0).sum()), "groups": len(rel.crossing)}
        for a, b in rel.group_pairs():
            sim = np.einsum("ij,ij->i", x[row[a]], x[row[b]])
            top = np.argsort(-sim, kind="stable")[:pairs_per_group]
            listed.append((a[top], b[top], sim[top]))
    pairs = _listed(listed, side, exact[row], near[unit[row]], near_rep[unit[row]], patient[row], study[row])
    counts = {
        "frames": {s: int((side == i).sum()) for i, s in enumerate(SPLITS)},
        "frames_leaking": {s: int((leaking & (side == i)).sum()) for i, s in enumerate(SPLITS)},
        "by_kind": by_kind,
        "pairs_listed": len(pairs),
        "patient_key_known": int((patient[row] >= 0).sum()),
        "study_uid_known": int((study[row] >= 0).sum()),
    }
    return Leakage(pairs, counts)


def verdict(counts: dict) -> str:
    """crossing_pairs' counts in one plain sentence: whether the split leaks, and what that does to results on it."""
    frames, leaking = counts["frames"], counts["frames_leaking"]
    if not any(leaking.values()):
        checked = ", ".join(f"{frames[s]:,} {s}" for s in SPLITS if frames[s])
        return f"This split is clean: no exact or near duplicate, patient or study crosses it ({checked} frames checked)."
    held = ", ".join(f"{leaking[s]:,} of {frames[s]:,} {s} frames" for s in ("test", "val") if leaking[s])
    kinds = [KIND_WORDS[k] for k in KINDS if counts["by_kind"][k]["pairs"]]
    either = kinds[0] if len(kinds) == 1 else ", ".join(kinds[:-1]) + " or " + kinds[-1]
    return (f"This split leaks: {held or f'{leaking[SPLITS[0]]:,} train frames'} have {either} on another side of the "
            "split. Results on it overstate how a model does on new patients.")


def unchecked(counts: dict) -> list[str]:
    """What the check could not see, in words: frames without a patient key, and (keys the curate run adds to the
    counts) split rows naming no archive image, split images without an embedded frame."""
    notes = []
    total = sum(counts["frames"].values())
    missing = total - counts["patient_key_known"]
    if missing:
        which = "No frame" if missing == total else f"{missing:,} of {total:,} frames"
        notes.append(f"{which} of the split {'has' if missing == total else 'have'} no patient key (pack ran without "
                     "ENRICH_RAY_PATIENT_KEY, or the files are PNG or JPEG, which name no patient): their frames of one "
                     "patient in different studies could not be linked.")
    rows, images = counts.get("split_rows_not_in_archive") or 0, counts.get("images_without_frames") or 0
    if rows:
        notes.append(f"{rows:,} {'row' if rows == 1 else 'rows'} of the split {'names' if rows == 1 else 'name'} no image "
                     "of the archive: not checked.")
    if images:
        notes.append(f"{images:,} {'image' if images == 1 else 'images'} of the split gave no embedded frame: not checked.")
    return notes


def _codes(values: Sequence, n: int) -> np.ndarray:
    """Integer codes of a key per frame row, -1 where unknown (null or blank)."""
    series = pd.Series(list(values), dtype=object)
    if len(series) != n:
        raise ValueError(f"a key has {len(series)} values, the frames {n}")
    series = series.where(series.notna() & (series.astype(str).str.strip() != ""), None)
    codes, _ = pd.factorize(series, use_na_sentinel=True)
    return codes.astype(np.int64)


def _duplicate_labels(dups: pd.DataFrame, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per frame row: its exact label (its exact group, else a label of its own, so that one frame named on
    two sides is its own exact duplicate), its unit (its exact group's lowest row, else itself), and per
    unit its near group (-1: none) and whether it is that group's representative."""
    rows = np.arange(n, dtype=np.int64)
    group = np.full(n, -1, np.int64)
    unit = rows.copy()
    near = np.full(n, -1, np.int64)
    near_rep = np.zeros(n, bool)
    if len(dups):
        d = dups[["group_id", "row", "kind", "is_representative"]].drop_duplicates(["group_id", "row"])
        d = d[(d["row"] >= 0) & (d["row"] < n)]
        ex = d[d["kind"] == "exact"]
        r, g = ex["row"].to_numpy(np.int64), ex["group_id"].to_numpy(np.int64)
        group[r] = g
        lowest = ex.groupby("group_id")["row"].transform("min").to_numpy(np.int64)
        unit[r] = lowest
        nr = d[d["kind"] == "near"]
        u = unit[nr["row"].to_numpy(np.int64)]
        near[u] = nr["group_id"].to_numpy(np.int64)
        near_rep[u] = nr["is_representative"].to_numpy(bool)
    exact = np.where(group >= 0, group, group.max(initial=-1) + 1 + rows)
    return exact, unit, near, near_rep


class _Clique:
    """A relation whose groups are cliques (exact group, patient, study): counts and candidate pairs."""

    def __init__(self, label: np.ndarray, side: np.ndarray):
        self.label, self.side = label, side
        known = label >= 0
        size = int(label.max(initial=-1)) + 1
        c = np.zeros((size, len(SPLITS)), np.int64)
        np.add.at(c, (label[known], side[known]), 1)
        total = c.sum(axis=1)
        self.pairs = int(((total**2 - (c**2).sum(axis=1)) // 2).sum())
        self.partners = np.zeros(len(label), np.int64)
        self.partners[known] = total[label[known]] - c[label[known], side[known]]
        self.crossing = np.flatnonzero((c > 0).sum(axis=1) >= 2)

    def group_pairs(self):
        """Per crossing group, its candidate pairs (a, b): the first CANDIDATES placements of each side against
        those of every later side."""
        for members in _members(self.label, self.crossing):
            a, b = [], []
            for s in range(len(SPLITS)):
                for t in range(s + 1, len(SPLITS)):
                    ps = members[self.side[members] == s][:CANDIDATES]
                    pt = members[self.side[members] == t][:CANDIDATES]
                    a.append(np.repeat(ps, len(pt)))
                    b.append(np.tile(pt, len(ps)))
            yield np.concatenate(a), np.concatenate(b)


class _Star:
    """Near groups: each placement on its star's representative side or its members' side."""

    def __init__(self, group: np.ndarray, is_rep: np.ndarray, side: np.ndarray):
        self.group, self.is_rep, self.side = group, is_rep, side
        known = group >= 0
        size = int(group.max(initial=0)) + 1
        rep, mem = np.zeros((size, len(SPLITS)), np.int64), np.zeros((size, len(SPLITS)), np.int64)
        np.add.at(rep, (group[known & is_rep], side[known & is_rep]), 1)
        np.add.at(mem, (group[known & ~is_rep], side[known & ~is_rep]), 1)
        self.pairs = int((rep.sum(axis=1) * mem.sum(axis=1) - (rep * mem).sum(axis=1)).sum())
        other = np.where(is_rep, mem.sum(axis=1)[np.maximum(group, 0)] - mem[np.maximum(group, 0), side],
                         rep.sum(axis=1)[np.maximum(group, 0)] - rep[np.maximum(group, 0), side])
        self.partners = np.where(known, other, 0)
        crosses = rep.sum(axis=1) * mem.sum(axis=1) - (rep * mem).sum(axis=1) > 0
        self.crossing = np.flatnonzero(crosses)

    def group_pairs(self):
        """Per crossing star, its candidate pairs (a, b): representative side against members' side, on different
        sides, the first CANDIDATES placements of each side."""
        for members in _members(self.group, self.crossing):
            a, b = [], []
            for s in range(len(SPLITS)):
                for t in range(len(SPLITS)):
                    if s == t:
                        continue
                    pr = members[self.is_rep[members] & (self.side[members] == s)][:CANDIDATES]
                    pm = members[~self.is_rep[members] & (self.side[members] == t)][:CANDIDATES]
                    a.append(np.repeat(pr, len(pm)))
                    b.append(np.tile(pm, len(pr)))
            yield np.concatenate(a), np.concatenate(b)


def _members(label: np.ndarray, groups: np.ndarray):
    """The placements of each of the given groups, in placement order."""
    order = np.argsort(label, kind="stable")
    start = np.searchsorted(label[order], groups, side="left")
    end = np.searchsorted(label[order], groups, side="right")
    for i, j in zip(start.tolist(), end.tolist()):
        yield order[i:j]


def _listed(listed: list[tuple[np.ndarray, np.ndarray, np.ndarray]], side: np.ndarray, exact: np.ndarray,
            near: np.ndarray, near_rep: np.ndarray, patient: np.ndarray, study: np.ndarray) -> pd.DataFrame:
    """The listed pairs (per placement: side and labels), a on the earlier side, each pair once under its
    strongest kind (a pair listed for its patient may be a near duplicate too), by kind, most similar first."""
    if not sum(len(a) for a, _, _ in listed):
        return pd.DataFrame({c: np.asarray([], dtype=t) for c, t in PAIR_COLUMNS.items()})
    a, b, sim = (np.concatenate(part) for part in zip(*listed))
    swap = side[a] > side[b]
    a, b = np.where(swap, b, a), np.where(swap, a, b)
    same_patient = (patient[a] >= 0) & (patient[a] == patient[b])
    same_study = (study[a] >= 0) & (study[a] == study[b])
    kind = np.select([exact[a] == exact[b], (near[a] >= 0) & (near[a] == near[b]) & (near_rep[a] != near_rep[b]), same_patient],
                     [0, 1, 2], 3)
    p = pd.DataFrame({"a": a, "b": b, "kind": np.asarray(KINDS, dtype=object)[kind], "similarity": sim,
                      "same_patient": same_patient, "same_study": same_study, "_kind": kind})
    p = p.drop_duplicates(["a", "b"]).sort_values(["_kind", "similarity", "a", "b"], ascending=[True, False, True, True], kind="stable")
    return p[list(PAIR_COLUMNS)].astype(PAIR_COLUMNS).reset_index(drop=True)
