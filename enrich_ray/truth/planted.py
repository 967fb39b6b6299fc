"""Planted truth: an archive folder built from real (or procedurally generated) images with known relations.

`plant_archive` writes image files that `enrich-ray pack` reads, plus `truth.csv`, one row per
frame of every file, saying what each frame is. What is planted, and why:

- base: the main modality. "busi" (breast ultrasound PNGs from ../shared/data/busi_256),
  "pneumoniamnist" (chest X-ray, 28 x 28, written as PNG) or "synthetic": ultrasound-like grey
  frames made in numpy (speckle in a fan, a few cysts and bright blobs, varied per image), so that
  tests run on a fresh clone. A share of synthetic bases is written as US DICOM.
- byte_copy: the same bytes under another name. Pack keys images by content hash, so these are
  one archive row with several source_uris; the product must still list them as exact.
- pixel_copy: another container or header with the same decoded pixels: a PNG re-saved at other
  compression levels and/or with a text chunk; a DICOM re-saved with another transfer syntax
  (implicit VR, RLE lossless, deflate). Checked here with the project's own decoder: every pixel
  copy decodes to exactly its original's frame. Exact duplicates must find these and only these.
- near_dup: what a person still calls the same image: JPEG re-encodes at several qualities,
  resizes, a few percent of crop, brightness and contrast shifts, small rotations, burned-in
  text (column `transform`). Checked: none decodes to its original's pixels.
- foreign / blank: frames that do not belong, at `foreign_share` of all frames, alone and in
  groups of 10-30 (one bad series is a group, column `foreign_group`): CT and MR DICOM slices
  (pydicom's CT_small / MR_small, shifted and re-windowed into a series), photographs and faces
  (skimage.data; lfw_subset faces as a group), synthetic test patterns (a phantom series; single
  test cards of another design, so no single one is a near twin of a phantom slice), and
  blank (constant) frames. An outlier detector must find the groups as well as the singletons.
- cine: a multi-frame US DICOM whose frames are small consecutive shifts of one base image:
  frames that are near-duplicates of each other and of their original.

Truth columns (TRUTH_COLUMNS): path (relative to out, '/'-separated), frame_index, role (ROLES),
original (path of the original for copies, near-dups and cine frames; '' otherwise), transform,
foreign_group (int, -1 when not in a group), foreign_kind ('' for clean frames), family (the
source the pixels came from: frames of one family are planted relations), image_id (SHA-256 of
the file's bytes, as pack keys it), format, pixel_hash (SHA-256 of the decoded frame under the
default DecodeConfig: equal pixel_hash means identical decoded pixels, planted or not).
Deterministic for a seed.
"""
from __future__ import annotations

import hashlib
import io
import re
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa

ROLES = ("base", "byte_copy", "pixel_copy", "near_dup", "foreign", "blank", "cine")
TRUTH_COLUMNS = [
    "path", "frame_index", "role", "original", "transform", "foreign_group", "foreign_kind",
    "family", "image_id", "format", "pixel_hash",
]
BASES = ("synthetic", "busi", "pneumoniamnist")
DEFAULT_N_BASE = {"synthetic": 200, "busi": 780, "pneumoniamnist": 800}
DATA_ROOT = Path(__file__).resolve().parents[3] / "shared" / "data"  # ../shared/data beside the repository
NEAR_TRANSFORMS = (
    "jpeg_q90", "jpeg_q70", "jpeg_q50", "jpeg_q30", "resize_0.5", "resize_0.75", "resize_1.25",
    "crop_3pct", "crop_5pct", "brightness_+8pct", "contrast_0.85", "rotate_3deg", "rotate_-5deg", "text",
)
GROUP_SIZE = (10, 30)
GROUP_KINDS = ("ct_series", "phantom_series", "faces", "mr_series")
SINGLE_KINDS = ("photo", "ct", "blank", "pattern", "photo", "mr", "photo")
# skimage.data.cat() is chelsea(): one picture under two names would be two foreign families alike
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "clock", "moon", "page",
          "hubble_deep_field", "immunohistochemistry", "brick", "text")
US_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.6.1"  # Ultrasound Image Storage
US_MULTIFRAME_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.3.1"  # Ultrasound Multi-frame Image Storage
SYNTHETIC_DICOM_SHARE = 0.2


