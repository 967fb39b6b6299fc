"""Redundancy, near-duplicate groups and outliers on real frames (BUSI PNGs, pydicom's DICOM files),
each compared with a plain reference implementation."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from enrich_ray.analysis.duplicates import archive_duplicates, content_graph, near_duplicates, thumbnails
from enrich_ray.analysis.redundancy import plot_redundancy, redundancy_stats
from enrich_ray.config import AnalysisConfig, DecodeConfig, IndexConfig
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


def reference_groups(x: np.ndarray, graph: KnnGraph, threshold: float, hashes: list, copies: list[int],
                     thumbs: np.ndarray | None = None, content: float = -1.0, alone: float | None = None,
                     content_neighbours: KnnGraph | None = None) -> tuple[dict, dict]:
    """The two judgments in plain loops: exact {representative row: rows} and near {representative row: rows}."""
    n = len(x)
    x64 = x.astype(np.float64)
    gram = x64 @ x64.T
    gram = (gram + gram.T) / 2
    ncc = None if thumbs is None else thumbs.astype(np.float64) @ thumbs.astype(np.float64).T
    unit = list(range(n))
    for i in range(n):
        for j in range(i):
            if hashes[i] is not None and hashes[i] == hashes[j]:
                unit[i] = unit[j]
                break
    units = sorted(set(unit))
    exact = {u: {i for i in range(n) if unit[i] == u} for u in units if sum(copies[i] for i in range(n) if unit[i] == u) >= 2}
    near = {u: set() for u in units}
    edges = [(i, int(j)) for g in (graph, content_neighbours) if g is not None for i in range(n) for j in g.neighbors[i] if j >= 0]
    for i, j in edges:
        a, b = unit[i], unit[j]
        both = gram[a, b] >= threshold and (ncc is None or np.isnan(ncc[a, b]) or ncc[a, b] >= content)
        by_content = ncc is not None and alone is not None and ncc[a, b] >= alone
        if a != b and (both or by_content):
            near[a].add(b)
            near[b].add(a)
    grouped: set[int] = set()
    stars = {}
    while True:
        best = None
        for a in units:
            others = sorted(b for b in near[a] if b not in grouped)
            if a in grouped or not others:
                continue
            key = (len(others), sum(gram[a, b] for b in others) / len(others))
            if best is None or key > best[0]:
                best = (key, a, others)
        if best is None:
            return exact, stars
        _, a, others = best
        grouped |= {a, *others}
        stars[a] = {a, *others}


def _groups(table: pd.DataFrame, kind: str) -> dict[int, set[int]]:
    part = table[table["kind"] == kind]
    return {int(g.loc[g["is_representative"], "row"].iloc[0]): set(g["row"]) for _, g in part.groupby("group_id")}


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


def _thumbs_of(x: np.ndarray, seed: int) -> np.ndarray:
    """Stand-in thumbnails that mostly follow the embeddings: some close pairs fail the content check."""
    rng = np.random.default_rng(seed)
    t = np.concatenate([x, 0.15 * rng.standard_normal((len(x), 4))], axis=1)
    t -= t.mean(axis=1, keepdims=True)
    return (t / np.linalg.norm(t, axis=1, keepdims=True)).astype(np.float16)


@pytest.mark.parametrize("seed", range(4))
def test_duplicate_groups_equal_the_plain_reference(seed):
    x, hashes, copies = _planted(seed)
    graph = exact_knn_graph(x, 4)
    thumbs = _thumbs_of(x, seed) if seed % 2 else None
    if thumbs is not None:  # three pairs far apart in the embedding that look the same: near by content alone
        for i, j in np.random.default_rng(seed).choice(len(x), (3, 2), replace=False):
            thumbs[j] = thumbs[i]
    alone, cgraph = (0.99, content_graph(thumbs, 4, IndexConfig())) if seed % 2 else (None, None)
    table = near_duplicates(graph, 0.98, x, hashes, np.array(copies), thumbs, 0.97, alone, cgraph)
    assert list(table.columns) == ["group_id", "row", "kind", "similarity", "content_similarity", "is_representative",
                                   "group_size", "pixel_hash"]
    want_exact, want_near = reference_groups(x, graph, 0.98, hashes, copies, thumbs, 0.97, alone, cgraph)
    assert _groups(table, "exact") == want_exact and _groups(table, "near") == want_near
    assert len(want_exact) >= 8 and len(want_near) >= 6
    if thumbs is not None:
        assert ((table["kind"] == "near") & (table["similarity"] < 0.98)).any()  # some by content alone
    assert table["group_id"].tolist() == sorted(table["group_id"])
    for rep, rows in want_exact.items():
        assert (table[table["row"].isin(rows) & (table["kind"] == "exact")]["group_size"] == sum(copies[r] for r in rows)).all()
    _assert_invariants(table, x, hashes, 0.98, copies, thumbs, 0.97, alone)


def _assert_invariants(table: pd.DataFrame, x: np.ndarray, hashes: list, threshold: float, copies=None,
                       thumbs: np.ndarray | None = None, content: float = -1.0, alone: float | None = None) -> None:
    """Every 'exact' member has its representative's pixels; every 'near' one passes both checks to it
    (or the content check alone at `alone`), recomputed here; a row is in at most one group of each kind,
    in two only as its exact group's representative."""
    x64 = x.astype(np.float64)
    for _, g in table.groupby("group_id"):
        assert g["is_representative"].sum() == 1 and g["is_representative"].iloc[0]
        assert g["kind"].nunique() == 1
        rep = int(g["row"].iloc[0])
        for r in g.itertuples():
            cos = float(x64[r.row] @ x64[rep])
            assert r.similarity == pytest.approx(1.0 if r.is_representative else cos, abs=1e-6)
            if r.kind == "exact":
                assert r.row == rep or (hashes[r.row] is not None and hashes[r.row] == hashes[rep]), (r.row, rep)
            elif not r.is_representative:
                ncc = None if thumbs is None else float(thumbs[r.row].astype(np.float64) @ thumbs[rep].astype(np.float64))
                assert (np.isnan(r.content_similarity) if ncc is None else r.content_similarity == pytest.approx(ncc, abs=1e-3))
                by_content = ncc is not None and alone is not None and ncc >= alone - 1e-3
                assert by_content or (cos >= threshold - 1e-6 and (ncc is None or ncc >= content - 1e-3))
                assert hashes[r.row] is None or hashes[r.row] != hashes[rep]
        if g["kind"].iloc[0] == "exact":
            assert len(g) > 1 or (copies is not None and copies[rep] > 1)
            assert g["group_size"].iloc[0] == (len(g) if copies is None else sum(copies[r] for r in g["row"]))
        else:
            assert len(g) >= 2 and (g["group_size"] == len(g)).all()
    for kind in ("exact", "near"):
        assert not table[table["kind"] == kind]["row"].duplicated().any()
    twice = set(table.loc[table["row"].duplicated(), "row"])
    exact_reps = set(table.loc[(table["kind"] == "exact") & table["is_representative"], "row"])
    assert twice <= exact_reps


