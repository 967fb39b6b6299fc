"""Redundancy, near-duplicate groups and outliers on real frames (BUSI PNGs, pydicom's DICOM files),
each compared with a plain reference implementation."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from enrich_ray.analysis.duplicates import near_duplicates
from enrich_ray.analysis.outliers import MAD_TO_SD, outliers, robust_cutoff
from enrich_ray.analysis.redundancy import plot_redundancy, redundancy_stats
from enrich_ray.config import AnalysisConfig, DecodeConfig
from enrich_ray.decode.stage import pixel_hash
from enrich_ray.index.knn import KnnGraph, exact_knn_graph
from tests.conftest import testdata_path

THRESHOLD = AnalysisConfig().near_duplicate_threshold

# Lossless re-encodings of one image (one group each); US1 and SC_rgb include lossy members.
DICOM_FAMILIES = {
    "MR_small": ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm",
                 "MR_small_implicit.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
                 "MR_small_padded.dcm"],
    "emri_small": ["emri_small.dcm", "emri_small_RLE.dcm", "emri_small_big_endian.dcm",
                   "emri_small_jpeg_2k_lossless.dcm", "emri_small_jpeg_ls_lossless.dcm"],
    "US1": ["US1_UNCR.dcm", "US1_J2KR.dcm", "US1_J2KI.dcm", "US1_UNCI.dcm"],
    "SC_rgb": ["SC_rgb.dcm", "SC_rgb_rle.dcm", "SC_rgb_expb.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_16bit.dcm"],
    "OBXXXX1A": ["OBXXXX1A.dcm", "OBXXXX1A_rle.dcm", "OBXXXX1A_expb.dcm"],
    "CT_small": ["CT_small.dcm"],
}


def pixel_embeddings(frames: np.ndarray) -> np.ndarray:
    """Raw-pixel embeddings: each frame's pixels minus its own mean, unit length (Pearson correlation).

    Per-frame rather than dataset centring: with the mean image subtracted, global brightness
    dominates, and a blank frame is 0.93 similar to the darkest BUSI frames."""
    x = frames.reshape(len(frames), -1).astype(np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def grey64(image: np.ndarray) -> np.ndarray:
    return cv2.resize(image, (64, 64), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def busi(busi_dir: Path) -> tuple[list[str], np.ndarray]:
    """Every BUSI PNG as a 64x64 grey frame, and its file name (class folder included)."""
    files = sorted(busi_dir.glob("*/*.png"))
    files = [f for f in files if "_mask" not in f.name]
    frames = np.stack([grey64(cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)) for f in files])
    return [f"{f.parent.name}/{f.name}" for f in files], frames


# --- redundancy --------------------------------------------------------------------------------


def test_redundancy_stats_match_plain_counts(busi, tmp_path):
    names, frames = busi
    nn = exact_knn_graph(pixel_embeddings(frames), 1).nn_similarity
    groups = pd.DataFrame({"modality": "US", "study_uid": [n.split("/")[0] for n in names]})
    groups.loc[::7, "study_uid"] = None
    stats = redundancy_stats(nn, groups)
    for t in (0.5, 0.7, 0.9):
        assert stats[f"share_above_{t}"] == pytest.approx(sum(v > t for v in nn) / len(nn))
    assert stats["median"] == pytest.approx(np.median(nn))
    assert stats["n"] == len(names) and stats["n_alone"] == 0
    cdf = stats["cdf"]
    assert cdf["fraction"][-1] == 1.0 and cdf["similarity"] == sorted(cdf["similarity"])
    assert len(cdf["similarity"]) <= 101
    benign = [v for v, n, g in zip(nn, names, groups["study_uid"]) if g == "benign"]
    assert stats["per_group"]["study_uid"]["benign"]["n"] == len(benign)
    assert stats["per_group"]["study_uid"]["benign"]["share_above_0.9"] == pytest.approx(np.mean(np.array(benign) > 0.9))
    assert stats["per_group"]["modality"]["US"]["n"] == len(names)
    # BUSI holds many frames of the same scene: a large share sits above 0.9 even on raw pixels.
    assert 0.2 < stats["share_above_0.9"] < 0.6

    path = plot_redundancy({"BUSI": nn, "BUSI (half)": nn[::2], "empty": np.zeros(0)}, tmp_path / "redundancy.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_redundancy_counts_frames_without_others_apart():
    stats = redundancy_stats(np.array([0.95, -np.inf, 0.2, 0.8]))
    assert stats["n"] == 4 and stats["n_alone"] == 1
    assert stats["share_above_0.9"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="one row per frame"):
        redundancy_stats(np.ones(3), pd.DataFrame({"modality": ["US"]}))


# --- duplicates --------------------------------------------------------------------------------


def _hashes_of(x: np.ndarray) -> list[str]:
    """A stand-in pixel_hash per row: equal exactly when the rows are."""
    return [pixel_hash(row) for row in x]


def reference_groups(x: np.ndarray, graph: KnnGraph, threshold: float, hashes: list, copies: list[int]) -> dict[int, set[int]]:
    """The leader rule in plain loops: representative row -> the rows of its group."""
    n = len(x)
    x64 = x.astype(np.float64)
    gram = x64 @ x64.T
    gram = (gram + gram.T) / 2
    unit = list(range(n))
    for i in range(n):
        for j in range(i):
            if hashes[i] is not None and hashes[i] == hashes[j]:
                unit[i] = unit[j]
                break
    weight = {u: sum(copies[i] for i in range(n) if unit[i] == u) for u in set(unit)}
    near = {u: set() for u in weight}
    for i in range(n):
        for j in graph.neighbors[i]:
            a, b = unit[i], unit[int(j)]
            if j >= 0 and a != b and gram[a, b] >= threshold:
                near[a].add(b)
                near[b].add(a)
    grouped: set[int] = set()
    groups = {}
    while True:
        best = None
        for a in sorted(weight):
            if a in grouped:
                continue
            others = sorted(b for b in near[a] if b not in grouped)
            count = weight[a] - 1 + sum(weight[b] for b in others)
            if count == 0:
                continue
            mean = (weight[a] - 1 + sum(weight[b] * gram[a, b] for b in others)) / count
            if best is None or (count, mean) > best[:2]:
                best = (count, mean, a, others)
        if best is None:
            return groups
        _, _, a, others = best
        grouped |= {a, *others}
        groups[a] = {i for i in range(n) if unit[i] in {a, *others}}


def _planted(seed: int) -> tuple[np.ndarray, list, list[int]]:
    """Clusters at spreads around the threshold, some rows repeated exactly, some rows with byte copies."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((12, 16))
    x = np.concatenate([c + s * rng.standard_normal((6, 16)) for c, s in zip(centres, np.linspace(0.02, 0.2, 12))])
    x = np.concatenate([x, rng.standard_normal((30, 16)), x[rng.choice(len(x), 15)]])
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    hashes = _hashes_of(x)
    for i in rng.choice(len(x), 10, replace=False):
        hashes[i] = None  # pixels unknown: never exact by pixels
    copies = [int(c) for c in rng.choice([1, 1, 1, 1, 2, 3], len(x))]
    return x, hashes, copies


