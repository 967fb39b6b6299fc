"""Test archives with planted foreign frames, decoded by the real decode stage and embedded by the
raw-pixel embedder: a main population (BUSI PNGs, or synthetic ultrasound-like frames with
near-twins and a cine clip) and foreign frames alone and in a group (real DICOM CT and MR,
scikit-image photographs, test patterns, a blank frame, a phantom series of near-identical frames)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa

from enrich_ray import schema
from enrich_ray.analysis.duplicates import archive_duplicates, thumbnails
from enrich_ray.config import AnalysisConfig, DecodeConfig, EmbedConfig, IndexConfig
from enrich_ray.decode.dicom import read_header
from enrich_ray.decode.stage import decode_batch
from enrich_ray.embed.registry import fit_state, make_embedder
from enrich_ray.index.knn import KnnGraph, exact_knn_graph
from enrich_ray.analysis.duplicates import duplicate_families

PHOTOS = ["astronaut", "coffee", "camera", "moon"]  # colour and grey photographs
DICOMS = ["CT_small.dcm", "MR_small.dcm"]
PHANTOM_SERIES = 18


@dataclass
class Archive:
    """Decoded frames and what the outlier table reads, with the planted truth."""

    pixels: np.ndarray  # (N, 64*64) in [0, 1]
    header: pd.DataFrame  # modality, photometric, rows, cols, body_part, colorfulness, is_constant
    embeddings: np.ndarray
    graph: KnnGraph
    duplicate_group: np.ndarray  # near-duplicate group id per row, -1 outside any group
    foreign: np.ndarray  # bool per row
    kind: np.ndarray  # what each row is: 'clean', 'photo', 'dicom', 'pattern', 'blank', 'phantom'


def colorfulness(rgb: np.ndarray) -> float:
    """Mean (max channel - min channel) of an 8-bit RGB image, in [0, 1] (0 for grey content)."""
    return float((rgb.max(axis=2).astype(np.float64) - rgb.min(axis=2)).mean() / 255.0)


def synthetic_ultrasound(rng: np.random.Generator, scene: dict, size: int = 256) -> np.ndarray:
    """A B-mode-like frame: a sector of blurred Rayleigh speckle over tissue layers, with dark lesions."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    r = np.hypot(xx - scene["apex_x"], yy - scene["apex_y"])
    theta = np.arctan2(xx - scene["apex_x"], yy - scene["apex_y"])
    sector = (np.abs(theta) < scene["half_angle"]) & (r < scene["depth"])
    tissue = 0.55 + 0.25 * np.sin(r / scene["layer"] + scene["phase"] + 0.4 * np.sin(xx / 40 + scene["phase"]))
    for cx, cy, ax, ay in scene["lesions"]:
        tissue *= 1 - 0.8 * np.exp(-(((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2) ** 2)
    speckle = cv2.GaussianBlur(rng.rayleigh(1.0, (size, size)), (0, 0), sigmaX=2.5, sigmaY=1.0)
    image = tissue * speckle * np.exp(-r / scene["attenuation"]) * scene["gain"]
    image[~sector] = 0
    out = np.clip(image * 160, 0, 255).astype(np.uint8)
    if scene["text"]:
        cv2.putText(out, "L 4.2cm", (8, size - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 255, 1)
    return out


def random_scene(rng: np.random.Generator, size: int = 256) -> dict:
    lesions = [
        (rng.uniform(60, 200), rng.uniform(80, 200), rng.uniform(10, 35), rng.uniform(8, 25))
        for _ in range(rng.integers(0, 3))
    ]
    return {
        "apex_x": size / 2 + rng.normal(0, 10), "apex_y": -rng.uniform(5, 40), "half_angle": rng.uniform(0.5, 0.75),
        "depth": rng.uniform(0.9, 1.15) * size, "layer": rng.uniform(6, 20), "phase": rng.uniform(0, 6.3),
        "lesions": lesions, "attenuation": rng.uniform(150, 400), "gain": rng.uniform(0.8, 1.2),
        "text": bool(rng.random() < 0.3),
    }


def synthetic_clean(n: int, seed: int = 0) -> list[np.ndarray]:
    """n ultrasound-like grey frames: scenes of 1-4 frames each (speckle re-drawn, a small shift),
    a cine clip of 12 frames whose lesion moves slowly, and 5% near-twins (brightness +4%)."""
    rng = np.random.default_rng(seed)
    images: list[np.ndarray] = []
    cine = random_scene(rng)
    for t in range(12):
        cine = {**cine, "lesions": [(cx + 1.5, cy, ax, ay) for cx, cy, ax, ay in cine["lesions"]] or [(100.0 + t, 120.0, 20.0, 15.0)]}
        images.append(synthetic_ultrasound(rng, cine))
    while len(images) < n:
        scene = random_scene(rng)
        for _ in range(rng.integers(1, 5)):
            scene = {**scene, "apex_x": scene["apex_x"] + rng.normal(0, 6), "phase": scene["phase"] + rng.normal(0, 0.4),
                     "gain": scene["gain"] * (1 + rng.normal(0, 0.08)), "layer": scene["layer"] * (1 + rng.normal(0, 0.05))}
            images.append(synthetic_ultrasound(rng, scene))
            if rng.random() < 0.05:
                images.append(np.clip(images[-1].astype(np.float64) * 1.04, 0, 255).astype(np.uint8))
    return images[:n]


def busi_clean(busi_dir: Path) -> list[np.ndarray]:
    """Every BUSI PNG as stored (RGB container, grey content)."""
    files = sorted(f for f in busi_dir.glob("*/*.png") if "_mask" not in f.name)
    return [cv2.cvtColor(cv2.imread(str(f), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for f in files]


def foreign_images(seed: int = 0, rgb: bool = False) -> list[tuple[str, str, bytes, np.ndarray | None]]:
    """(kind, format, file bytes, source image or None for DICOM) of every planted foreign frame; with
    rgb, grey PNGs are stored in an RGB container (as BUSI's are), so only their content tells them apart."""
    import skimage.data
    from pydicom.data import get_testdata_file

    rng = np.random.default_rng(seed)
    out: list[tuple[str, str, bytes, np.ndarray | None]] = []
    for name in DICOMS:
        out.append(("dicom", "dicom", Path(get_testdata_file(name, download=False)).read_bytes(), None))
    for name in PHOTOS:
        image = getattr(skimage.data, name)()
        out.append(("photo", "jpeg", encode(image, ".jpg"), image))
    yy, xx = np.mgrid[0:256, 0:256]
    checker = ((yy // 32 + xx // 32) % 2 * 255).astype(np.uint8)
    bars = np.zeros((256, 256, 3), np.uint8)
    for i, colour in enumerate([(255, 255, 255), (255, 255, 0), (0, 255, 255), (0, 255, 0), (255, 0, 255), (255, 0, 0), (0, 0, 255), (0, 0, 0)]):
        bars[:, i * 32 : (i + 1) * 32] = colour
    out += [("pattern", "png", encode(checker, ".png"), checker), ("pattern", "png", encode(bars, ".png"), bars)]
    blank = np.full((256, 256), 0, np.uint8)
    out.append(("blank", "png", encode(blank, ".png"), blank))
    phantom = (skimage.data.shepp_logan_phantom() * 255).astype(np.uint8)
    for _ in range(PHANTOM_SERIES):
        m = cv2.getRotationMatrix2D((200, 200), rng.uniform(-3, 3), 1.0)
        m[:, 2] += rng.normal(0, 3, 2)
        frame = cv2.warpAffine(phantom, m, (400, 400))
        frame = np.clip(frame + rng.normal(0, 6, frame.shape), 0, 255).astype(np.uint8)
        frame = cv2.resize(frame, (256, 256), interpolation=cv2.INTER_AREA)
        out.append(("phantom", "png", encode(frame, ".png"), frame))
    if rgb:
        out = [(kind, fmt, encode(np.repeat(image[..., None], 3, axis=2), ".png"), image) if fmt == "png" and image.ndim == 2
               else (kind, fmt, data, image) for kind, fmt, data, image in out]
    return out


def encode(image: np.ndarray, ext: str) -> bytes:
    bgr = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(ext, bgr)
    assert ok
    return buf.tobytes()


def build_archive(clean: list[np.ndarray], seed: int = 0, k: int = 10) -> Archive:
    """Decode clean + foreign images with the decode stage, embed with 'pixels', build the graph and groups."""
    items = [("clean", "png", encode(image, ".png"), image) for image in clean] + foreign_images(seed, rgb=clean[0].ndim == 3)
    rows, extra = [], []
    for i, (kind, fmt, data, image) in enumerate(items):
        header = dict.fromkeys(schema.HEADER_NAMES)
        if fmt == "dicom":
            header.update(read_header(data, None))
            colour = 0.0
        else:
            header.update(rows=image.shape[0], cols=image.shape[1])
            colour = colorfulness(image) if image.ndim == 3 else 0.0
        rows.append({"image_id": f"{i:06d}", "source_uri": f"mem://{i:06d}.{fmt}", "source_uris": [], "format": fmt,
                     "size_bytes": len(data), "data": data, **header})
        extra.append({"kind": kind, "colorfulness": colour, "rows": header["rows"], "cols": header["cols"],
                      "photometric": header["photometric"] or ("RGB" if image.ndim == 3 else "MONOCHROME2"), "body_part": None})
    frames, errors = decode_batch(pa.Table.from_pylist(rows, schema=schema.ARCHIVE), DecodeConfig())
    assert errors.num_rows == 0, errors.to_pylist()
    assert frames.num_rows == len(items)  # one frame each: the archive's ids are sorted like items
    meta = pd.DataFrame(extra)
    pixels = np.asarray(frames.column("pixels").combine_chunks().flatten(), np.float32).reshape(len(items), -1)
    # The decode stage's facts where it carries them; the same facts from the sources otherwise.
    decoded = frames.drop_columns(["pixels"]).to_pandas()
    header = pd.DataFrame({name: decoded[name] if name in decoded else meta.get(name) for name in
                           ["modality", "photometric", "rows", "cols", "body_part", "colorfulness", "is_constant"]})
    cfg = EmbedConfig(embedder="pixels")
    embedder = make_embedder(cfg, DecodeConfig(), state=fit_state(cfg, DecodeConfig(), pixels.reshape(-1, 64, 64)))
    embeddings = embedder.embed_array(pixels.reshape(-1, 64, 64))
    graph = exact_knn_graph(embeddings, k)
    # The raw-pixel embedding's near-duplicate thresholds (the defaults, cosine 0.975 and content 0.90, are the
    # beta-VAE's; README, "Judgments on planted truth"): its near twins and series group as before.
    analysis = AnalysisConfig(near_duplicate_threshold=0.85, near_duplicate_content_threshold=0.95)
    dups = archive_duplicates(graph, embeddings, analysis, IndexConfig(), thumbs=thumbnails(pixels))
    group = duplicate_families(dups, len(items))
    kind = meta["kind"].to_numpy()
    return Archive(pixels, header, embeddings, graph, group, kind != "clean", kind)