def test_a_pair_the_embedding_sets_apart_is_near_when_its_thumbnails_agree():
    # A brightness shift: the same picture (equal standardised thumbnails), opposite embeddings, so the
    # embeddings' graph never offers the pair; the content graph does, and content_alone decides.
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 8)).astype(np.float32)
    x[1] = -x[0]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    frames = rng.random((40, 32, 32)).astype(np.float32)
    frames[1] = np.clip(frames[0] * 0.8 + 0.1, 0, 1)
    thumbs = thumbnails(frames)
    graph = exact_knn_graph(x, 3)
    assert 1 not in graph.neighbors[0]
    cfg = AnalysisConfig()
    pair = archive_duplicates(graph, x, cfg, IndexConfig(), thumbs=thumbs)
    assert set(pair["row"]) == {0, 1} and set(pair["kind"]) == {"near"}
    member = pair[~pair["is_representative"]].iloc[0]
    assert member["similarity"] < 0 and member["content_similarity"] > 0.99
    _assert_invariants(pair, x, [None] * 40, cfg.near_duplicate_threshold, None, thumbs,
                       cfg.near_duplicate_content_threshold, cfg.near_duplicate_content_alone)
    # Without content_alone (the older rule: both checks), or without the content graph, no group.
    assert near_duplicates(graph, 0.85, x, thumbs=thumbs, content_threshold=0.95,
                           content_neighbours=content_graph(thumbs, 3, IndexConfig())).empty
    assert near_duplicates(graph, 0.85, x, thumbs=thumbs, content_threshold=0.95, content_alone=0.99).empty


