"""Are two image files one scene? A pixel judgment independent of the product's thumbnails and embeddings.

Used to score the near-duplicate pairs a planted-truth run makes between two *base* images (two
different BUSI files: the base set holds real re-scans and re-saves, so such a pair may be true).
The product groups by 16x16 thumbnails of 64 px frames and an embedding; this looks at the files at
full resolution instead:

1. both files are read grey and brought to SIDE x SIDE (BUSI's files are 256 x 256);
2. the second is registered onto the first: the translation of phase correlation, then an affine
   ECC alignment (OpenCV's findTransformECC, coarse to fine at 64, 128 and 256 px), so crops,
   resizes, anisotropic rescaling and small rotations are undone; of the identity, the
   phase-correlation translation and ECC refined from each, the warp that scores best (step 3) is
   kept (ECC can drift, e.g. to fit burned-in text on a dark frame), and a warp that scales by more than MAX_SCALE, turns by
   more than MAX_ROTATION or leaves less than MIN_OVERLAP of the frame overlapping is no alignment
   (score 0);
3. over the overlap, where either image is not black background (a black surround agrees with
   any other black surround), the registered image is matched to the first by a linear fit of
   intensity (which undoes brightness and contrast shifts; refitted without outlying pixels, such as
   burned-in text) and the two are compared by the mean
   structural similarity (SSIM, Gaussian window sigma 1.5, Wang et al. 2004) at full resolution.

Ultrasound speckle is a fingerprint of one acquisition: two frames of one scene keep it (through
JPEG, resizing, a few percent of crop or rotation, burned-in text), two scans of a lesion, or two
lesions, do not. `scene_similarity` returns that SSIM; SAME_SCENE is its threshold, calibrated on
planted near-duplicates (true) against the most similar pairs of BUSI files of different classes
(false) by `tests/benchmarks/truth_same_scene.py` (see there for the command and its figures).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from skimage.metrics import structural_similarity

SIDE = 256  # pixels a side both images are compared at
MAX_SCALE = 1.5  # an alignment scaling by more (or less than 1/MAX_SCALE) is not one scene
MAX_ROTATION = 15.0  # degrees: an alignment turning by more is not one scene
MIN_OVERLAP = 0.5  # share of the frame the registered images must overlap
BACKGROUND = 10 / 255  # intensity below which (blurred) a pixel is black surround in both images
# About the middle of the gap between the highest false and the lowest true SSIM that
# tests/benchmarks/truth_same_scene.py prints on the BUSI base (see README, "Judgments on planted truth").
SAME_SCENE = 0.74


def read_grey(path: str | Path, side: int = SIDE) -> np.ndarray:
    """The file's pixels (a DICOM file's first frame, scaled from its range), grey float32 in [0, 1],
    resized to side x side."""
    if str(path).lower().endswith(".dcm"):
        import pydicom

        raw = pydicom.dcmread(str(path)).pixel_array.astype(np.float32)
        raw = raw[0] if raw.ndim == 3 else raw
        span = float(raw.max() - raw.min())
        image = np.round(255 * (raw - raw.min()) / span if span else np.zeros_like(raw)).astype(np.uint8)
    else:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise ValueError(f"cannot read {path} as an image")
    shrink = image.shape[0] > side or image.shape[1] > side
    image = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return image.astype(np.float32) / 255.0


def register(fixed: np.ndarray, moving: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """moving warped onto fixed (both square float32 of one size), the mask of pixels it covers, and the
    2x3 affine warp (fixed's coordinates to moving's): of the identity, the phase-correlation
    translation and ECC refined from each, the one that scores best (_score)."""
    h, w = fixed.shape
    best = _candidates(fixed, moving)[0][1]
    warped = cv2.warpAffine(moving, best, (w, h), flags=cv2.INTER_LINEAR + cv2.WARP_INVERSE_MAP, borderValue=0)
    covered = cv2.warpAffine(np.ones_like(moving), best, (w, h), flags=cv2.INTER_NEAREST + cv2.WARP_INVERSE_MAP, borderValue=0)
    return warped, covered > 0.5, best


def _candidates(fixed: np.ndarray, moving: np.ndarray) -> list[tuple[dict, np.ndarray]]:
    """(score, warp) of each candidate alignment, the best first."""
    h, w = fixed.shape
    window = cv2.createHanningWindow((w, h), cv2.CV_32F)
    (dx, dy), _ = cv2.phaseCorrelate(fixed, moving, window)
    starts = [np.eye(2, 3, dtype=np.float32), np.array([[1, 0, dx], [0, 1, dy]], np.float32)]
    warps = starts + [_ecc_pyramid(fixed, moving, start) for start in starts]
    scored = [(_score(fixed, moving, warp), warp) for warp in warps]
    return sorted(scored, key=lambda c: -c[0]["ssim"])


def _ecc_pyramid(fixed: np.ndarray, moving: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Affine ECC from start, at 1/4, 1/2 and full size; start itself when it fails."""
    warp = start.copy()
    warp[:, 2] /= 4
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-5)
    for level, factor in enumerate((4, 2, 1)):
        if level:
            warp[:, 2] *= 2
        size = (fixed.shape[1] // factor, fixed.shape[0] // factor)
        f = cv2.resize(fixed, size, interpolation=cv2.INTER_AREA)
        m = cv2.resize(moving, size, interpolation=cv2.INTER_AREA)
        try:
            _, warp = cv2.findTransformECC(f, m, warp, cv2.MOTION_AFFINE, criteria, None, 5)
        except cv2.error:
            return start
    return warp


def _plausible(warp: np.ndarray) -> bool:
    linear = warp[:, :2].astype(np.float64)
    singular = np.linalg.svd(linear, compute_uv=False)
    u, _, vt = np.linalg.svd(linear)
    rotation = u @ vt  # the nearest rotation (polar decomposition)
    angle = np.degrees(abs(np.arctan2(rotation[1, 0], rotation[0, 0])))
    return bool(np.all(singular < MAX_SCALE) and np.all(singular > 1 / MAX_SCALE) and np.linalg.det(linear) > 0
                and angle <= MAX_ROTATION)


def _score(a: np.ndarray, b: np.ndarray, warp: np.ndarray) -> dict:
    """scene_similarity's figures for b warped onto a by warp (ssim 0 when the warp is no alignment)."""
    h, w = a.shape
    warped = cv2.warpAffine(b, warp, (w, h), flags=cv2.INTER_LINEAR + cv2.WARP_INVERSE_MAP, borderValue=0)
    covered = cv2.warpAffine(np.ones_like(b), warp, (w, h), flags=cv2.INTER_NEAREST + cv2.WARP_INVERSE_MAP, borderValue=0) > 0.5
    valid = cv2.erode(covered.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    lit = (cv2.GaussianBlur(a, (0, 0), 2) > BACKGROUND) | (cv2.GaussianBlur(warped, (0, 0), 2) > BACKGROUND)
    mask = valid & lit
    overlap = float(valid.mean())
    if overlap < MIN_OVERLAP or not _plausible(warp) or mask.sum() < 100:
        return {"ssim": 0.0, "overlap": overlap, "within": 0.0}
    x, y = warped[mask].astype(np.float64), a[mask].astype(np.float64)
    slope, intercept = _robust_line(x, y)
    matched = np.clip(warped * slope + intercept, 0, 1).astype(np.float32)
    _, ssim_map = structural_similarity(a, matched, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False, full=True)
    return {"ssim": float(ssim_map[mask].mean()), "overlap": overlap,
            "within": float((np.abs(matched - a)[mask] <= 0.05).mean())}


def _robust_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """y ~ slope * x + intercept by least squares, refitted twice without the pixels far off the line
    (burned-in text or calipers in one image only)."""
    keep = np.ones(len(x), bool)
    slope, intercept = 0.0, float(y.mean())
    for _ in range(3):
        if x[keep].std() <= 1e-6:
            return 0.0, float(y[keep].mean())
        slope, intercept = np.polyfit(x[keep], y[keep], 1)
        residual = np.abs(y - (slope * x + intercept))
        keep = residual <= max(3 * 1.4826 * np.median(residual[keep]), 1e-3)
    return float(slope), float(intercept)


def scene_similarity(a: np.ndarray, b: np.ndarray) -> dict:
    """How alike two grey frames (float32 [0, 1], one size) are as one scene: b registered onto a, then
    {'ssim': mean SSIM over the compared pixels (0 when no plausible alignment), 'overlap': share of
    the frame compared, 'within': share of compared pixels within 0.05 of a after the intensity fit}."""
    return _candidates(a, b)[0][0]


def same_scene_score(path_a: str | Path, path_b: str | Path) -> dict:
    """scene_similarity of two image files."""
    return scene_similarity(read_grey(path_a), read_grey(path_b))
