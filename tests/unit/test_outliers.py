"""The foreign-frame table on archives with planted truth (synthetic ultrasound-like frames, and BUSI
when present) and its parts against plain reference implementations.

Floors (issue 11): >= 90% of foreign frames in the top 5% of the list and flagged, <= 2% of clean
frames flagged, near-twin groups flagged whole or not at all. Print the figures with
`.venv/bin/python -m tests.unit.test_outliers`.
"""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from enrich_ray.analysis.outliers import (
    appearance_features,
    kth_distance,
    neighbour_similarities,
    outlier_table,
    robust_z,
)
from enrich_ray.config import AnalysisConfig
from enrich_ray.index.knn import exact_knn_graph
from tests.unit.foreign_archive import Archive, build_archive, busi_clean, synthetic_clean


def floors(archive: Archive, table: pd.DataFrame) -> dict:
    """Share of foreign frames in the top 5% and flagged there, share flagged, share of clean flagged."""
    top = table.head(int(np.ceil(0.05 * len(table))))
    foreign = archive.foreign
    flagged = table.set_index("row")["flagged"].sort_index().to_numpy()
    return {
        "foreign": int(foreign.sum()),
        "frames": len(table),
        "top5_and_flagged": float((foreign[top["row"]] & top["flagged"].to_numpy()).sum() / foreign.sum()),
        "foreign_flagged": float(flagged[foreign].mean()),
        "clean_flagged": float(flagged[~foreign].mean()),
    }


def check_table(archive: Archive, table: pd.DataFrame) -> None:
    n = len(archive.pixels)
    assert table["rank"].tolist() == list(range(1, n + 1))
    assert sorted(table["row"]) == list(range(n))
    assert (np.diff(table["score"].to_numpy()) <= 0).all()
    by_row = table.set_index("row").sort_index()
    # Near-twin groups are flagged whole or not at all.
    groups = pd.Series(by_row["flagged"].to_numpy()).groupby(archive.duplicate_group)
    whole = groups.nunique()
    assert (whole.drop(index=-1, errors="ignore") == 1).all()
    # Blank frames always; a reason for every flagged frame and for no other.
    assert by_row["flagged"][archive.kind == "blank"].all()
    assert (by_row["reason"].str.len() > 0).tolist() == by_row["flagged"].tolist()


@pytest.fixture(scope="module")
def synthetic() -> Archive:
    return build_archive(synthetic_clean(800))


def test_floors_on_synthetic_ultrasound_with_planted_foreign_frames(synthetic):
    table = outlier_table(synthetic.graph, synthetic.embeddings, appearance_features(synthetic.pixels), synthetic.header,
                          synthetic.duplicate_group, AnalysisConfig())
    check_table(synthetic, table)
    got = floors(synthetic, table)
    assert got["top5_and_flagged"] >= 0.9 and got["clean_flagged"] <= 0.02, got
    by_row = table.set_index("row").sort_index()
    ct = np.flatnonzero(synthetic.header["modality"] == "CT")[0]
    assert f"modality CT rare (1 of {len(table)} frames)" in by_row.loc[ct, "reason"]
    assert by_row.loc[np.flatnonzero(synthetic.kind == "blank")[0], "reason"].startswith("blank frame")
    # The phantom series: a group each other's neighbours, found all the same.
    assert by_row["flagged"][synthetic.kind == "phantom"].all()


def test_floors_on_busi_with_planted_foreign_frames(busi_dir):
    archive = build_archive(busi_clean(busi_dir))
    table = outlier_table(archive.graph, archive.embeddings, appearance_features(archive.pixels), archive.header,
                          archive.duplicate_group, AnalysisConfig())
    check_table(archive, table)
    got = floors(archive, table)
    assert got["top5_and_flagged"] >= 0.9 and got["clean_flagged"] <= 0.02, got


@pytest.mark.parametrize("base, space, tail_share, top", [
    ("synthetic", "both", 0.03, 0.9), ("synthetic", "content", 0.03, 0.9), ("busi", "both", 0.03, 0.9),
    ("busi", "content", None, 0.7), ("busi", "content", 0.03, 0.3)])