def test_duplicate_invariants_on_planted_data():
    x, hashes, copies = _planted(7)
    thumbs = _thumbs_of(x, 7)
    _assert_invariants(near_duplicates(exact_knn_graph(x, 6), 0.98, x, hashes, np.array(copies), thumbs, 0.97),
                       x, hashes, 0.98, copies, thumbs, 0.97)


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


def test_an_exact_set_inside_a_near_star_keeps_its_exact_group():
    from enrich_ray.analysis.duplicates import duplicate_families

    rng = np.random.default_rng(3)
    a = rng.standard_normal(16)
    x = np.stack([a, a, a, a + 0.05 * rng.standard_normal(16), rng.standard_normal(16), rng.standard_normal(16)])
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    hashes = ["h", "h", "h", "h3", "h4", "h4"]  # rows 0-2 identical; row 3 close; rows 4 and 5 identical too
    table = near_duplicates(exact_knn_graph(x, 2), 0.98, x, hashes)
    _assert_invariants(table, x, hashes, 0.98)
    assert _groups(table, "exact") == {0: {0, 1, 2}, 4: {4, 5}}
    assert _groups(table, "near") == {0: {0, 3}}  # row 0 stands for its set; rows 1 and 2 only in the exact group
    assert set(table.loc[table["kind"] == "exact", "group_size"]) == {3, 2}
    family = duplicate_families(table, len(x))
    assert len(set(family[:4])) == 1 and family[4] == family[5] != family[0]
    # The report's and junk's reading: one representative per group, exact copies are non-representatives.
    from enrich_ray.selection.junk import junk_rows

    junk = junk_rows(pd.DataFrame({"row": [], "flagged": []}), table.drop_duplicates("row"))
    assert junk["row"].tolist() == [1, 2, 5] and set(junk["why"]) == {"exact duplicate"}


def test_identical_pixels_are_one_unit_even_beyond_k():
    # 30 identical frames and a kNN graph of k = 3: the hash, not the graph, makes them one group.
    rng = np.random.default_rng(2)
    x = np.concatenate([np.repeat(rng.standard_normal((1, 8)), 30, axis=0), rng.standard_normal((20, 8))])
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    hashes = _hashes_of(x)
    table = near_duplicates(exact_knn_graph(x, 3), 0.98, x, hashes)
    assert table["group_id"].nunique() == 1 and set(table["row"]) == set(range(30))
    assert set(table["kind"]) == {"exact"} and table["row"].iloc[0] == 0 and table["group_size"].iloc[0] == 30
    # Without hashes identical embeddings are only near: 'exact' never comes from a similarity.
    assert set(near_duplicates(exact_knn_graph(x, 3), 0.98, x)["kind"]) == {"near"}
    # A byte-copied frame with no other member is a group of its own.
    alone = near_duplicates(exact_knn_graph(x[29:], 3), 0.98, x[29:], copies=np.array([2] + [1] * 20))
    assert alone["row"].tolist() == [0] and alone["kind"].tolist() == ["exact"] and alone["group_size"].tolist() == [2]


