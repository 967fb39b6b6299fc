"""Outliers and foreign frames: every frame ranked by how unlike the archive it is, with a flag and
the reason a person can check.

`outlier_table` reads four kinds of evidence, each turned into a robust z (how many robust standard
deviations, MAD x 1.4826, a frame lies beyond the archive's median; the mean absolute deviation x
1.2533 stands in when more than half the frames share one value):

- neighbourhood: in the space AnalysisConfig.outlier_space names (`neighbourhood_space`; default
  'both': the mean of the cosine of the frames' standardised 16x16 thumbnails, what a person sees,
  and of the run's embedding; 'content' or 'embedding' alone), the similarity to the k-th nearest other frame for every k in
  AnalysisConfig.outlier_scales (default 10, 50). A lone foreign frame has far neighbours at
  every scale; a bad series of 10-30 near-identical frames has close 10th neighbours (each other)
  but a far 50th: the largest scale must exceed the largest foreign group to be found. The 1st
  neighbour is not read by default: in an archive full of near-twins its spread is tiny, so the robust
  z of an ordinary frame is large (`tests/benchmarks/bench_truth.py --base busi --set
  'analysis.outlier_scales=[1,10,50]'` counts the clean frames it then flags).
- appearance: 28 statistics of the decoded 64x64 frame (mean, spread, dark and bright share, edge
  and texture energy, top/bottom balance, five intensity quantiles, a 4x4 layout of block means),
  each robustly standardised; the evidence is the log distance to the k-th nearest frame in that
  space, k the largest scale (a density at a scale larger than a group).
- header: a known value of modality, body_part, photometric or the shape rows x cols held by fewer
  than AnalysisConfig.outlier_rare_share of the frames, other than a value most known frames hold,
  in a column whose common or missing values cover at least 1 - 2 x that share of the archive (an
  archive of a hundred shapes has no rare shape; a PNG's missing modality is unknown, not rare).
  A rare modality or body part (what the frame shows) and colour (colorfulness above
  AnalysisConfig.outlier_colour_min, when colour frames are rare) count as STRONG x outlier_mad_k;
  a rare photometric or shape (how it was stored: a re-save, a resize or a crop changes them) only
  adds SUPPORT x outlier_mad_k to the neighbourhood and appearance evidence.
- blank: a constant frame (is_constant) is always flagged.

The archive's cut-off (`cutoff`, the table's `cutoff` column): the image evidence, max(neighbourhood
z, appearance z), is beyond it when above outlier_mad_k (default 3.5) robust standard deviations and
above the point where an exponential tail fitted to the archive's own evidence (its median and 90th
percentile) leaves AnalysisConfig.outlier_tail_share (default 3%) of the frames. An archive whose
ordinary frames spread in a heavy tail (BUSI: bright annotations, odd layouts) raises it; a tight
one keeps outlier_mad_k. On five planted BUSI archives the fixed cut-off flagged up to 3.5% of the
clean frames, this one at most 1.2%, every foreign frame still flagged (README, "Judgments on
planted truth").

score = outlier_mad_k x max(neighbourhood z, appearance z) / cut-off + support, or STRONG x
outlier_mad_k for a rare modality, body part, colour or blank frame if larger (ties: the sum of
neighbourhood and appearance z, then row); rank 1 has the highest score. Beyond the cut-off
(`beyond_cutoff`): score above outlier_mad_k, i.e. some evidence lies beyond the archive's cut-off,
or a strong header fact. Flagged: beyond the cut-off and
among the AnalysisConfig.outlier_max_share (default 5%) highest scores: foreign frames are a
minority, and an archive where more frames than that look unlike the rest (a grab-bag of
modalities) has no majority for them to be foreign to. A group of near twins (duplicate_group >= 0 shared) takes
the lower median of its members' scores, so it is flagged whole, exactly when more than half of
its members are flagged on their own evidence, or not at all; a blank frame stays flagged.
`reason` says, for each flagged frame, which evidence did it.

`outlier_table_of` judges a subset of the frames among themselves: the nightly increment, tonight's
frames with a sample of earlier ones as the archive they must look unlike.
"""
from __future__ import annotations