def test_floors_in_the_curate_spaces(request, base, space, tail_share, top):
    """The neighbourhoods curate reads by default (content and embedding joined), and by content alone:
    on BUSI it found 74% of the planted frames in the top 5% at the fixed cut-off, and a third at the
    archive's cut-off (content neighbourhoods spread wide, the cut-off rises past the phantom series):
    why 'both' is the default."""
    from enrich_ray.analysis.duplicates import thumbnails
    from enrich_ray.analysis.outliers import neighbourhood_space
    from enrich_ray.config import IndexConfig

    archive = request.getfixturevalue("synthetic") if base == "synthetic" else build_archive(busi_clean(request.getfixturevalue("busi_dir")))
    cfg = AnalysisConfig(outlier_space=space, outlier_tail_share=tail_share)
    graph, unit = neighbourhood_space(space, archive.graph, archive.embeddings, thumbnails(archive.pixels),
                                      cfg.outlier_scales, IndexConfig())
    table = outlier_table(graph, unit, appearance_features(archive.pixels), archive.header, archive.duplicate_group, cfg)
    check_table(archive, table)
    got = floors(archive, table)
    assert got["top5_and_flagged"] >= top and got["clean_flagged"] <= 0.03, got


def test_a_group_of_foreign_frames_is_found_at_the_largest_scale():
    """A tight cluster of 20 far from a blob of 600: close at k = 1 and 10, far at k = 50."""
    rng = np.random.default_rng(0)
    blob = rng.standard_normal((600, 16)) + 4 * np.eye(16)[0]
    group = rng.standard_normal((20, 16)) * 0.05 + 4 * np.eye(16)[1]
    x = np.concatenate([blob, group])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    graph = exact_knn_graph(x, 10)
    sims = neighbour_similarities(graph, x, [1, 10, 50])
    z = robust_z(-sims)
    assert (z[600:, :2] < 0).all() and (z[600:, 2] > 5).all()
    assert (z[:600, 2] < 3.5).mean() > 0.98
    # Plain reference: the k-th largest similarity to another frame.
    full = x @ x.T
    np.fill_diagonal(full, -np.inf)
    ref = -np.sort(-full, axis=1)[:, [0, 9, 49]]
    np.testing.assert_allclose(sims, ref, atol=1e-5)
    pixels = np.full((620, 64 * 64), 0.5, np.float32) + rng.uniform(0, 0.01, (620, 64 * 64)).astype(np.float32)
    table = outlier_table(graph, x, appearance_features(pixels), pd.DataFrame(index=range(620)), None, AnalysisConfig())
    assert set(table["row"][:20]) == set(range(600, 620)) and table["flagged"][:20].all()
    assert table["reason"][0].startswith("far from its 50 nearest frames")
    only_near = outlier_table(graph, x, appearance_features(pixels), pd.DataFrame(index=range(620)), None, AnalysisConfig(outlier_scales=[1, 10]))
    assert not only_near.set_index("row")["flagged"][600:].any()


def test_parts_match_plain_references():
    rng = np.random.default_rng(1)
    points = rng.standard_normal((300, 5))
    d = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    np.testing.assert_allclose(kth_distance(points, 7), np.sort(d, axis=1)[:, 6], rtol=1e-4)
    values = rng.standard_normal((50, 3))
    med = np.median(values, axis=0)
    np.testing.assert_allclose(robust_z(values), (values - med) / (1.4826 * np.median(np.abs(values - med), axis=0)))
    frames = rng.uniform(0, 1, (4, 64, 64)).astype(np.float32)
    frames[1] = 0.0
    feats = appearance_features(frames)
    assert feats.shape == (4, 28)
    assert feats[1, 2] == 1.0 and feats[1, 1] == 0.0  # a black frame: all dark, no spread
    np.testing.assert_allclose(feats[:, 0], frames.mean(axis=(1, 2)), rtol=1e-5)


