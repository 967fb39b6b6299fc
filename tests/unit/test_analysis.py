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


# --- near-duplicates ---------------------------------------------------------------------------


def reference_groups(graph: KnnGraph, threshold: float) -> list[set[int]]:
    """Plain union-find over the edges at or above threshold: the groups of two or more frames."""
    parent = list(range(len(graph)))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(len(graph)):
        for j, s in zip(graph.neighbors[i], graph.similarities[i]):
            if j >= 0 and s >= threshold:
                parent[find(i)] = find(int(j))
    groups: dict[int, set[int]] = {}
    for i in range(len(graph)):
        groups.setdefault(find(i), set()).add(i)
    return [g for g in groups.values() if len(g) > 1]


def test_near_duplicates_match_union_find_and_representative_rule():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((60, 24))
    x = np.concatenate([base, base[:20] + 0.02 * rng.standard_normal((20, 24)), base[:5]])
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    graph = exact_knn_graph(x, 5)
    table = near_duplicates(graph, 0.98, x)
    got = [set(g) for _, g in table.groupby("group_id")["row"]]
    assert sorted(map(sorted, got)) == sorted(map(sorted, reference_groups(graph, 0.98)))
    assert list(table.columns) == ["group_id", "row", "kind", "similarity", "is_representative", "group_size"]
    for _, g in table.groupby("group_id"):
        members = g["row"].tolist()
        assert g["is_representative"].sum() == 1 and (g["group_size"] == len(members)).all()
        rep = int(g.loc[g["is_representative"], "row"].iloc[0])
        # Reference rule: highest mean similarity over in-group graph edges, ties to the lowest row.
        edges = {}
        for i in members:
            for j, s in zip(graph.neighbors[i], graph.similarities[i]):
                if j in members and s >= 0.98:
                    edges[frozenset((i, int(j)))] = max(s, edges.get(frozenset((i, int(j))), -1))
        mean = {i: np.mean([s for e, s in edges.items() if i in e]) for i in members}
        assert rep == min(members, key=lambda i: (-mean[i], i))
        np.testing.assert_allclose(g["similarity"], x[members] @ x[rep], atol=1e-5)
        identical = np.abs(x[members] - x[rep]).max(axis=1) == 0
        expected = np.where(identical, "exact", "near")
        if identical.sum() == 1:  # the representative alone: a group of near members only
            expected[:] = "near"
        assert g["kind"].tolist() == expected.tolist()


def test_near_duplicates_without_embeddings_bound_similarity_from_below():
    rng = np.random.default_rng(1)
    direction = rng.standard_normal(16)
    chain = np.stack([direction + 0.04 * i * rng.standard_normal(16) for i in range(8)])
    x = np.concatenate([chain, rng.standard_normal((40, 16))])
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    graph = exact_knn_graph(x, 2)
    bounded = near_duplicates(graph, 0.95).set_index("row")
    exact = near_duplicates(graph, 0.95, x).set_index("row")
    assert (bounded["group_id"] == exact["group_id"]).all()
    assert (bounded["similarity"] <= exact["similarity"] + 1e-6).all()
    assert near_duplicates(graph, 0.9999).empty


def test_dicom_duplicate_families_land_in_one_group_each():
    from enrich_ray.decode.dicom import decode_dicom
    from enrich_ray.decode.preprocess import preprocess

    cfg = DecodeConfig()
    frames, keys = [], []
    for family, names in DICOM_FAMILIES.items():
        for name in names:
            for index, image in enumerate(decode_dicom(testdata_path(name).read_bytes(), cfg)):
                frames.append(preprocess(image, cfg)[0])
                keys.append((family, name, index))
    x = pixel_embeddings(np.stack(frames))
    table = near_duplicates(exact_knn_graph(x, 10), THRESHOLD, x)
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


def test_busi_duplicates_at_the_default_threshold_do_not_chain(busi):
    names, frames = busi
    x = pixel_embeddings(frames)
    graph = exact_knn_graph(x, 10)
    table = near_duplicates(graph, THRESHOLD, x)
    assert table["group_id"].nunique() >= 20
    for _, g in table.groupby("group_id"):
        rows = g["row"].to_numpy()
        assert (x[rows] @ x[rows].T).min() >= 0.95  # every pair in a group, not just graph edges
    # BUSI files the same image under two classes.
    twins = [names.index("malignant/malignant (145).png"), names.index("benign/benign (433).png")]
    group = table[table["row"].isin(twins)]
    assert group["group_id"].nunique() == 1 and set(group["kind"]) == {"exact"}
    # A lower threshold chains different scenes: some group then holds a pair below 0.8.
    loose = near_duplicates(graph, 0.85, x)
    assert min((x[r] @ x[r].T).min() for r in loose.groupby("group_id")["row"].apply(np.array)) < 0.8


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