import faiss
import numpy as np
import pandas as pd

from enrich_ray.analysis.duplicates import content_rows
from enrich_ray.config import AnalysisConfig, IndexConfig, check_analysis
from enrich_ray.index.knn import EXACT_MAX_ROWS, KnnGraph, knn_graph, unit_rows

MAD_TO_SD = 1.4826
MEAN_AD_TO_SD = 1.2533
NO_NEIGHBOUR = -1.0  # the similarity counted for a frame whose row holds no neighbour at all
STRONG = 2.0  # a rare modality or body part, colour or a blank frame counts as this many cut-offs
SUPPORT = 0.5  # a rare shape or photometric adds this many cut-offs to the image's own evidence
STRONG_COLUMNS = ("modality", "body_part")  # what the frame shows
SUPPORT_COLUMNS = ("photometric",)  # how it was stored: a re-save or a resize changes these, plus the shape
SEARCH_BLOCK = 65_536  # query frames per faiss search in the appearance space
APPEARANCE_NAMES = (
    "mean", "spread", "dark share", "bright share", "edges", "texture", "top/bottom balance",
    *(f"intensity p{q}" for q in (10, 25, 50, 75, 90)), *(f"layout block {i}" for i in range(16)),
)


def _spread(values: np.ndarray, median: np.ndarray | float, axis: int | None = None) -> np.ndarray:
    """Robust standard deviation: MAD x 1.4826, the mean absolute deviation x 1.2533 where the MAD is 0."""
    dev = np.abs(values - median)
    mad = MAD_TO_SD * np.median(dev, axis=axis)
    return np.where(mad > 0, mad, MEAN_AD_TO_SD * np.mean(dev, axis=axis))


def robust_z(values: np.ndarray) -> np.ndarray:
    """(value - median) / robust standard deviation, per column of a 2-D array; 0 where the spread is 0."""
    x = np.asarray(values, dtype=np.float64)
    if x.shape[0] == 0:
        return x.copy()
    median = np.median(x, axis=0)
    spread = _spread(x, median, axis=0)
    return np.where(spread > 0, (x - median) / np.where(spread > 0, spread, 1.0), 0.0)


def neighbour_similarities(graph: KnnGraph, embeddings: np.ndarray, scales: list[int]) -> np.ndarray:
    """(N, len(scales)): each frame's similarity to its k-th nearest other frame for every k in scales
    (k capped at N - 1; -1 for a frame alone). Reads the graph when it holds enough neighbours, else
    builds one of the largest scale (exact up to the index's exact limit: O(N x k) memory)."""
    n = len(graph)
    kmax = min(max(scales), n - 1)
    if kmax < 1:
        return np.full((n, len(scales)), NO_NEIGHBOUR)
    sims = graph.similarities if graph.k >= kmax else knn_graph(embeddings, kmax, IndexConfig()).similarities
    cols = np.array([min(k, kmax) - 1 for k in scales])
    out = sims[:, cols].astype(np.float64)
    return np.where(np.isfinite(out), out, NO_NEIGHBOUR)


def neighbourhood_space(space: str, graph: KnnGraph, embeddings: np.ndarray, thumbnails: np.ndarray,
                        scales: list[int], index: IndexConfig) -> tuple[KnnGraph, np.ndarray]:
    """The kNN graph and unit rows outlier_table reads neighbourhoods in (AnalysisConfig.outlier_space):
    'embedding' the run's own; 'content' the frames' standardised thumbnails
    (analysis.duplicates.thumbnails: what a person sees, whatever the embedder); 'both' the two joined,
    [content, embedding] / sqrt(2), whose cosine is the mean of the two cosines, so a frame is far only
    when it is far by content and by embedding. A blank frame (a zero thumbnail) stands at one fixed
    content direction, like every other blank frame."""
    if space == "embedding":
        return graph, embeddings
    if space not in ("content", "both"):
        raise ValueError(f"analysis.outlier_space must be content, embedding or both, got {space!r}")
    x = content_rows(thumbnails)
    if space == "both":
        x = np.hstack([x, unit_rows(embeddings)]) / np.float32(np.sqrt(2))
    k = min(max(scales), len(x) - 1)
    empty = KnnGraph(np.zeros((len(x), 0), np.int64), np.zeros((len(x), 0), np.float32))
    return (knn_graph(x, k, index) if k > 0 else empty), x


