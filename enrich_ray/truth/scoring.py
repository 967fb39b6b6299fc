"""Scoring a finished curate run against a planted archive's truth table (enrich_ray.truth.planted).

Plain functions over DataFrames. A frame of the run is keyed by (image_id, frame_index): byte
copies are one archive row, so one "unit" stands for every path that holds those bytes; a run row's
source_uri (or source_uris) names the path it speaks for. Optional columns may be missing: a
duplicates table without is_representative takes each group's first row as its representative,
without source_uri each row speaks for its unit's first path; an outlier table without `flagged`
counts nothing as flagged; without `rank` its row order is the rank.

- score_exact: pairs of truth frames with equal pixel_hash are the true exact pairs (planted or
  not); members of one 'exact' group (closed over shared paths) are the predicted pairs. A copy
  is found (`*_recall`) when an 'exact' group joins it to its original; `*_listed` only asks that
  some group, of any kind, holds both (e.g. both 'near' members of a third frame's group).
- score_near: a planted near-dup is found when it shares a family with its original (a near group
  with the exact groups of its members: grouped with an identical copy of the original counts); every grouped
  member-to-representative pair is exact (identical pixels), planted (one family), unplanted (two
  base images: the base set may hold real near-duplicates; on the synthetic base they are false)
  or false; the worst case counts as false too every unplanted pair whose thumbnails correlate
  below 0.99 (two pictures a person could call different). With `judge_scene`, each unplanted
  pair's two base files are compared at full resolution after registration
  (enrich_ray.truth.scene, an independent pixel criterion): `false_pair_rate_scene` counts as false
  too the unplanted pairs it calls two scenes, with a 95% Wilson interval.
- score_foreign: foreign and blank frames in the outlier list's top share, flagged, groups flagged
  whole/partly/not at all, and their ENRICH ranks (a frame absent from the manifest is excluded).
"""
from __future__ import annotations

import functools
import math
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

FOREIGN_ROLES = ("foreign", "blank")
BASE_DERIVED = ("base", "byte_copy", "pixel_copy", "near_dup", "cine")


def score_run(truth: pd.DataFrame, archive_root: str, run_dir: str, top_share: float = 0.05, first: int = 24,
              judge_scene: bool = True) -> dict:
    """Every score of a curate run folder against the truth of the planted archive at archive_root."""
    run = Path(run_dir)
    dups = _read(run / "duplicates.parquet")
    outl = _read(run / "outliers.parquet")
    manifest = _read(run / "manifest.parquet")
    return {
        "exact": score_exact(truth, dups, archive_root),
        "near": score_near(truth, dups, archive_root, judge_scene=judge_scene),
        "foreign": score_foreign(truth, outl, manifest, top_share, first),
    }


def _read(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path) if path.exists() else pd.DataFrame()


def relative_path(uri: str, archive_root: str) -> str:
    """A run's source_uri as a path relative to the planted archive folder ('/'-separated)."""
    text = str(uri)
    if text.startswith("file://"):
        text = text[len("file://"):]
    root = os.path.abspath(str(archive_root).removeprefix("file://"))
    if os.path.isabs(text):
        text = os.path.relpath(text, root)
    return text.replace(os.sep, "/")


def _units(truth: pd.DataFrame) -> pd.Series:
    """Each truth row's run key (image_id, frame_index)."""
    return pd.Series(list(zip(truth["image_id"], truth["frame_index"].astype(int))), index=truth.index)


def _row_paths(dups: pd.DataFrame, archive_root: str, first_path: dict) -> list[list[tuple[str, int]]]:
    """The (path, frame_index) each duplicates row speaks for."""
    out = []
    frames = dups["frame_index"].astype(int) if "frame_index" in dups else pd.Series(0, index=dups.index)
    for i, (_, rec) in enumerate(dups.iterrows()):
        k = int(frames.iloc[i])
        uris = None
        if "source_uris" in dups.columns and rec["source_uris"] is not None and len(rec["source_uris"]):
            uris = list(rec["source_uris"])
        elif "source_uri" in dups.columns and isinstance(rec["source_uri"], str):
            uris = [rec["source_uri"]]
        if uris:
            out.append([(relative_path(u, archive_root), k) for u in uris])
        else:
            path = first_path.get((rec.get("image_id"), k))
            out.append([(path, k)] if path else [])
    return out


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict = {}

    def find(self, x):
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a, b) -> None:
        self.parent[self.find(a)] = self.find(b)