@pytest.mark.parametrize("seed", range(4))
def test_duplicate_groups_equal_the_plain_leader_rule(seed):
    x, hashes, copies = _planted(seed)
    graph = exact_knn_graph(x, 4)
    table = near_duplicates(graph, 0.98, x, hashes, np.array(copies))
    assert list(table.columns) == ["group_id", "row", "kind", "similarity", "is_representative", "group_size", "pixel_hash"]
    got = {int(g.loc[g["is_representative"], "row"].iloc[0]): set(g["row"]) for _, g in table.groupby("group_id")}
    want = reference_groups(x, graph, 0.98, hashes, copies)
    assert got == want and len(want) >= 8
    assert table["group_id"].tolist() == sorted(table["group_id"]) and sorted(got) == [
        int(r) for r in table.loc[table["is_representative"], "row"]
    ]
    for rep, rows in want.items():
        g = table[table["row"].isin(rows)]
        assert (g["group_size"] == sum(copies[r] for r in rows)).all()


def _assert_invariants(table: pd.DataFrame, x: np.ndarray, hashes: list, threshold: float, copies=None) -> None:
    """Every 'exact' member has its representative's pixels; every 'near' one is within the threshold of it."""
    for _, g in table.groupby("group_id"):
        assert g["is_representative"].sum() == 1 and g["is_representative"].iloc[0]
        rep = int(g["row"].iloc[0])
        for r in g.itertuples():
            cos = float(x[r.row].astype(np.float64) @ x[rep].astype(np.float64))
            assert cos >= threshold - 1e-6 and r.similarity == pytest.approx(1.0 if r.is_representative else cos, abs=1e-6)
            same = hashes[r.row] is not None and hashes[r.row] == hashes[rep]
            if not r.is_representative:
                assert (r.kind == "exact") == same, (r.row, rep)
        has_copy = len(g) > 1 and (g["kind"].iloc[1:] == "exact").any() or (copies is not None and copies[rep] > 1)
        assert g["kind"].iloc[0] == ("exact" if has_copy else "near")