def appearance_features(pixels: np.ndarray) -> np.ndarray:
    """(N, 28) statistics of (N, s*s) or (N, s, s) frames in [0, 1], named by APPEARANCE_NAMES."""
    n = len(pixels)
    side = int(round(np.sqrt(np.asarray(pixels[0]).size))) if n else 4
    f = np.asarray(pixels, dtype=np.float32).reshape(n, side, side)
    spread = f.std(axis=(1, 2))
    edges = (np.abs(np.diff(f, axis=2)).mean(axis=(1, 2)) + np.abs(np.diff(f, axis=1)).mean(axis=(1, 2))) / 2
    lap = np.abs(4 * f[:, 1:-1, 1:-1] - f[:, :-2, 1:-1] - f[:, 2:, 1:-1] - f[:, 1:-1, :-2] - f[:, 1:-1, 2:]).mean(axis=(1, 2))
    half = side // 2
    balance = f[:, :half].mean(axis=(1, 2)) - f[:, half:].mean(axis=(1, 2))
    quantiles = np.quantile(f.reshape(n, -1), [0.1, 0.25, 0.5, 0.75, 0.9], axis=1).T
    b = side // 4
    layout = f[:, : 4 * b, : 4 * b].reshape(n, 4, b, 4, b).mean(axis=(2, 4)).reshape(n, 16)
    base = np.stack([f.mean(axis=(1, 2)), spread, (f < 0.05).mean(axis=(1, 2)), (f > 0.95).mean(axis=(1, 2)),
                     edges, lap / (spread + 1e-3), balance], axis=1)
    return np.hstack([base, quantiles, layout]).astype(np.float64)


def kth_distance(points: np.ndarray, k: int) -> np.ndarray:
    """Euclidean distance of every point to its k-th nearest other point (exact faiss search up to
    EXACT_MAX_ROWS points, HNSW beyond; searched in blocks, so memory stays O(N x k))."""
    x = np.ascontiguousarray(points, dtype=np.float32)
    n, d = x.shape
    k = min(k, n - 1)
    if k < 1:
        return np.zeros(n)
    index = faiss.IndexFlatL2(d) if n <= EXACT_MAX_ROWS else faiss.IndexHNSWFlat(d, 32)
    index.add(x)
    out = np.empty(n)
    for start in range(0, n, SEARCH_BLOCK):
        dist, _ = index.search(x[start : start + SEARCH_BLOCK], k + 1)  # the frame itself comes first
        out[start : start + SEARCH_BLOCK] = np.sqrt(np.maximum(dist[:, k], 0.0))
    return out