def score_exact(truth: pd.DataFrame, dups: pd.DataFrame, archive_root: str) -> dict:
    """Exact duplicates: pair precision and recall against identical decoded pixels, and recall per planted role."""
    keys = list(zip(truth["path"], truth["frame_index"].astype(int)))
    pixel = dict(zip(keys, truth["pixel_hash"]))
    first_path = {}
    for key, unit in zip(keys, _units(truth)):
        first_path.setdefault(unit, key[0])
    uf = _UnionFind()
    groups_of: dict = defaultdict(set)  # (path, frame) -> every group (any kind) whose rows name it
    if len(dups) and {"kind", "group_id"} <= set(dups.columns):
        for gid, paths in zip(dups["group_id"], _row_paths(dups.reset_index(drop=True), archive_root, first_path)):
            for p in paths:
                groups_of[p].add(gid)
        exact = dups[dups["kind"] == "exact"].reset_index(drop=True)
        anchor: dict = {}
        for gid, paths in zip(exact["group_id"], _row_paths(exact, archive_root, first_path)):
            for p in paths:
                if p in pixel:
                    uf.union(p, anchor.setdefault(gid, p))
    members: dict = defaultdict(list)
    for p in list(uf.parent):
        members[uf.find(p)].append(p)
    predicted = tp = 0
    for group in members.values():
        predicted += math.comb(len(group), 2)
        tp += sum(math.comb(n, 2) for n in pd.Series([pixel[p] for p in group]).value_counts())
    classes = pd.Series(list(pixel.values())).value_counts()
    true_pairs = int(sum(math.comb(int(n), 2) for n in classes))
    unplanted = _unplanted_identical(truth)
    out = {
        "true_pairs": true_pairs,
        "predicted_pairs": int(predicted),
        "correct_pairs": int(tp),
        "precision": tp / predicted if predicted else None,
        "recall": tp / true_pairs if true_pairs else None,
        "unplanted_identical_pairs": unplanted,
    }
    for role in ("byte_copy", "pixel_copy"):
        rows = truth[truth["role"] == role]
        found = [
            p in uf.parent and (o, 0) in uf.parent and uf.find(p) == uf.find((o, 0))
            for p, o in zip(zip(rows["path"], rows["frame_index"].astype(int)), rows["original"])
        ]
        listed = [bool(groups_of.get(p, set()) & groups_of.get((o, 0), set()))
                  for p, o in zip(zip(rows["path"], rows["frame_index"].astype(int)), rows["original"])]
        out[f"{role}_planted"] = len(rows)
        out[f"{role}_recall"] = float(np.mean(found)) if len(rows) else None
        out[f"{role}_listed"] = float(np.mean(listed)) if len(rows) else None  # in one group, of any kind
    return out


def _unplanted_identical(truth: pd.DataFrame) -> int:
    """Pairs of frames with identical decoded pixels that no planted copy explains (e.g. duplicates in the base set)."""
    family_of = truth.groupby("pixel_hash")["family"].nunique()
    count = 0
    for h in family_of[family_of > 1].index:
        fams = truth.loc[truth["pixel_hash"] == h, "family"].value_counts()
        count += math.comb(int(fams.sum()), 2) - int(sum(math.comb(int(n), 2) for n in fams))
    return count