def test_duplicate_invariants_on_planted_data():
    x, hashes, copies = _planted(7)
    _assert_invariants(near_duplicates(exact_knn_graph(x, 6), 0.98, x, hashes, np.array(copies)), x, hashes, 0.98, copies)


def test_a_chain_never_makes_one_group():
    # Points 8.1 degrees apart on a circle: neighbours at cos 0.990, two steps apart at 0.960.
    step = np.arccos(0.99)
    x = np.stack([[np.cos(i * step), np.sin(i * step), 0.0] for i in range(5)]).astype(np.float32)
    graph = exact_knn_graph(x, 4)
    table = near_duplicates(graph, 0.98, x)
    _assert_invariants(table, x, [None] * 5, 0.98)
    group = dict(zip(table["row"], table["group_id"]))
    assert group.get(0) is None or group.get(0) != group.get(4)
    assert set(table["row"]) != set(range(5)) and len(table) == 3  # one star of three; components took all five
    # a-b-c: a and c share a group only around b, the one within the threshold of both.
    abc = near_duplicates(exact_knn_graph(x[:3], 2), 0.98, x[:3])
    assert abc["row"].tolist()[0] == 1 and set(abc["row"]) == {0, 1, 2}
    # Where b is missing, a and c (0.960) are no group at all.
    assert near_duplicates(exact_knn_graph(x[[0, 2]], 1), 0.98, x[[0, 2]]).empty


def test_identical_pixels_are_one_unit_even_beyond_k():
    # 30 identical frames and a kNN graph of k = 3: the hash, not the graph, makes them one group.
    rng = np.random.default_rng(2)
    x = np.concatenate([np.repeat(rng.standard_normal((1, 8)), 30, axis=0), rng.standard_normal((20, 8))])
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    hashes = _hashes_of(x)
    table = near_duplicates(exact_knn_graph(x, 3), 0.98, x, hashes)
    assert table["group_id"].nunique() == 1 and set(table["row"]) == set(range(30))
    assert set(table["kind"]) == {"exact"} and table["row"].iloc[0] == 0
    # Without hashes identical embeddings are only near: 'exact' never comes from a similarity.
    assert set(near_duplicates(exact_knn_graph(x, 3), 0.98, x)["kind"]) == {"near"}
    # A byte-copied frame with no other member is a group of its own.
    alone = near_duplicates(exact_knn_graph(x[29:], 3), 0.98, x[29:], copies=np.array([2] + [1] * 20))
    assert alone["row"].tolist() == [0] and alone["kind"].tolist() == ["exact"] and alone["group_size"].tolist() == [2]


def test_duplicates_reject_bad_input():
    x = np.eye(3, dtype=np.float32)
    graph = exact_knn_graph(x, 1)
    with pytest.raises(ValueError, match="threshold"):
        near_duplicates(graph, 1.5, x)
    with pytest.raises(ValueError, match="3"):
        near_duplicates(graph, 0.9, x[:2])
    with pytest.raises(ValueError, match="pixel_hash"):
        near_duplicates(graph, 0.9, x, ["a"])
    with pytest.raises(ValueError, match="copies"):
        near_duplicates(graph, 0.9, x, copies=np.array([1, 0, 1]))
    assert near_duplicates(graph, 0.9, x).empty


def test_dicom_duplicate_families_by_pixels_and_similarity():
    from enrich_ray.decode.dicom import iter_dicom_frames
    from enrich_ray.decode.preprocess import preprocess

    cfg = DecodeConfig()
    frames, keys, hashes = [], [], []
    for family, names in DICOM_FAMILIES.items():
        for name in names:
            for index, image in iter_dicom_frames(testdata_path(name).read_bytes(), cfg):
                frames.append(preprocess(image.image, cfg)[0])
                hashes.append(pixel_hash(image.image))
                keys.append((family, name, index))
    x = pixel_embeddings(np.stack(frames))
    table = near_duplicates(exact_knn_graph(x, 10), THRESHOLD, x, hashes)
    _assert_invariants(table, x, hashes, THRESHOLD)
    found = {frozenset(g) for _, g in table.groupby("group_id")["row"]}
    expected = set()
    for family, names in DICOM_FAMILIES.items():
        for index in {k[2] for k in keys if k[0] == family}:
            rows = frozenset(r for r, k in enumerate(keys) if k[0] == family and k[2] == index)
            if len(rows) > 1:
                expected.add(rows)
    assert found == expected
    kinds = table.assign(family=[keys[r][0] for r in table["row"]]).groupby("family")["kind"].agg(set)
    assert kinds["MR_small"] == {"exact"} and kinds["emri_small"] == {"exact"}  # lossless: identical pixels
    assert "near" in kinds["US1"]  # lossy J2K and reduced-resolution decoding