def _rare_values(values: pd.Series, share: float) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: whether its value is rare (see the module docstring) and that value's count. A missing
    value is unknown and never rare; nor is a value most known frames hold (US DICOM among US PNGs)."""
    known = values.notna().to_numpy()
    if not known.any():
        return np.zeros(len(values), bool), np.zeros(len(values), np.int64)
    codes, _ = pd.factorize(values)  # -1 where missing
    per_value = np.bincount(codes[known])
    counts = np.where(known, per_value[np.maximum(codes, 0)], 0)
    majority = np.flatnonzero(per_value > known.sum() / 2)
    common = ~known | (counts >= share * len(values)) | np.isin(codes, majority)
    if common.mean() < 1 - 2 * share:  # too diverse a column: nothing in it is rare
        return np.zeros(len(values), bool), counts
    return ~common, counts


def _header_evidence(header: pd.DataFrame, n: int, cfg: AnalysisConfig) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
    """Per frame: whether a strong fact (modality, body part, colour) is rare, whether a supporting
    one (photometric, shape) is, and the reasons."""
    strong, support = np.zeros(n, bool), np.zeros(n, bool)
    reasons: list[list[str]] = [[] for _ in range(n)]
    columns = {c: header[c].astype(object).where(header[c].notna(), None)
               for c in (*STRONG_COLUMNS, *SUPPORT_COLUMNS) if c in header}
    if "rows" in header and "cols" in header:
        shape = [None if pd.isna(r) or pd.isna(c) else f"{int(r)}x{int(c)}" for r, c in zip(header["rows"], header["cols"])]
        columns["shape"] = pd.Series(shape, dtype=object)
    for name, values in columns.items():
        is_rare, counts = _rare_values(values.reset_index(drop=True), cfg.outlier_rare_share)
        for i in np.flatnonzero(is_rare):
            reasons[i].append(f"{name} {values.iloc[i]} rare ({counts[i]} of {n} frames)")
        if name in STRONG_COLUMNS:
            strong |= is_rare
        else:
            support |= is_rare
    if "colorfulness" in header:
        colour = header["colorfulness"].fillna(0).to_numpy(np.float64) > cfg.outlier_colour_min
        if 0 < colour.sum() < cfg.outlier_rare_share * n:
            for i in np.flatnonzero(colour):
                reasons[i].append(f"colour image ({int(colour.sum())} of {n} frames in colour)")
            strong |= colour
    return strong, support, reasons


def outlier_table(
    graph: KnnGraph,
    embeddings: np.ndarray,
    appearance: np.ndarray,
    header: pd.DataFrame,
    duplicate_group: np.ndarray | None,
    cfg: AnalysisConfig,
) -> pd.DataFrame:
    """Every frame ranked by how foreign it is to the archive (rank 1 = most foreign; see the module docstring).

    graph: the run's kNN graph; embeddings: its (N, d) vectors; appearance: `appearance_features` of
    the decoded frames (N, 28; the caller computes them batch by batch, so the pixels never sit in
    memory whole); header: N rows in graph order with any of modality, photometric, body_part, rows, cols,
    colorfulness, is_constant (absent columns are not evidence); duplicate_group: the near-twin group
    id per row, -1 outside a group (None: no groups).
    Columns: rank, row, score, nn_similarity, neighbour_z, appearance_z, header_rare, is_constant,
    flagged, reason ('' when not flagged).
    """
    check_analysis(cfg)
    n = len(graph)
    if len(embeddings) != n or len(appearance) != n or len(header) != n:
        raise ValueError(f"outlier_table: graph ({n}), embeddings ({len(embeddings)}), appearance ({len(appearance)}) "
                         f"and header ({len(header)}) must have one row per frame")
    header = header.reset_index(drop=True)
    scales = sorted(set(cfg.outlier_scales))
    sims = neighbour_similarities(graph, embeddings, scales)
    neighbour_z = robust_z(-sims) if n else np.zeros((0, len(scales)))
    appearance = robust_z(np.asarray(appearance, np.float64)) if n else np.zeros((0, len(APPEARANCE_NAMES)))
    appearance_z = robust_z(np.log(kth_distance(np.clip(appearance, -50, 50), scales[-1]) + 1e-6)[:, None])[:, 0] if n else np.zeros(0)
    rare, support, reasons = _header_evidence(header, n, cfg)
    blank = header["is_constant"].fillna(False).to_numpy(bool) if "is_constant" in header else np.zeros(n, bool)

    best_neighbour = neighbour_z.max(axis=1, initial=0.0)
    mad_k = cfg.outlier_mad_k
    cut = cutoff(np.maximum(best_neighbour, appearance_z), cfg)
    # the image evidence in units of the archive's cut-off times mad_k: beyond mad_k exactly where beyond the cut-off
    neighbour_e, appearance_e = neighbour_z * (mad_k / cut), appearance_z * (mad_k / cut)
    strong = STRONG * mad_k
    bonus = np.where(support, SUPPORT * mad_k, 0.0)
    content = np.maximum(neighbour_e.max(axis=1, initial=0.0), appearance_e) + bonus
    score = np.maximum(content, np.where(rare | blank, strong, 0.0)) if n else np.zeros(0)
    tie = best_neighbour + appearance_z
    medians = np.median(sims, axis=0) if n else np.zeros(len(scales))
    told = mad_k - bonus  # the content evidence worth telling: beyond the cut-off, less any support
    for i in np.flatnonzero((score > mad_k) | blank):  # only these have evidence to tell
        if blank[i]:
            reasons[i].insert(0, "blank frame")
        j = int(np.argmax(neighbour_e[i]))
        if neighbour_e[i, j] > told[i]:
            k = scales[j]
            what = "no close match" if k == 1 else f"far from its {k} nearest frames"
            reasons[i].append(f"{what} (similarity {sims[i, j]:.2f} at neighbour {k}, archive median {medians[j]:.2f}; "
                              f"z {neighbour_z[i, j]:.1f}, cut-off {cut:.1f})")
        if appearance_e[i] > told[i]:
            top = np.argsort(-np.abs(appearance[i]))[:2]
            reasons[i].append(f"image statistics unlike the archive (z {appearance_z[i]:.1f}, cut-off {cut:.1f}; "
                              f"{', '.join(APPEARANCE_NAMES[t] for t in top)})")
    own_flag = score > mad_k
    reason = np.array(["; ".join(r) for r in reasons], dtype=object)
    score, beyond, reason = _by_group(score, own_flag, reason, duplicate_group, mad_k)
    flagged = blank | _capped(beyond & ~blank, score, cfg.outlier_max_share)
    reason = np.where(flagged, reason, "")

    rows = np.arange(n, dtype=np.int64)
    order = np.lexsort((rows, -tie, -score))
    return pd.DataFrame(
        {
            "rank": np.arange(1, n + 1, dtype=np.int64),
            "row": rows[order],
            "score": score[order].astype(np.float32),
            "nn_similarity": sims[order, 0].astype(np.float32) if scales[0] == 1 else graph.nn_similarity[order],
            "neighbour_z": best_neighbour[order].astype(np.float32),
            "appearance_z": appearance_z[order].astype(np.float32),
            "header_rare": rare[order],
            "is_constant": blank[order],
            "beyond_cutoff": (beyond | blank)[order],
            "flagged": flagged[order],
            "reason": reason[order].astype(str),
            "cutoff": np.full(n, cut, np.float32),
        }
    )


def cutoff(evidence: np.ndarray, cfg: AnalysisConfig) -> float:
    """The robust z beyond which a frame's image evidence (the larger of its neighbourhood and appearance
    z) is foreign to this archive: the larger of outlier_mad_k and the point where an exponential tail,
    fitted to the evidence's median and 90th percentile, leaves outlier_tail_share of the frames (an
    archive whose ordinary frames spread wide, a heavy tail, raises it; None keeps outlier_mad_k)."""
    if cfg.outlier_tail_share is None or len(evidence) < 2:
        return float(cfg.outlier_mad_k)
    median, p90 = np.quantile(evidence, [0.5, 0.9])
    tail_scale = (p90 - median) / np.log(5.0)  # survival 0.5 x exp(-(x - median) / scale): 0.5 at the median, 0.1 at p90
    return float(max(cfg.outlier_mad_k, median + tail_scale * np.log(0.5 / cfg.outlier_tail_share)))


def _capped(beyond: np.ndarray, score: np.ndarray, max_share: float) -> np.ndarray:
    """The frames beyond the cut-off, less all but the max_share x N highest-scoring: in an archive where
    more look unlike the rest there is no majority to be foreign to (ties at the cap stay, so a group
    of near twins, which shares one score, stays whole)."""
    cap = int(max_share * len(score))
    if beyond.sum() <= cap:
        return beyond
    if cap == 0:
        return np.zeros_like(beyond)
    least = np.sort(score[beyond])[::-1][cap - 1]
    return beyond & (score >= least)


def _by_group(
    score: np.ndarray, flagged: np.ndarray, reason: np.ndarray, group: np.ndarray | None, mad_k: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Near-twin groups take their members' lower median score (above mad_k exactly when more than half
    of the members are); flagged whole when it is above mad_k, with the reason of their highest-scoring member."""
    score, flagged, reason = score.copy(), flagged.copy(), reason.copy()
    if group is None or not len(score):
        return score, flagged, reason
    group = np.asarray(group, dtype=np.int64)
    if group.shape != score.shape:
        raise ValueError(f"duplicate_group must hold one group id per frame ({len(score)}), got shape {group.shape}")
    members = np.flatnonzero(group >= 0)
    by_group = pd.Series(score[members], index=members).groupby(group[members])
    median = by_group.transform(lambda v: np.quantile(v, 0.5, method="lower")).to_numpy()
    top = by_group.transform("idxmax").to_numpy()
    size = by_group.transform("size").to_numpy()
    score[members] = median
    flagged[members] = median > mad_k
    hit = (median > mad_k) & (size > 1)  # a family of one frame row (byte copies share a row) keeps its own reason
    reason[members[hit]] = [f"near-twin group of {m}: {reason[t]}" for m, t in zip(size[hit], top[hit])]
    return score, flagged, reason


