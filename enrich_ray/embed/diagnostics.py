"""Does an embedding carry information? Active units, effective dimension, nearest-neighbour spread.

A collapsed VAE uses a handful of its units; then every frame looks like every other
(nearest-neighbour cosines all near 1) and a ranking over it is no better than random.
These figures are computed on every training run and written beside the checkpoint.
"""
from __future__ import annotations

import numpy as np

ACTIVE_KL_NATS = 0.01  # a unit is active when its mean KL over the data exceeds this
NN_QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


def mean_kl_per_unit(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """Mean over frames of KL(q(z|x) || N(0, 1)) for each latent unit, in nats: shape (latent_dim,)."""
    mu = np.asarray(mu, dtype=np.float64)
    logvar = np.asarray(logvar, dtype=np.float64)
    return (0.5 * (mu**2 + np.exp(logvar) - 1.0 - logvar)).mean(axis=0)


def active_units(kl_unit: np.ndarray, threshold: float = ACTIVE_KL_NATS) -> int:
    """How many latent units carry more than `threshold` nats on average."""
    return int((np.asarray(kl_unit) > threshold).sum())


def participation_ratio(x: np.ndarray) -> float:
    """Effective dimension (Σλ)²/Σλ² of the covariance of the rows of x; 0 for constant data."""
    x = np.asarray(x, dtype=np.float64)
    if x.shape[0] < 2:
        return 0.0
    xc = x - x.mean(axis=0)
    cov = xc.T @ xc / (x.shape[0] - 1)
    frob2 = float((cov * cov).sum())  # Σλ² for a symmetric matrix
    return float(np.trace(cov) ** 2 / frob2) if frob2 > 0 else 0.0


def nn_similarity(unit: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Each row's largest cosine to any other row (rows are unit vectors): shape (N,)."""
    unit = np.asarray(unit, dtype=np.float32)
    n = unit.shape[0]
    out = np.full(n, np.nan, dtype=np.float64)
    if n < 2:
        return out
    for start in range(0, n, chunk):
        sims = unit[start : start + chunk] @ unit.T
        rows = np.arange(sims.shape[0])
        sims[rows, start + rows] = -np.inf
        out[start : start + chunk] = sims.max(axis=1)
    return out


def embedding_diagnostics(unit: np.ndarray) -> dict:
    """Participation ratio and nearest-neighbour cosine quantiles of unit embeddings."""
    nn = nn_similarity(unit)
    finite = nn[np.isfinite(nn)]
    quantiles = {f"q{int(q * 100):02d}": float(np.quantile(finite, q)) for q in NN_QUANTILES} if finite.size else {}
    return {
        "participation_ratio": participation_ratio(unit),
        "nn_similarity": quantiles,
        "nn_share_above_0.9": float((finite > 0.9).mean()) if finite.size else 0.0,
    }


HEALTH_SAMPLE = 300  # frames sampled (seeded) for the content check of every run
DISTINCT_PIXEL_CORRELATION = 0.98  # frames whose pixels correlate at least this much count as one
CONTENT_SIDE = 16  # the content check compares frames area-averaged to this many pixels a side


def health_sample_rows(n: int, sample: int = HEALTH_SAMPLE, seed: int = 0) -> np.ndarray:
    """The seeded, ascending rows whose embeddings and pixels `embedding_health` compares."""
    return np.sort(np.random.default_rng(seed).choice(n, min(n, sample), replace=False))


def _standardised(pixels: np.ndarray) -> np.ndarray:
    """Each frame's pixels less their mean, over their norm: dot products are pixel correlations
    (a constant frame stays zero)."""
    flat = np.asarray(pixels, dtype=np.float64).reshape(len(pixels), -1)
    flat = flat - flat.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    return np.divide(flat, norms, out=np.zeros_like(flat), where=norms > 1e-12)


def _pixel_directions(pixels: np.ndarray, side: int = CONTENT_SIDE) -> np.ndarray:
    """The raw-pixel baseline of the content check: frames area-averaged to side x side, the
    sample's mean image removed, unit rows (zero for a frame equal to the mean)."""
    frames = np.asarray(pixels, dtype=np.float64)
    s = frames.shape[1]
    if s % side == 0 and frames.shape[2] == s:
        frames = frames.reshape(len(frames), side, s // side, side, s // side).mean(axis=(2, 4))
    flat = frames.reshape(len(frames), -1)
    flat = flat - flat.mean(axis=0)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    return np.divide(flat, norms, out=np.zeros_like(flat), where=norms > 1e-12)


def distinct_rows(pixels: np.ndarray, threshold: float = DISTINCT_PIXEL_CORRELATION) -> np.ndarray:
    """Indices of the frames left after dropping near-identical ones: in order, a frame is kept
    unless its pixel correlation with a kept frame reaches `threshold` (constant frames: one kept)."""
    z = _standardised(pixels)
    corr = z @ z.T
    constant = ~z.any(axis=1)
    kept: list[int] = []
    seen_constant = False
    for i in range(len(z)):
        if constant[i]:
            if not seen_constant:
                kept.append(i)
                seen_constant = True
        elif not kept or corr[i, kept].max() < threshold:
            kept.append(i)
    return np.asarray(kept, dtype=np.int64)


def _rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); 0 when either side is constant."""
    from scipy.stats import rankdata

    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else 0.0


def embedding_health(embeddings: np.ndarray, pixels: np.ndarray) -> dict:
    """Does the embedding track image content? Figures on the distinct frames of a sample.

    embeddings: (m, d) unit rows of the sampled frames; pixels: their decoded frames (m, s, s).
    Near-identical frames (pixel correlation >= DISTINCT_PIXEL_CORRELATION) are dropped first, so
    an archive of many copies is judged on what differs. `content_correlation` is the rank
    correlation, over every pair of distinct frames, of embedding cosine with the raw-pixel
    cosine (frames at CONTENT_SIDE² pixels, the sample's mean image removed):
    near 0 when similarities are unrelated to content (a collapsed encoder's output is noise or
    constant), clearly positive for an embedding that carries the images.
    """
    emb = np.asarray(embeddings, dtype=np.float64)
    if len(emb) != len(pixels):
        raise ValueError(f"embedding_health: {len(emb)} embeddings but {len(pixels)} frames of pixels")
    keep = distinct_rows(pixels)
    out: dict = {"health_frames_sampled": int(len(emb)), "distinct_frames": int(keep.size)}
    if keep.size < 3:
        return out
    e, z = emb[keep], _pixel_directions(np.asarray(pixels)[keep])
    upper = np.triu_indices(keep.size, k=1)
    # Cosines rounded to 1e-9 first: a constant encoder's equal cosines differ in their last bits by
    # the BLAS kernel that computed them, and ranking that noise would make up a correlation.
    out["content_correlation"] = round(_rank_correlation(np.round(e @ e.T, 9)[upper], np.round(z @ z.T, 9)[upper]), 4)
    out["participation_ratio_distinct"] = round(participation_ratio(e), 3)
    out["pixel_participation_ratio_distinct"] = round(participation_ratio(z), 3)
    return out