def test_thumbnails_ignore_brightness_and_contrast():
    from enrich_ray.analysis.duplicates import content_similarity

    rng = np.random.default_rng(4)
    frame = cv2.GaussianBlur(rng.random((64, 64)).astype(np.float32), (9, 9), 3)
    other = cv2.GaussianBlur(rng.random((64, 64)).astype(np.float32), (9, 9), 3)
    frames = np.stack([frame, 0.6 * frame + 0.3, frame[::-1], other, np.full((64, 64), 0.5, np.float32)])
    t = thumbnails(frames)
    assert t.shape == (5, 256) and t.dtype == np.float16
    assert np.allclose(thumbnails(frames.reshape(5, -1)), t)
    sim = content_similarity(t, np.zeros(5, np.int64), np.arange(5))
    assert sim[0] == pytest.approx(1.0, abs=1e-3) and sim[1] == pytest.approx(1.0, abs=1e-3)
    assert abs(sim[3]) < 0.5 and sim[4] == 0  # another image; a constant frame correlates with nothing
    # A pair of close frames that fails the content check is no group; with a thumbnail unknown (NaN)
    # the embeddings judge alone.
    x = np.array([[1.0, 0.0], [0.99, 0.141]], np.float32)
    two = np.stack([t[0], t[3]])
    assert near_duplicates(exact_knn_graph(x, 1), 0.98, x, thumbs=two, content_threshold=0.9).empty
    two[1] = np.nan
    assert set(near_duplicates(exact_knn_graph(x, 1), 0.98, x, thumbs=two, content_threshold=0.9)["row"]) == {0, 1}
    odd = thumbnails(np.stack([cv2.resize(frame, (50, 50))]))  # a side the thumbnail does not divide
    assert float(odd[0].astype(np.float32) @ t[0].astype(np.float32)) > 0.95
    with pytest.raises(ValueError, match="square"):
        thumbnails(np.zeros((2, 10)))


def test_duplicates_reject_bad_input():
    x = np.eye(3, dtype=np.float32)
    graph = exact_knn_graph(x, 1)
    with pytest.raises(ValueError, match="threshold"):
        near_duplicates(graph, 1.5, x)
    with pytest.raises(ValueError, match="content_threshold"):
        near_duplicates(graph, 0.9, x, content_threshold=2.0)
    with pytest.raises(ValueError, match="3"):
        near_duplicates(graph, 0.9, x[:2])
    with pytest.raises(ValueError, match="pixel_hash"):
        near_duplicates(graph, 0.9, x, ["a"])
    with pytest.raises(ValueError, match="copies"):
        near_duplicates(graph, 0.9, x, copies=np.array([1, 0, 1]))
    with pytest.raises(ValueError, match="thumbs"):
        near_duplicates(graph, 0.9, x, thumbs=np.zeros((2, 4)))
    assert near_duplicates(graph, 0.9, x).empty