def test_busi_duplicates_at_the_default_threshold_never_chain(busi, busi_dir):
    from enrich_ray.decode.raster import decode_raster

    names, frames = busi
    hashes = [pixel_hash(decode_raster((busi_dir / n).read_bytes(), DecodeConfig()).image) for n in names]
    x = pixel_embeddings(frames)
    graph = exact_knn_graph(x, 10)
    table = near_duplicates(graph, THRESHOLD, x, hashes)
    assert table["group_id"].nunique() >= 20
    _assert_invariants(table, x, hashes, THRESHOLD)
    # BUSI files the same image under two classes: the one exact pair.
    twins = [names.index("malignant/malignant (145).png"), names.index("benign/benign (433).png")]
    group = table[table["row"].isin(twins)]
    assert group["group_id"].nunique() == 1 and set(group["kind"]) == {"exact"}
    assert (table["kind"] == "exact").sum() == 2
    # At a loose threshold too, members stay within it of their representative (components chained
    # different scenes there: some group held a pair below 0.8).
    loose = near_duplicates(graph, 0.85, x, hashes)
    _assert_invariants(loose, x, hashes, 0.85)


# --- outliers ----------------------------------------------------------------------------------


def planted_outliers(seed: int = 0) -> np.ndarray:
    """A colourful striped texture (grey, as decode would make it) and a blank frame with sensor noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:256, 0:256] / 256
    rgb = np.stack([np.sin(40 * xx + 25 * yy) * 0.5 + 0.5, np.cos(30 * yy - 20 * xx) * 0.5 + 0.5, (xx + yy) / 2], -1)
    texture = cv2.cvtColor((rgb * 255).astype(np.uint8), cv2.COLOR_RGB2GRAY)
    blank = np.clip(rng.normal(10, 2, (256, 256)), 0, 255).astype(np.uint8)
    return np.stack([grey64(texture), grey64(blank)])


def test_planted_outliers_rank_first_among_busi(busi):
    _, frames = busi
    x = pixel_embeddings(np.concatenate([frames, planted_outliers()]))
    graph = exact_knn_graph(x, 10)
    table = outliers(graph, AnalysisConfig().outlier_mad_k)
    planted = {len(frames), len(frames) + 1}
    assert set(table["row"][:2]) == planted
    assert table["flagged"][:2].all()
    assert table["flagged"].mean() < 0.05
    assert table["rank"].tolist() == list(range(1, len(x) + 1))
    assert sorted(table["row"]) == list(range(len(x)))
    # Plain reference of the score and the cut-off.
    for rec in table.head(30).itertuples():
        sims = graph.similarities[rec.row]
        assert rec.score == pytest.approx(1 - (sims[0] + sims.mean()) / 2, abs=1e-6)
        assert rec.nn_similarity == pytest.approx(sims[0])
    score = table["score"].to_numpy(np.float64)
    median = np.median(score)
    cut = median + AnalysisConfig().outlier_mad_k * MAD_TO_SD * np.median(np.abs(score - median))
    assert robust_cutoff(score, AnalysisConfig().outlier_mad_k) == pytest.approx(cut)
    assert table["flagged"].tolist() == (score > cut).tolist()
    assert (np.diff(score) <= 0).all()


def test_outlier_cutoff_when_most_frames_are_identical():
    sims = np.full((10, 2), 0.99, np.float32)
    sims[9] = [0.2, 0.1]
    graph = KnnGraph(np.tile([[1, 2]], (10, 1)), sims)
    table = outliers(graph, 3.5)
    assert table["row"].iloc[0] == 9 and table["flagged"].tolist() == [True] + [False] * 9
    alone = outliers(KnnGraph(np.array([[-1]]), np.array([[-np.inf]], np.float32)), 3.5)
    assert alone["score"].iloc[0] == 2.0 and np.isfinite(alone["nn_similarity"]).all()
    with pytest.raises(ValueError, match="non-negative"):
        outliers(graph, -1.0)