def score_near(truth: pd.DataFrame, dups: pd.DataFrame, archive_root: str | None = None, same_picture: float = 0.99,
               judge_scene: bool = False) -> dict:
    """Near-duplicates: recall of planted near-dups (in one family with their original), per transform, cine
    frames grouped, and the grouped pairs by kind of relation. Unplanted pairs (two base images) whose
    thumbnails correlate below `same_picture` are counted as false too in `false_pair_rate_worst`;
    with judge_scene (and archive_root), those whose base files are two scenes by
    enrich_ray.truth.scene in `false_pair_rate_scene` (`scene_other_pairs` lists them)."""
    units = _units(truth)
    unit_of = dict(zip(zip(truth["path"], truth["frame_index"].astype(int)), units))
    groups_of: dict = defaultdict(set)
    pairs = {"exact": 0, "planted": 0, "unplanted": 0, "false": 0, "unknown": 0}
    unplanted_unlike = 0  # unplanted pairs whose thumbnails correlate below same_picture (or unknown)
    unplanted_families: list[tuple[str, str]] = []  # (representative's, member's) base file of each unplanted pair
    if len(dups) and "group_id" in dups.columns and "image_id" in dups.columns:
        d = dups.assign(frame_index=dups["frame_index"].astype(int) if "frame_index" in dups else 0)
        d = d.assign(unit=list(zip(d["image_id"], d["frame_index"])))
        for u, g in zip(d["unit"], d["group_id"]):
            groups_of[u].add(g)
        info = _unit_info(truth, units)
        for _, grp in d.groupby("group_id", sort=True):
            rep_rows = grp[grp["is_representative"].astype(bool)] if "is_representative" in grp.columns else grp.iloc[:0]
            rep = (rep_rows if len(rep_rows) else grp).iloc[0]["unit"]
            content = dict(zip(grp["unit"], grp["content_similarity"] if "content_similarity" in grp else [np.nan] * len(grp)))
            for u in dict.fromkeys(grp["unit"]):
                if u != rep:
                    relation = _relation(info.get(u), info.get(rep))
                    pairs[relation] += 1
                    unplanted_unlike += relation == "unplanted" and not content[u] >= same_picture
                    if relation == "unplanted":
                        unplanted_families.append((info[rep][0], info[u][0]))
    total = sum(pairs.values())

    # A family (analysis.duplicates.duplicate_families): a near group with the exact groups of its
    # members, joined through the frames they share; a near-dup grouped with its original's
    # pixel-identical copy is grouped with its original.
    family = _UnionFind()
    for gs in groups_of.values():
        first, *rest = sorted(gs)
        for g in rest:
            family.union(g, first)

    def grouped(u, v) -> bool:
        return bool({family.find(g) for g in groups_of.get(u, set())} & {family.find(g) for g in groups_of.get(v, set())})

    near = truth[truth["role"] == "near_dup"]
    found = pd.Series([grouped(units[i], unit_of.get((o, 0))) for i, o in zip(near.index, near["original"])], index=near.index, dtype=bool)
    cine = truth[truth["role"] == "cine"]
    cine_found = []
    for i, rec in cine.iterrows():
        mates = [unit_of.get((rec["original"], 0))] + [units[j] for j in cine.index[(cine["path"] == rec["path"]) & (cine.index != i)]]
        cine_found.append(any(grouped(units[i], m) for m in mates))
    return {
        "planted": len(near),
        "recall": float(found.mean()) if len(near) else None,
        "recall_by_transform": {t: float(v) for t, v in found.groupby(near["transform"]).mean().items()} if len(near) else {},
        "cine_frames": len(cine),
        "cine_grouped": float(np.mean(cine_found)) if len(cine) else None,
        "pairs": total,
        "pairs_by_relation": pairs,
        "false_pair_rate": pairs["false"] / total if total else None,
        "unplanted_pair_rate": pairs["unplanted"] / total if total else None,
        "unplanted_below_same_picture": unplanted_unlike,
        "false_pair_rate_worst": (pairs["false"] + unplanted_unlike) / total if total else None,
        **(_scene_scores(unplanted_families, archive_root, pairs["false"], total) if judge_scene and archive_root else {}),
    }


def _scene_scores(families: list[tuple[str, str]], archive_root: str, false: int, total: int) -> dict:
    """The unplanted pairs judged by enrich_ray.truth.scene on their base files (one judgment per file pair)."""
    from enrich_ray.truth.scene import SAME_SCENE

    root = os.path.abspath(str(archive_root).removeprefix("file://"))
    ssim = {pair: _pair_ssim(root, *pair) for pair in dict.fromkeys(families)}
    other = [pair for pair in families if ssim[pair] < SAME_SCENE]
    bad = false + len(other)
    return {
        "scene_threshold": SAME_SCENE,
        "unplanted_other_scene": len(other),
        "false_pair_rate_scene": bad / total if total else None,
        "false_pair_rate_scene_interval": wilson_interval(bad, total) if total else None,
        "unplanted_ssim": [round(ssim[pair], 4) for pair in families],  # one per unplanted pair
        "unplanted_pairs": families,  # (representative's, member's) base file of each
        "scene_other_pairs": [{"representative": a, "member": b, "ssim": round(ssim[(a, b)], 4)}
                              for a, b in dict.fromkeys(other)],
    }


@functools.lru_cache(maxsize=65_536)
def _pair_ssim(root: str, a: str, b: str) -> float:
    """The same-scene SSIM of two files under root (cached: sweeps judge the same pairs again)."""
    from enrich_ray.truth.scene import same_scene_score

    return same_scene_score(Path(root) / a, Path(root) / b)["ssim"]


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95% for z = 1.96) of a share k of n."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _unit_info(truth: pd.DataFrame, units: pd.Series) -> dict:
    """Per run unit: (family, pixel_hash, is base-derived)."""
    info = {}
    for u, fam, h, role in zip(units, truth["family"], truth["pixel_hash"], truth["role"]):
        info.setdefault(u, (fam, h, role in BASE_DERIVED))
    return info