def test_dicom_duplicate_families_by_pixels_and_similarity():
    from enrich_ray.decode.dicom import iter_dicom_frames
    from enrich_ray.decode.preprocess import preprocess
    from enrich_ray.analysis.duplicates import duplicate_families

    cfg = DecodeConfig()
    frames, keys, hashes = [], [], []
    for family, names in DICOM_FAMILIES.items():
        for name in names:
            for index, image in iter_dicom_frames(testdata_path(name).read_bytes(), cfg):
                frames.append(preprocess(image.image, cfg)[0])
                hashes.append(pixel_hash(image.image))
                keys.append((family, name, index))
    x = pixel_embeddings(np.stack(frames))
    thumbs = thumbnails(np.stack(frames))
    content = AnalysisConfig().near_duplicate_content_threshold
    table = near_duplicates(exact_knn_graph(x, 10), THRESHOLD, x, hashes, thumbs=thumbs, content_threshold=content)
    _assert_invariants(table, x, hashes, THRESHOLD, thumbs=thumbs, content=content)
    family = duplicate_families(table, len(x))
    found = {frozenset(np.flatnonzero(family == f).tolist()) for f in set(family.tolist()) - {-1}}
    expected = set()
    for name_family in DICOM_FAMILIES:
        for index in {k[2] for k in keys if k[0] == name_family}:
            rows = frozenset(r for r, k in enumerate(keys) if k[0] == name_family and k[2] == index)
            if len(rows) > 1:
                expected.add(rows)
    # Every set of re-encodings is one family; a family never mixes two objects (it may join adjacent
    # frames of one multi-frame file, as it joins a cine clip's).
    assert all(any(rows <= f for f in found) for rows in expected)
    assert all(len({keys[r][0] for r in f}) == 1 for f in found)
    exact = [set(rows) for rows in _groups(table, "exact").values()]
    lossless = [set(rows) for rows in expected if keys[min(rows)][0] in ("MR_small", "emri_small")]
    assert lossless and all(rows in exact for rows in lossless)  # identical pixels: one exact group each
    us1 = [r for r, k in enumerate(keys) if k[0] == "US1"]
    assert not any(set(us1) <= rows for rows in exact) and set(us1) <= set(table["row"])  # lossy J2K: near, not exact


def test_busi_duplicates_at_the_default_thresholds_never_chain(busi, busi_dir):
    from enrich_ray.decode.raster import decode_raster

    names, frames = busi
    hashes = [pixel_hash(decode_raster((busi_dir / n).read_bytes(), DecodeConfig()).image) for n in names]
    x = pixel_embeddings(frames)
    thumbs = thumbnails(frames)
    content = AnalysisConfig().near_duplicate_content_threshold
    graph = exact_knn_graph(x, 10)
    table = near_duplicates(graph, THRESHOLD, x, hashes, thumbs=thumbs, content_threshold=content)
    assert table["group_id"].nunique() >= 20
    _assert_invariants(table, x, hashes, THRESHOLD, thumbs=thumbs, content=content)
    # BUSI files the same image under two classes: the one exact group.
    twins = [names.index("malignant/malignant (145).png"), names.index("benign/benign (433).png")]
    assert _groups(table, "exact") == {min(twins): set(twins)}
    # At a loose threshold too, members stay within it of their representative.
    loose = near_duplicates(graph, 0.7, x, hashes, thumbs=thumbs, content_threshold=0.8)
    _assert_invariants(loose, x, hashes, 0.7, thumbs=thumbs, content=0.8)


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
    # The outlier table over every frame (outlier_table_of, as the nightly increment calls it): the two
    # planted frames are in its top 1%, flagged, and at most 5% of the frames are (BUSI holds a few
    # odd frames of its own: over-bright scans rank beside them).
    from enrich_ray.analysis.outliers import appearance_features, outlier_table_of

    _, frames = busi
    images = np.concatenate([frames, planted_outliers()])
    x = pixel_embeddings(images)
    rows = np.arange(len(x))
    table = outlier_table_of(rows, x, thumbnails(images), appearance_features(images),
                             pd.DataFrame({"is_constant": np.zeros(len(x), bool)}), np.full(len(x), -1), AnalysisConfig(),
                             IndexConfig())
    planted = table[table["row"] >= len(frames)]
    assert (planted["rank"] <= len(x) // 100).all() and planted["flagged"].all()
    assert table["flagged"].mean() <= 0.05
    assert table["rank"].tolist() == list(range(1, len(x) + 1))
    assert sorted(table["row"]) == list(range(len(x)))
    # A subset keeps the full arrays' row numbers.
    part = outlier_table_of(rows[::2], x, thumbnails(images), appearance_features(images),
                            pd.DataFrame({"is_constant": np.zeros(len(x), bool)}), np.full(len(x), -1), AnalysisConfig(),
                            IndexConfig())
    assert sorted(part["row"]) == list(rows[::2])