def plant_archive(
    out: Path,
    base: str = "synthetic",
    n_base: int | None = None,
    seed: int = 0,
    foreign_share: float = 0.03,
    byte_copy_share: float = 0.03,
    pixel_copy_share: float = 0.03,
    near_dup_share: float = 0.10,
    cine_clips: int | None = None,
    cine_frames: int = 8,
    data_root: Path | None = None,
) -> pd.DataFrame:
    """Write a planted archive folder under `out` (image files and truth.csv); returns the truth table.

    Shares of copies and near-dups are of n_base; foreign_share is of all frames written.
    cine_clips defaults to one clip per 150 base frames (at least one).
    """
    if base not in BASES:
        raise ValueError(f"base must be one of {', '.join(BASES)}, got {base!r}")
    if not 0 <= foreign_share < 0.5:
        raise ValueError(f"foreign_share must be in [0, 0.5), got {foreign_share}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"out {out} is not empty: a planted archive needs a folder of its own (pack reads all of it)")
    rng = np.random.default_rng(seed)
    n_base = DEFAULT_N_BASE[base] if n_base is None else n_base
    planter = _Planter(out)
    bases = _load_bases(base, n_base, rng, Path(data_root) if data_root else DATA_ROOT)
    for b in bases:
        planter.add(b["path"], b["data"], role="base", family=b["path"])

    raster = [b for b in bases if b["format"] == "png"]
    n_copy = int(round(byte_copy_share * len(bases)))
    for j, i in enumerate(rng.choice(len(bases), size=min(n_copy, len(bases)), replace=False)):
        b = bases[i]
        planter.add(f"copies/byte/{Path(b['path']).stem}_copy{j}{Path(b['path']).suffix}", b["data"], role="byte_copy",
                    original=b["path"], family=b["path"], transform="same bytes")
    n_pix = int(round(pixel_copy_share * len(bases)))
    made: dict[str, int] = {}  # pixel copies so far per format: each format cycles through its re-saves
    for j, i in enumerate(rng.choice(len(bases), size=min(n_pix, len(bases)), replace=False)):
        b = bases[i]
        made[b["format"]] = made.get(b["format"], -1) + 1
        data, how, ext = _pixel_copy(b, made[b["format"]])
        planter.add(f"copies/pixel/{Path(b['path']).stem}_resave{j}{ext}", data, role="pixel_copy",
                    original=b["path"], family=b["path"], transform=how)
    n_near = int(round(near_dup_share * len(bases)))
    for j, i in enumerate(rng.choice(len(raster), size=min(n_near, len(raster)), replace=len(raster) < n_near)):
        b = raster[i]
        how = NEAR_TRANSFORMS[j % len(NEAR_TRANSFORMS)]
        data, ext = _near_dup(b["grey"], how, rng)
        planter.add(f"near/{Path(b['path']).stem}_{j}_{how}{ext}", data, role="near_dup", original=b["path"],
                    family=b["path"], transform=how)
    clips = max(1, len(bases) // 150) if cine_clips is None else cine_clips
    for j, i in enumerate(rng.choice(len(raster), size=min(clips, len(raster)), replace=False)):
        b = raster[i]
        step = float(rng.uniform(0.6, 1.4))
        frames = np.stack([_moved(b["grey"], (k + 1) * step) for k in range(cine_frames)])
        data = _dicom(frames, "US", US_MULTIFRAME_SOP_CLASS, f"cine{seed}-{j}", window=(128.0, 256.0))
        planter.add(f"cine/{Path(b['path']).stem}_cine{j}.dcm", data, role="cine", original=b["path"], family=b["path"],
                    transform=f"content moves {step:.2f} px a frame", frames=cine_frames)

    clean = planter.frame_count()
    n_foreign = int(round(foreign_share * clean / (1.0 - foreign_share)))
    _plant_foreign(planter, n_foreign, rng, seed)
    truth = planter.truth()
    _check(truth)
    truth.to_csv(out / "truth.csv", index=False)
    return truth


def read_truth(path: Path) -> pd.DataFrame:
    """A truth.csv written by plant_archive (a file or the archive folder), with its column types."""
    path = Path(path)
    path = path / "truth.csv" if path.is_dir() else path
    truth = pd.read_csv(path, keep_default_na=False, dtype=str)
    return truth.astype({"frame_index": np.int64, "foreign_group": np.int64})[TRUTH_COLUMNS]


class _Planter:
    """Writes files under the output folder and collects one truth row per frame."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.rows: list[dict] = []
        self.files: dict[str, bytes] = {}

    def add(self, path: str, data: bytes, role: str, family: str, original: str = "", transform: str = "",
            foreign_group: int = -1, foreign_kind: str = "", frames: int = 1) -> None:
        if path in self.files:
            raise RuntimeError(f"planted two files at {path}")
        target = self.out / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        self.files[path] = data
        fmt = {".png": "png", ".jpg": "jpeg", ".dcm": "dicom"}[Path(path).suffix]
        for k in range(frames):
            self.rows.append({"path": path, "frame_index": k, "role": role, "original": original, "transform": transform,
                              "foreign_group": foreign_group, "foreign_kind": foreign_kind, "family": family,
                              "image_id": hashlib.sha256(data).hexdigest(), "format": fmt})

    def frame_count(self) -> int:
        return len(self.rows)

    def truth(self) -> pd.DataFrame:
        truth = pd.DataFrame(self.rows)
        truth["pixel_hash"] = _pixel_hashes(truth, self.files)
        return truth[TRUTH_COLUMNS].sort_values(["path", "frame_index"], kind="stable").reset_index(drop=True)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")


def _load_bases(base: str, n: int, rng: np.random.Generator, data_root: Path) -> list[dict]:
    """The base images: path in the archive, bytes, format, and the grey uint8 pixels near-dups start from."""
    if base == "synthetic":
        out = []
        for i in range(n):
            grey = synthetic_ultrasound(rng)
            if rng.random() < SYNTHETIC_DICOM_SHARE:
                data = _dicom(grey, "US", US_SOP_CLASS, f"synthetic-{i}", window=(128.0, 256.0))
                out.append({"path": f"base/us_{i:05d}.dcm", "data": data, "format": "dicom", "grey": grey})
            else:
                out.append({"path": f"base/us_{i:05d}.png", "data": _png(grey, 3), "format": "png", "grey": grey})
        return out
    if base == "busi":
        root = data_root / "busi_256" / "Dataset_BUSI_with_GT"
        files = sorted(p for p in root.glob("*/*.png") if "_mask" not in p.name)
        if not files:
            raise FileNotFoundError(f"base busi: no BUSI PNGs under {root}")
        pick = np.sort(rng.choice(len(files), size=min(n, len(files)), replace=False))
        out = []
        for i in pick:
            data = files[i].read_bytes()
            grey = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
            out.append({"path": f"base/{files[i].parent.name}/{_safe(files[i].stem)}.png", "data": data, "format": "png", "grey": grey})
        return out
    npz = data_root / "pneumoniamnist_28" / "pneumoniamnist.npz"
    if not npz.exists():
        raise FileNotFoundError(f"base pneumoniamnist: {npz} not found")
    images = np.load(npz)["train_images"]
    pick = np.sort(rng.choice(len(images), size=min(n, len(images)), replace=False))
    return [{"path": f"base/xray_{i:05d}.png", "data": _png(images[i], 3), "format": "png", "grey": images[i]} for i in pick]


def synthetic_ultrasound(rng: np.random.Generator, side: int = 128) -> np.ndarray:
    """An ultrasound-like grey frame (uint8): speckle in a fan-shaped sector over smooth tissue
    echogenicity with layers, one to four dark cysts or bright blobs, depth attenuation; black outside."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64)
    cx, cy = side / 2 + rng.uniform(-6, 6), -side * rng.uniform(0.05, 0.25)
    r = np.hypot(xx - cx, yy - cy)
    theta = np.arctan2(xx - cx, yy - cy)
    r0, r1 = -cy + side * rng.uniform(0.05, 0.2), -cy + side * rng.uniform(0.85, 1.05)
    fan = (np.abs(theta) < np.radians(rng.uniform(28, 48))) & (r > r0) & (r < r1)
    coarse = rng.uniform(0.3, 1.0, (int(rng.integers(3, 8)),) * 2)
    tissue = cv2.resize(coarse, (side, side), interpolation=cv2.INTER_CUBIC)
    tissue *= 1 + 0.35 * np.sin(r * rng.uniform(0.08, 0.3) + rng.uniform(0, 2 * np.pi))
    for _ in range(int(rng.integers(1, 5))):
        bx, by = rng.uniform(0.2, 0.8) * side, rng.uniform(0.3, 0.85) * side
        ax, ay, angle = rng.uniform(4, 18), rng.uniform(3, 12), rng.uniform(0, np.pi)
        u = ((xx - bx) * np.cos(angle) + (yy - by) * np.sin(angle)) / ax
        v = (-(xx - bx) * np.sin(angle) + (yy - by) * np.cos(angle)) / ay
        inside = 1 / (1 + np.exp(np.minimum(8 * (u**2 + v**2 - 1), 50)))
        tissue *= 1 + inside * (rng.uniform(-0.9, -0.6) if rng.random() < 0.6 else rng.uniform(0.6, 1.2))
    speckle = cv2.GaussianBlur(rng.rayleigh(1.0, (side, side)), (0, 0), rng.uniform(0.6, 1.4))
    image = tissue * speckle * np.exp(-rng.uniform(0.5, 2.0) * r / side) * rng.uniform(90, 150)
    image[~fan] = 0
    return np.clip(image, 0, 255).astype(np.uint8)


def _png(pixels: np.ndarray, level: int, text: str | None = None) -> bytes:
    ok, buf = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, level])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    data = buf.tobytes()
    return _with_text(data, text) if text else data