def test_header_rarity_needs_a_concentrated_column_and_groups_take_their_median():
    n = 200
    rng = np.random.default_rng(2)
    x = rng.standard_normal((n, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    graph = exact_knn_graph(x, 10)
    pixels = rng.uniform(0, 1, (n, 64 * 64)).astype(np.float32)
    header = pd.DataFrame({"modality": ["US"] * (n - 3) + ["CT", "CT", "MR"],
                           "rows": rng.integers(100, 900, n), "cols": 256,  # a hundred shapes: none is rare
                           "colorfulness": 0.0, "is_constant": False})
    group = np.full(n, -1)
    group[[0, 1, 2, 197]] = 7  # one CT frame among three ordinary twins: the group is not foreign
    table = outlier_table(graph, x, appearance_features(pixels), header, group, AnalysisConfig()).set_index("row")
    assert table.loc[198, "flagged"] and table.loc[199, "flagged"] and not table.loc[197, "flagged"]
    assert table.loc[199, "reason"] == f"modality MR rare (1 of {n} frames)"
    assert len(set(table.loc[[0, 1, 2, 197], "score"])) == 1
    # the two CT frames as one family read as a group; a family of one row (a file at several paths) as itself
    group[[197, 198, 199]] = [8, 8, 9]
    table = outlier_table(graph, x, appearance_features(pixels), header, group, AnalysisConfig()).set_index("row")
    assert table.loc[197, "reason"] == table.loc[198, "reason"] == f"near-twin group of 2: modality CT rare (2 of {n} frames)"
    assert table.loc[199, "flagged"] and table.loc[199, "reason"] == f"modality MR rare (1 of {n} frames)"
    assert not any("shape" in r for r in table["reason"])
    header.loc[5, "colorfulness"] = 0.4
    header.loc[6, "is_constant"] = True
    table = outlier_table(graph, x, appearance_features(pixels), header, None, AnalysisConfig()).set_index("row")
    assert table.loc[5, "reason"] == f"colour image (1 of {n} frames in colour)"
    assert table.loc[6, "flagged"] and table.loc[6, "reason"] == "blank frame"


def test_bad_settings_and_inputs_name_the_key():
    x = np.eye(4, dtype=np.float32)
    graph = exact_knn_graph(x, 2)
    pixels = np.zeros((4, 64 * 64), np.float32)
    for cfg, key in [(AnalysisConfig(outlier_scales=[0]), "outlier_scales"),
                     (AnalysisConfig(outlier_rare_share=0.7), "outlier_rare_share"),
                     (AnalysisConfig(outlier_mad_k=-1), "outlier_mad_k"),
                     (AnalysisConfig(outlier_colour_min=-0.1), "outlier_colour_min")]:
        with pytest.raises(ValueError, match=key):
            outlier_table(graph, x, appearance_features(pixels), pd.DataFrame(index=range(4)), None, cfg)
    with pytest.raises(ValueError, match="one row per frame"):
        outlier_table(graph, x, appearance_features(pixels[:3]), pd.DataFrame(index=range(4)), None, AnalysisConfig())
    with pytest.raises(ValueError, match="duplicate_group"):
        outlier_table(graph, x, appearance_features(pixels), pd.DataFrame(index=range(4)), np.zeros(3), AnalysisConfig())


if __name__ == "__main__":
    from tests.conftest import SHARED_DATA

    archives = {"synthetic": lambda: build_archive(synthetic_clean(800)),
                "synthetic 300 (test_junk's)": lambda: build_archive(synthetic_clean(300))}
    busi = SHARED_DATA / "busi_256" / "Dataset_BUSI_with_GT"
    if busi.is_dir():
        archives["BUSI"] = lambda: build_archive(busi_clean(busi))
    from enrich_ray.analysis.duplicates import thumbnails
    from enrich_ray.analysis.outliers import neighbourhood_space
    from enrich_ray.config import IndexConfig

    for name, make in archives.items():
        a = make()
        for space, tail_share in itertools.product(("embedding", "content", "both"), (None, 0.03)):
            cfg = AnalysisConfig(outlier_space=space, outlier_tail_share=tail_share)
            graph, unit = neighbourhood_space(space, a.graph, a.embeddings, thumbnails(a.pixels), cfg.outlier_scales, IndexConfig())
            t = outlier_table(graph, unit, appearance_features(a.pixels), a.header, a.duplicate_group, cfg)
            phantom = t.set_index("row").sort_index()["score"][a.kind == "phantom"]
            print(name, space, f"outlier_tail_share {tail_share}", floors(a, t), f"cut-off {t['cutoff'].iloc[0]:.2f},",
                  f"phantom series scores {phantom.min():.2f}-{phantom.max():.2f} (beyond {cfg.outlier_mad_k})")


def test_neighbourhood_spaces_read_thumbnails_and_embeddings_like_a_plain_search():
    from enrich_ray.analysis.duplicates import thumbnails
    from enrich_ray.analysis.outliers import neighbourhood_space
    from enrich_ray.config import IndexConfig

    rng = np.random.default_rng(5)
    frames = rng.uniform(0, 1, (80, 64, 64)).astype(np.float32)
    frames[3] = 0.4  # blank: a zero thumbnail
    frames[7] = frames[6] * 0.5 + 0.2  # the same content, darker and flatter
    thumbs = thumbnails(frames)
    emb = rng.normal(size=(80, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    graph, unit = neighbourhood_space("content", None, emb, thumbs, [10, 50], IndexConfig())
    assert graph.k == 50 and np.allclose(np.linalg.norm(unit, axis=1), 1, atol=1e-5)
    ref = unit @ unit.T
    np.fill_diagonal(ref, -np.inf)
    np.testing.assert_allclose(graph.similarities[:, 9], np.sort(ref, axis=1)[:, -10], atol=1e-5)
    assert graph.neighbors[6, 0] == 7 and graph.similarities[6, 0] > 0.99  # brightness and contrast do not matter
    both, joined = neighbourhood_space("both", None, emb, thumbs, [10, 50], IndexConfig())
    mean_cosine = (ref + emb @ emb.T) / 2  # the joined space's cosine is the mean of the two
    np.fill_diagonal(mean_cosine, -np.inf)
    np.testing.assert_allclose(both.similarities[:, 0], mean_cosine.max(axis=1), atol=1e-5)
    assert neighbourhood_space("embedding", graph, emb, thumbs, [10], IndexConfig())[1] is emb
    with pytest.raises(ValueError, match="outlier_space"):
        neighbourhood_space("pixels", graph, emb, thumbs, [10], IndexConfig())


def test_the_archive_cut_off_follows_the_tail_of_its_evidence():
    """On exponential evidence the fitted tail is the true one: the cut-off leaves outlier_tail_share
    beyond it; outlier_mad_k stays the floor, and None keeps it alone."""
    from enrich_ray.analysis.outliers import cutoff

    evidence = np.random.default_rng(2).exponential(1.0, 200_000)
    cut = cutoff(evidence, AnalysisConfig(outlier_mad_k=0.01, outlier_tail_share=0.03))
    assert abs(cut - -np.log(0.03)) < 0.05 and abs((evidence > cut).mean() - 0.03) < 0.002
    assert cutoff(evidence, AnalysisConfig(outlier_mad_k=3.5, outlier_tail_share=0.1)) == 3.5
    assert cutoff(evidence * 3, AnalysisConfig(outlier_mad_k=3.5, outlier_tail_share=None)) == 3.5


def test_a_heavy_tailed_archive_raises_its_cut_off_and_keeps_a_far_group():
    """An archive whose ordinary frames spread in a heavy tail (15% of them twice as wide: odd but clean
    frames) has fewer of them flagged than at the fixed cut-off; a far group of 15 stays flagged whole."""
    rng = np.random.default_rng(4)
    clean = rng.standard_normal((1000, 16)) * np.where(rng.random(1000) < 0.15, 2.0, 1.0)[:, None]
    group = rng.standard_normal((15, 16)) * 0.05 + 12 * np.eye(16)[3]
    x = np.vstack([clean, group])
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    graph = exact_knn_graph(unit, 50)
    appearance = np.hstack([x, np.zeros((len(x), 12))])  # 28 statistics: the cloud itself, then constants
    group_id = np.r_[np.full(1000, -1), np.zeros(15, np.int64)]
    tables = {share: outlier_table(graph, unit, appearance, pd.DataFrame(index=range(len(x))), group_id,
                                   AnalysisConfig(outlier_tail_share=share)).set_index("row").sort_index()
              for share in (None, 0.03)}
    fixed, archive = tables[None]["flagged"].to_numpy(), tables[0.03]["flagged"].to_numpy()
    assert archive[1000:].all() and fixed[1000:].all()
    assert archive[:1000].mean() <= 0.02 < fixed[:1000].mean()
    assert tables[0.03]["cutoff"].iloc[0] > 3.5 == tables[None]["cutoff"].iloc[0]