def outlier_table_of(rows: np.ndarray, embeddings: np.ndarray, thumbnails: np.ndarray, appearance: np.ndarray,
                     header: pd.DataFrame, duplicate_group: np.ndarray, cfg: AnalysisConfig,
                     index: IndexConfig) -> pd.DataFrame:
    """outlier_table over the frames `rows` of the full arrays alone, as curate judges an archive: their kNN
    graph built among them, neighbourhoods in cfg.outlier_space; `row` gives positions in the full arrays."""
    rows = np.asarray(rows, dtype=np.int64)
    x = np.ascontiguousarray(embeddings[rows], dtype=np.float32)
    k = min(index.k, len(rows) - 1)
    graph = knn_graph(x, k, index) if k > 0 else KnnGraph(np.zeros((len(rows), 0), np.int64), np.zeros((len(rows), 0), np.float32))
    space = neighbourhood_space(cfg.outlier_space, graph, x, np.asarray(thumbnails)[rows], cfg.outlier_scales, index)
    table = outlier_table(*space, np.asarray(appearance, np.float64)[rows], header.iloc[rows].reset_index(drop=True),
                          np.asarray(duplicate_group)[rows], cfg)
    table["row"] = rows[table["row"].to_numpy()]
    return table


def outliers_among_reference(first_row: int, embeddings: np.ndarray, evidence: dict, duplicate_group: np.ndarray,
                             cfg: AnalysisConfig, index: IndexConfig, reference: int, seed: int) -> pd.DataFrame:
    """The frames of row first_row on (a night's), ranked by how foreign they are among themselves and a
    seeded sample of `reference` earlier rows whose evidence is known (analysis.evidence): the archive they
    must look unlike, at a cost that does not grow with the history; `rank` counts the later rows alone."""
    n = len(embeddings)
    known = np.flatnonzero(np.isfinite(evidence["thumbnail"][:first_row].astype(np.float32)).all(axis=1))
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(known, min(reference, len(known)), replace=False)) if len(known) else known
    rows = np.concatenate([sample, np.arange(first_row, n)])
    table = outlier_table_of(rows, embeddings, evidence["thumbnail"], evidence["appearance"], evidence["header"],
                             duplicate_group, cfg, index)
    table = table[table["row"] >= first_row].reset_index(drop=True)
    table["rank"] = np.arange(1, len(table) + 1)
    return table