def _with_text(png: bytes, text: str) -> bytes:
    """The PNG with a tEXt chunk (Comment) after IHDR: other bytes, the same pixels."""
    payload = b"Comment\x00" + text.encode("latin-1")
    chunk = struct.pack(">I", len(payload)) + b"tEXt" + payload + struct.pack(">I", zlib.crc32(b"tEXt" + payload))
    end_of_ihdr = 8 + 8 + 13 + 4
    return png[:end_of_ihdr] + chunk + png[end_of_ihdr:]


def _pixel_copy(b: dict, j: int) -> tuple[bytes, str, str]:
    """Another container or header with the same decoded pixels: (bytes, how, extension)."""
    if b["format"] == "dicom":
        from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

        ts = (ImplicitVRLittleEndian, RLELossless, DeflatedExplicitVRLittleEndian)[j % 3]
        return _resave_dicom(b["data"], ts), f"transfer syntax {ts.name}", ".dcm"
    pixels = cv2.imdecode(np.frombuffer(b["data"], np.uint8), cv2.IMREAD_UNCHANGED)
    level = (0, 9, 6, 1)[j % 4]
    if j % 2:
        return _png(pixels, level, f"re-saved copy {j}"), f"png level {level} + text chunk", ".png"
    data = _png(pixels, level)
    if data == b["data"]:
        return _with_text(data, f"re-saved copy {j}"), f"png level {level} + text chunk", ".png"
    return data, f"png level {level}", ".png"


