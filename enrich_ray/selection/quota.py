"""Balanced selection: at most n ranked frames per group of a key column (selection.quota).

A quota `{patient_key: 2, modality: 100}` lets the ranking take a frame only while every group it
belongs to (its patient, its modality) holds fewer ranked frames than the cap. The seed set counts:
a group whose seeds already reach or exceed its cap is full (the seeds stay ranked, no frame of it
follows). A frame with no key in a column (no patient key packed, say) is not limited by that
column, which is the same as each such frame forming a group of its own, as caps are at least 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from enrich_ray.schema import GROUP_KEYS

# The key columns a quota may name: the group keys every embedded frame carries (schema.GROUP_KEYS).
QUOTA_COLUMNS = tuple(GROUP_KEYS)
_UNLIMITED = np.iinfo(np.int64).max


@dataclass(frozen=True)
class Quotas:
    """Each frame's group in every quota column and each group's cap.

    `groups[c, row]` numbers groups across all columns; frames without a key in column c share the
    last group, whose cap never binds. `caps[g]` is the cap of group g.
    """

    columns: dict[str, int]  # column -> cap, as set
    groups: np.ndarray  # (columns, N) int64
    caps: np.ndarray  # (groups + 1,) int64
    without_key: dict[str, int]  # column -> frames with no key there (not limited by it)


def quotas_for(frames: pd.DataFrame, quota: dict[str, int]) -> Quotas | None:
    """The Quotas of `quota` (column -> at most this many frames per group) over the frames; None when empty."""
    if not quota:
        return None
    unknown = [c for c in quota if c not in QUOTA_COLUMNS]
    if unknown:
        raise ValueError(f"selection.quota: {unknown[0]!r} is not a key column ({', '.join(QUOTA_COLUMNS)})")
    bad = {c: n for c, n in quota.items() if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1}
    if bad:
        column, n = next(iter(bad.items()))
        raise ValueError(f"selection.quota.{column}: {n!r} must be a whole number of frames, at least 1")
    n = len(frames)
    groups = np.empty((len(quota), n), dtype=np.int64)
    caps: list[np.ndarray] = []
    without_key = {}
    offset = 0
    for i, (column, cap) in enumerate(quota.items()):
        values = frames[column] if column in frames else pd.Series([None] * n)
        keyed = values.notna().to_numpy() & (values.astype(str) != "").to_numpy()
        codes, uniques = pd.factorize(values.where(keyed, None))
        groups[i] = np.where(keyed, codes + offset, -1)
        caps.append(np.full(len(uniques), int(cap), dtype=np.int64))
        without_key[column] = int((~keyed).sum())
        offset += len(uniques)
    groups[groups < 0] = offset  # the unlimited group
    caps.append(np.array([_UNLIMITED], dtype=np.int64))
    return Quotas(columns=dict(quota), groups=groups, caps=np.concatenate(caps), without_key=without_key)


def quota_line(info: dict) -> str:
    """Ranking.info['quota'] in words, for the console and the summary: whether the quota ended the ranking."""
    caps = ", ".join(f"{c}={n}" for c, n in info["columns"].items())
    said = (f"quota reached ({caps}): {info['ranked']} frames ranked of the {info['asked']} asked for" if info["reached"]
            else f"within quota {caps}")
    unkeyed = [c for c, n in info["frames_without_key"].items() if n == info["frames"]]
    return said + "".join(f"; no frame has a {c}, so its quota limits nothing" for c in unkeyed)


class QuotaState:
    """Ranked frames per group so far, and which frames the ranking may still take (`open`)."""

    def __init__(self, quotas: Quotas, seed: np.ndarray) -> None:
        self.groups, self.caps = quotas.groups, quotas.caps
        self.count = np.bincount(self.groups[:, seed].ravel(), minlength=self.caps.size).astype(np.int64)
        flat = self.groups.ravel()
        by_group = np.argsort(flat, kind="stable")
        self._members = by_group % self.groups.shape[1]  # frame rows of each group, contiguous
        self._starts = np.searchsorted(flat[by_group], np.arange(self.caps.size + 1))
        self.open = ~(self.count >= self.caps)[self.groups].any(axis=0)
        self.open[seed] = False

    def take(self, row: int) -> np.ndarray:
        """Rank `row`: count it in its groups; returns the frames that closed because a group filled."""
        mine = self.groups[:, row]
        self.open[row] = False
        self.count[mine] += 1  # a row repeats only the unlimited group, which never fills
        filled = mine[self.count[mine] == self.caps[mine]]
        if not filled.size:
            return np.zeros(0, dtype=np.int64)
        rows = np.concatenate([self._members[self._starts[g] : self._starts[g + 1]] for g in filled])
        rows = rows[self.open[rows]]
        self.open[rows] = False
        return rows
