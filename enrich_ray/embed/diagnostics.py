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