def _near_dup(grey: np.ndarray, how: str, rng: np.random.Generator) -> tuple[bytes, str]:
    """A near-duplicate of a grey uint8 image by the named transform: (bytes, extension)."""
    h, w = grey.shape
    kind, _, arg = how.partition("_")
    if kind == "jpeg":
        ok, buf = cv2.imencode(".jpg", grey, [cv2.IMWRITE_JPEG_QUALITY, int(arg[1:])])
        return buf.tobytes(), ".jpg"
    if kind == "resize":
        f = float(arg)
        size = (max(8, int(round(w * f))), max(8, int(round(h * f))))
        image = cv2.resize(grey, size, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
    elif kind == "crop":
        p = int(arg.rstrip("pct")) / 100
        dy, dx = max(1, int(round(h * p))), max(1, int(round(w * p)))
        top, left = int(rng.integers(0, dy + 1)), int(rng.integers(0, dx + 1))
        image = grey[top : h - (dy - top), left : w - (dx - left)]
    elif kind == "brightness":
        image = np.clip(grey.astype(np.float64) + 255 * float(arg.rstrip("pct")) / 100, 0, 255).astype(np.uint8)
    elif kind == "contrast":
        g = grey.astype(np.float64)
        image = np.clip((g - g.mean()) * float(arg) + g.mean(), 0, 255).astype(np.uint8)
    elif kind == "rotate":
        m = cv2.getRotationMatrix2D((w / 2, h / 2), float(arg.rstrip("deg")), 1.0)
        image = cv2.warpAffine(grey, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    elif kind == "text":
        image = grey.copy()
        scale = max(0.25, w / 400)
        cv2.putText(image, "ID 0042 L BREAST", (2, max(8, int(14 * scale * 2))), cv2.FONT_HERSHEY_SIMPLEX, scale, 255,
                    max(1, int(round(scale * 2))), cv2.LINE_AA)
    else:
        raise ValueError(f"unknown near-duplicate transform {how!r}")
    return _png(image, 3), ".png"


def _shift(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """The image moved by (dy, dx) pixels, the uncovered border filled with the image's minimum."""
    out = np.full_like(image, image.min())
    h, w = image.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = image[ys, xs]
    return out


def _moved(image: np.ndarray, dy: float) -> np.ndarray:
    """The image's content moved down by dy pixels (sub-pixel, bilinear) inside a fixed frame, with a
    slight zoom that grows with dy, as a probe sliding over tissue: a crop cannot undo it."""
    h, w = image.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), 0.0, 1.0 + 0.003 * dy)
    m[1, 2] += dy
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _uid(key: str) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[key])