def _relation(a, b) -> str:
    if a is None or b is None:
        return "unknown"
    if a[1] == b[1]:
        return "exact"
    if a[0] == b[0]:
        return "planted"
    if a[2] and b[2]:
        return "unplanted"
    return "false"


def score_foreign(truth: pd.DataFrame, outl: pd.DataFrame, manifest: pd.DataFrame, top_share: float = 0.05,
                  first: int = 24) -> dict:
    """Foreign and blank frames in the outlier list and in the ENRICH ranking."""
    units = _units(truth)
    per_unit = pd.DataFrame({"unit": units, "role": truth["role"], "group": truth["foreign_group"].astype(int),
                             "kind": truth["foreign_kind"].fillna("")})
    per_unit = per_unit.drop_duplicates("unit")
    foreign = per_unit[per_unit["role"].isin(FOREIGN_ROLES)]
    clean = per_unit[~per_unit["role"].isin(FOREIGN_ROLES)]

    rank_of, flagged_of, n_listed = {}, {}, 0
    if len(outl) and {"image_id", "frame_index"} <= set(outl.columns):
        ranks = outl["rank"].astype(int) if "rank" in outl.columns else pd.Series(np.arange(1, len(outl) + 1), index=outl.index)
        flags = outl["flagged"].astype(bool) if "flagged" in outl.columns else pd.Series(False, index=outl.index)
        keys = list(zip(outl["image_id"], outl["frame_index"].astype(int)))
        rank_of, flagged_of, n_listed = dict(zip(keys, ranks)), dict(zip(keys, flags)), len(outl)
    top = math.ceil(top_share * n_listed)
    in_top = foreign["unit"].map(lambda u: u in rank_of and rank_of[u] <= top)
    flagged = foreign["unit"].map(lambda u: bool(flagged_of.get(u, False)))
    clean_listed = clean["unit"][clean["unit"].map(lambda u: u in rank_of)]
    clean_flagged = clean_listed.map(lambda u: bool(flagged_of[u]))

    group_share = flagged.groupby(foreign["group"]).mean().drop(-1, errors="ignore")
    by_kind = {
        k: {"frames": int(len(idx)), "in_top": int(in_top[idx].sum()), "flagged": int(flagged[idx].sum())}
        for k, idx in foreign.groupby("kind").groups.items()
    }

    manifest_rank = {}
    has_manifest = {"image_id", "frame_index"} <= set(manifest.columns)
    if has_manifest:
        ranks = manifest["rank"].astype(int) if "rank" in manifest.columns else pd.Series(np.arange(1, len(manifest) + 1), index=manifest.index)
        manifest_rank = dict(zip(zip(manifest["image_id"], manifest["frame_index"].astype(int)), ranks))
    got = np.array([manifest_rank[u] for u in foreign["unit"] if u in manifest_rank], dtype=np.int64)
    copies = per_unit[per_unit["role"] == "pixel_copy"]["unit"]
    return {
        "foreign_frames": len(foreign),
        "listed": int(foreign["unit"].map(lambda u: u in rank_of).sum()),
        "top_n": top,
        "in_top_share": float(in_top.mean()) if len(foreign) else None,
        "flagged_share": float(flagged.mean()) if len(foreign) else None,
        "clean_flagged_share": float(clean_flagged.mean()) if len(clean_flagged) else None,
        "clean_flagged": int(clean_flagged.sum()),
        "clean_listed": int(len(clean_flagged)),
        "groups": int(len(group_share)),
        "groups_whole": int((group_share == 1).sum()),
        "groups_partly": int(((group_share > 0) & (group_share < 1)).sum()),
        "groups_none": int((group_share == 0).sum()),
        "by_kind": by_kind,
        "enrich_ranked": int(len(got)),
        "enrich_excluded": int(len(foreign) - len(got)) if has_manifest else None,
        "enrich_min_rank": int(got.min()) if len(got) else None,
        "enrich_median_rank": float(np.median(got)) if len(got) else None,
        f"enrich_in_first_{first}": int((got <= first).sum()),
        "pixel_copies_ranked": int(copies.map(lambda u: u in manifest_rank).sum()) if has_manifest else None,
    }