def _dicom(pixels: np.ndarray, modality: str, sop_class: str, key: str, window: tuple[float, float] | None = None,
           series: str | None = None) -> bytes:
    """A minimal valid DICOM file (explicit VR little endian, MONOCHROME2) of one frame or a (n, h, w) stack."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = _uid(key)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = _uid((series or key) + "/study")
    ds.SeriesInstanceUID = _uid((series or key) + "/series")
    ds.Modality, ds.PatientID = modality, "PLANTED"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = int(np.issubdtype(pixels.dtype, np.signedinteger))
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return _save(ds)


def _save(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _resave_dicom(data: bytes, ts) -> bytes:
    """The DICOM with another transfer syntax (same pixel values, same header otherwise)."""
    import pydicom
    from pydicom.uid import RLELossless

    ds = pydicom.dcmread(io.BytesIO(data))
    if ts == RLELossless:
        ds.compress(RLELossless, encoding_plugin="pydicom")
    else:
        ds.file_meta.TransferSyntaxUID = ts
    return _save(ds)


def _plant_foreign(planter: _Planter, n: int, rng: np.random.Generator, seed: int) -> None:
    """n foreign frames: groups of 10-30 (as many as fit) while at least a third is left for singletons, the rest alone."""
    singles_reserve = min(n, max(5, n // 3))
    left, g = n - singles_reserve, 0
    while left >= GROUP_SIZE[0]:
        room = left if left < 2 * GROUP_SIZE[0] else left - GROUP_SIZE[0]  # leave room for another group
        size = int(rng.integers(GROUP_SIZE[0], min(GROUP_SIZE[1], room) + 1))
        kind = GROUP_KINDS[g % len(GROUP_KINDS)]
        for path, data, how, family in _group_frames(kind, size, rng, f"{seed}-{g}"):
            planter.add(f"foreign/group{g}/{path}", data, role="foreign", family=family, transform=how, foreign_group=g,
                        foreign_kind=kind)
        left -= size
        g += 1
    counters: dict[str, int] = {}
    for i in range(singles_reserve + left):
        kind = SINGLE_KINDS[i % len(SINGLE_KINDS)]
        j = counters[kind] = counters.get(kind, -1) + 1
        path, data, how, family = _single_frame(kind, j, rng, f"{seed}-single{i}")
        planter.add(f"foreign/single/{i:03d}_{path}", data, role="blank" if kind == "blank" else "foreign", family=family,
                    transform=how, foreign_kind=kind)


def _dicom_source(name: str):
    import pydicom
    from pydicom.data import get_testdata_file

    return pydicom.dcmread(get_testdata_file(name))


def _restyle_dicom(src, dy: int, dx: int, window: tuple[float, float], key: str, series: str, number: int) -> bytes:
    """A copy of a real DICOM slice, shifted and re-windowed, as another instance of a series."""
    ds = src.copy()
    ds.PixelData = _shift(src.pixel_array, dy, dx).tobytes()
    ds.WindowCenter, ds.WindowWidth = window
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = _uid(key)
    ds.SeriesInstanceUID, ds.InstanceNumber = _uid(series), number
    return _save(ds)


def _group_frames(kind: str, size: int, rng: np.random.Generator, key: str):
    """(file name, bytes, transform, family) of each frame of one foreign group."""
    if kind in ("ct_series", "mr_series"):
        name = "CT_small.dcm" if kind == "ct_series" else "MR_small.dcm"
        src = _dicom_source(name)
        raw = src.pixel_array.astype(np.float64)
        lo, hi = np.percentile(raw, [5, 99])
        for i in range(size):
            dy, dx = 2 * i - size, int(rng.integers(-3, 4))
            center = lo + (hi - lo) * rng.uniform(0.35, 0.65)
            width = (hi - lo) * rng.uniform(0.6, 1.4)
            yield (f"slice{i:02d}.dcm", _restyle_dicom(src, dy, dx, (round(center, 1), round(width, 1)), f"{key}-{i}", key, i + 1),
                   f"shift ({dy}, {dx}) window ({center:.0f}, {width:.0f})", f"pydicom:{name}")
    elif kind == "phantom_series":
        for i in range(size):
            yield f"phantom{i:02d}.png", _png(_pattern(i, rng), 3), f"phantom slice {i}", f"phantom:{key}"
    elif kind == "faces":
        from skimage.data import lfw_subset

        faces = lfw_subset()
        for i, f in enumerate(rng.choice(len(faces), size=size, replace=False)):
            face = cv2.resize((faces[f] * 255).astype(np.uint8), (100, 100), interpolation=cv2.INTER_CUBIC)
            yield f"face{i:02d}.png", _png(face, 3), f"lfw_subset[{f}] at 100 px", f"lfw:{f}"
    else:
        raise ValueError(f"unknown foreign group kind {kind!r}")


def _pattern(i: int, rng: np.random.Generator, side: int = 128) -> np.ndarray:
    """A test-phantom frame: a grid, line-pair bars and circles, their spacing varied by i."""
    yy, xx = np.mgrid[0:side, 0:side]
    image = np.full((side, side), 60, np.uint8)
    spacing = 6 + (i % 7) * 2
    image[(yy % spacing == 0) | (xx % spacing == 0)] = 200
    bars = (xx // (2 + i % 4)) % 2 == 0
    image[(yy > side * 0.65) & (yy < side * 0.85) & bars] = 255
    for radius in range(8 + i % 5, side // 2, 12 + i % 3):
        cv2.circle(image, (side // 2 + int(rng.integers(-4, 5)), side // 3), radius, 240, 1)
    return image


def _test_card(j: int, rng: np.random.Generator, side: int = 128) -> np.ndarray:
    """A test card unlike any phantom slice (_pattern): a checkerboard, its cell varied by j, over a
    grey wedge, with a bright cross; the phantom series' grid, bars and circles would make a single
    pattern a near twin of one of its slices."""
    yy, xx = np.mgrid[0:side, 0:side]
    cell = 5 + (j % 6) * 3
    image = (40 + 160 * xx / side).astype(np.uint8)
    image[((yy // cell) + (xx // cell)) % 2 == 0] = 20
    centre = side // 2 + int(rng.integers(-6, 7))
    image[centre - 2 : centre + 2, :] = 250
    image[:, centre - 2 : centre + 2] = 250
    return image


def _photo(name: str) -> np.ndarray:
    import skimage.data

    image = getattr(skimage.data, name)()
    if image.ndim == 3:
        return cv2.cvtColor(image[..., :3], cv2.COLOR_RGB2BGR)
    return image


def _single_frame(kind: str, j: int, rng: np.random.Generator, key: str) -> tuple[str, bytes, str, str]:
    """(file name, bytes, transform, family) of one singleton foreign frame; j counts frames of that kind."""
    if kind == "photo":
        name = PHOTOS[j % len(PHOTOS)]
        image = _photo(name)
        if j >= len(PHOTOS):
            image = cv2.flip(image, 1)[:, j % 17 :]
        if j % 2:
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
            return f"{name}.jpg", buf.tobytes(), "photograph as JPEG", f"skimage:{name}"
        return f"{name}.png", _png(image, 3), "photograph as PNG", f"skimage:{name}"
    if kind in ("ct", "mr"):
        name = "CT_small.dcm" if kind == "ct" else "MR_small.dcm"
        src = _dicom_source(name)
        raw = src.pixel_array.astype(np.float64)
        lo, hi = np.percentile(raw, [5, 99])
        dy, dx = int(rng.integers(-8, 9)), int(rng.integers(-8, 9))
        window = (round(lo + (hi - lo) / 2, 1), round((hi - lo) * 1.2, 1))
        return f"{kind}.dcm", _restyle_dicom(src, dy, dx, window, key, key, 1), f"shift ({dy}, {dx})", f"pydicom:{name}"
    if kind == "pattern":
        return "pattern.png", _png(_test_card(j, rng), 3), "test card", f"pattern:{key}"
    if kind == "blank":
        level = (0, 255, 128, 30, 200, 90, 160, 10)[j % 8] + j // 8
        side = int(rng.integers(64, 300))
        return "blank.png", _png(np.full((side, side), min(level, 255), np.uint8), 3), f"constant {level}", f"blank:{level}"
    raise ValueError(f"unknown foreign kind {kind!r}")


def _pixel_hashes(truth: pd.DataFrame, files: dict[str, bytes]) -> list[str]:
    """SHA-256 of every frame as the project's decoder gives it (default DecodeConfig), in truth's row order."""
    from enrich_ray import schema
    from enrich_ray.config import DecodeConfig
    from enrich_ray.decode.stage import decode_batch

    cfg = DecodeConfig()
    paths = list(dict.fromkeys(truth["path"]))
    found: dict[tuple[str, int], str] = {}
    problems: list[str] = []
    for start in range(0, len(paths), 64):
        chunk = paths[start : start + 64]
        rows = [{"image_id": p, "source_uri": p, "source_uris": [p], "size_bytes": len(files[p]), "data": files[p],
                 "format": {".png": "png", ".jpg": "jpeg", ".dcm": "dicom"}[Path(p).suffix]} for p in chunk]
        frames, errors = decode_batch(pa.Table.from_pylist(rows, schema=schema.ARCHIVE), cfg)
        problems += [f"{e['source_uri']}: {e['message']}" for e in errors.to_pylist()]
        side = cfg.size
        pixels = frames.column("pixels").combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, side * side)
        for p, k, px in zip(frames.column("image_id").to_pylist(), frames.column("frame_index").to_pylist(), pixels):
            found[(p, int(k))] = hashlib.sha256(np.ascontiguousarray(px, np.float32).tobytes()).hexdigest()
    missing = [f"{p}#{k}" for p, k in zip(truth["path"], truth["frame_index"]) if (p, int(k)) not in found]
    if problems or missing:
        raise RuntimeError(f"planted files the decoder cannot read: {problems[:5]} missing frames {missing[:5]}")
    return [found[(p, int(k))] for p, k in zip(truth["path"], truth["frame_index"])]


def _check(truth: pd.DataFrame) -> None:
    """Byte and pixel copies decode to their original's pixels; near-dups and cine frames do not (nor one another)."""
    first = truth[truth["frame_index"] == 0].set_index("path")["pixel_hash"]
    for role, same in (("pixel_copy", True), ("byte_copy", True), ("near_dup", False), ("cine", False)):
        rows = truth[truth["role"] == role]
        equal = rows["pixel_hash"].to_numpy() == first.reindex(rows["original"]).to_numpy()
        if (equal != same).any():
            bad = rows.loc[equal != same, "path"].tolist()
            raise RuntimeError(f"planted {role} frames {'differ from' if same else 'equal'} their original's pixels: {bad[:5]}")
    cine = truth[truth["role"] == "cine"]
    if cine.duplicated(["path", "pixel_hash"]).any():
        raise RuntimeError("planted cine clips hold frames with identical decoded pixels")
