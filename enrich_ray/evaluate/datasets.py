"""Labeled datasets for the evaluation: a MedMNIST .npz (at its own side, e.g. 28 px), a Parquet
archive with a label column and a train/test split column (decoded at decode.size), or a folder of
class subfolders (BUSI's benign/malignant/normal) packed into such an archive with `pack`, all as
greyscale images in [0, 1] with class indices and a split per image. Also the non-medical images
of the redundancy plot: the faces and photographs scikit-image bundles.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from enrich_ray.config import DecodeConfig, PackConfig, StorageConfig
from enrich_ray.decode.stage import decode_batch
from enrich_ray.io.fs import StorageError, resolve
from enrich_ray.io.pack import archive_shards, pack

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class LabeledImages:
    """Images (N, side, side) float32 in [0, 1], class indices, and a split name per image."""

    name: str
    images: np.ndarray
    labels: np.ndarray  # int64 index into classes
    split: np.ndarray  # str: train | val | test
    classes: list[str]

    def rows(self, split: str) -> np.ndarray:
        """Row indices of one split, ascending."""
        return np.flatnonzero(self.split == split)

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and class, for the report."""
        return {
            s: {c: int(((self.split == s) & (self.labels == i)).sum()) for i, c in enumerate(self.classes)}
            for s in SPLITS
            if (self.split == s).any()
        }


def stratified_share(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded boolean mask holding round(fraction * n) of each class's n rows (at least one of
    every class with two or more rows), so a split keeps the class balance."""
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    mask = np.zeros(y.size, dtype=bool)
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        take = int(round(fraction * rows.size))
        if rows.size >= 2:
            take = min(max(take, 1), rows.size - 1)
        mask[rng.choice(rows, size=take, replace=False)] = True
    return mask


def with_val_split(data: LabeledImages, fraction: float, seed: int) -> LabeledImages:
    """The dataset with a validation split: unchanged when it has one, else a seeded per-class
    share of its training images moved to 'val'."""
    if (data.split == "val").any():
        return data
    train = data.rows("train")
    split = data.split.copy()
    split[train[stratified_share(data.labels[train], fraction, seed)]] = "val"
    return LabeledImages(data.name, data.images, data.labels, split, data.classes)


def dataset_name(uri: str) -> str:
    """A short name for a dataset URI: the file or folder name without its extension."""
    return PurePosixPath(uri.rstrip("/").split("://")[-1]).name.split(".")[0] or "dataset"


def _grey_unit(images: np.ndarray, what: str) -> np.ndarray:
    """uint8 or float images (N, H, W) or (N, H, W, C) as float32 greyscale in [0, 1]."""
    x = np.asarray(images)
    if x.ndim == 4:
        x = x.mean(axis=3)
    if x.ndim != 3 or x.shape[1] != x.shape[2] or x.shape[0] == 0:
        raise ValueError(f"{what}: expected square images (N, side, side[, channels]), got shape {np.shape(images)}")
    if np.issubdtype(x.dtype, np.integer) or x.max() > 1.0:
        x = x / 255.0
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def load_medmnist_npz(data: bytes | str, name: str) -> LabeledImages:
    """A MedMNIST file: {train,val,test}_images and {train,val,test}_labels (N, 1) of class indices."""
    src = io.BytesIO(data) if isinstance(data, bytes) else data
    with np.load(src) as npz:
        missing = [f"{s}_{k}" for s in ("train", "test") for k in ("images", "labels") if f"{s}_{k}" not in npz.files]
        if missing:
            raise ValueError(f"{name}: not in MedMNIST's layout, missing {', '.join(missing)} (has {', '.join(npz.files)})")
        parts = [s for s in SPLITS if f"{s}_images" in npz.files and f"{s}_labels" in npz.files]
        images, labels, split = [], [], []
        for s in parts:
            x = _grey_unit(npz[f"{s}_images"], f"{name} {s}_images")
            y = np.asarray(npz[f"{s}_labels"])
            if y.ndim == 2 and y.shape[1] != 1:
                raise ValueError(f"{name}: {s}_labels has {y.shape[1]} columns; multi-label tasks are not supported")
            y = y.reshape(-1)
            if y.size != len(x):
                raise ValueError(f"{name}: {len(x)} {s} images but {y.size} labels")
            images.append(x)
            labels.append(y.astype(np.int64))
            split.append(np.full(len(x), s))
    y_all = np.concatenate(labels)
    if y_all.min() < 0:
        raise ValueError(f"{name}: labels must be class indices >= 0")
    classes = [str(c) for c in range(int(y_all.max()) + 1)]
    return LabeledImages(name, np.concatenate(images), y_all, np.concatenate(split), classes)


def load_archive(uri: str, decode: DecodeConfig, label_column: str, split_column: str,
                 storage: StorageConfig | None = None) -> tuple[LabeledImages, int]:
    """A Parquet archive (schema.ARCHIVE plus a label and a split column) decoded to frames at
    decode.size; every frame of an image carries its label and split. Returns the dataset and the
    number of files or frames that could not be decoded (left out)."""
    loc = resolve(uri, storage)
    try:
        ds = pads.dataset(loc.path, filesystem=loc.arrow_fs(), format="parquet")
    except (FileNotFoundError, pa.ArrowInvalid) as exc:
        raise StorageError(f"dataset not found or not Parquet: {uri} ({exc})") from None
    missing = [c for c in ("image_id", "format", "data", label_column, split_column) if c not in ds.schema.names]
    if missing:
        raise ValueError(f"{uri}: the archive lacks column(s) {', '.join(missing)} (has {', '.join(ds.schema.names)})")
    wanted = [c for c in ("image_id", "source_uri", "format", "data", label_column, split_column) if c in ds.schema.names]
    images, labels, splits, failed = [], [], [], 0
    for batch in ds.to_batches(columns=wanted, batch_size=decode.batch_size):
        table = pa.Table.from_batches([batch])
        by_id = dict(zip(table.column("image_id").to_pylist(), zip(table.column(label_column).to_pylist(),
                                                                   table.column(split_column).to_pylist())))
        frames, errors = decode_batch(table, decode)
        failed += errors.num_rows
        if frames.num_rows:
            images.append(frames.column("pixels").combine_chunks().flatten().to_numpy().reshape(-1, decode.size, decode.size))
            for image_id in frames.column("image_id").to_pylist():
                label, split = by_id[image_id]
                labels.append(label)
                splits.append(split)
    if not images:
        raise ValueError(f"{uri}: no image could be decoded ({failed} failures)")
    bad = sorted({str(s) for s in splits} - set(SPLITS))
    if bad:
        raise ValueError(f"{uri}: column {split_column!r} holds {', '.join(bad)}; expected {', '.join(SPLITS)}")
    if any(label is None for label in labels):
        raise ValueError(f"{uri}: column {label_column!r} has empty labels")
    classes = sorted({str(label) for label in labels})
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[str(label)] for label in labels], dtype=np.int64)
    data = LabeledImages(dataset_name(uri), np.concatenate(images).astype(np.float32), y, np.array(splits, dtype=str), classes)
    return data, failed


def is_class_folder(uri: str, storage: StorageConfig | None = None) -> bool:
    """True for a folder of class subfolders (images inside), not an archive: no Parquet shard at its top."""
    loc = resolve(uri, storage)
    if not loc.fs.isdir(loc.path):
        return False
    entries = loc.fs.ls(loc.path, detail=True)
    has_shards = any(e["name"].endswith(".parquet") for e in entries)
    return not has_shards and sum(e["type"] == "directory" for e in entries) >= 2


def pack_class_folder(folder: str, dest: str, test_fraction: float, seed: int, label_column: str = "label",
                      split_column: str = "split", storage: StorageConfig | None = None) -> str:
    """Pack a folder of class subfolders (e.g. BUSI's benign/, malignant/, normal/) with the
    product's pack, then add a label column (the name of each image's folder) and a split column
    (a seeded per-class test share, the rest train). Returns dest, an archive load_archive reads."""
    out = resolve(dest, storage)
    if out.fs.isdir(out.path) and archive_shards(dest, storage):
        return dest  # packed by an earlier run: packing and the split are deterministic
    pack([folder], dest, PackConfig(), storage, progress=False)
    shards = archive_shards(dest, storage)
    tables = [pq.read_table(resolve(uri, storage).path, filesystem=resolve(uri, storage).arrow_fs()) for uri in shards]
    labels = np.array([PurePosixPath(u).parent.name for t in tables for u in t.column("source_uri").to_pylist()])
    if np.unique(labels).size < 2:
        raise ValueError(f"{folder}: need images in at least two class subfolders, found {sorted(set(labels))}")
    test = stratified_share(labels, test_fraction, seed)
    start = 0
    for uri, table in zip(shards, tables):
        n = table.num_rows
        part = table.append_column(label_column, pa.array(labels[start : start + n].tolist())).append_column(
            split_column, pa.array(np.where(test[start : start + n], "test", "train").tolist()))
        loc = resolve(uri, storage)
        with loc.fs.open(loc.path, "wb") as fh:
            pq.write_table(part, fh)
        start += n
    return dest


def natural_images(side: int) -> np.ndarray:
    """Non-medical images for the redundancy plot (paper Fig. 1), greyscale (N, side, side) in
    [0, 1]: scikit-image's 200 LFW faces and its bundled photographs (no download)."""
    from skimage import data as skdata
    from skimage.color import rgb2gray
    from skimage.transform import resize

    photos = ["astronaut", "brick", "camera", "cat", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
              "horse", "moon", "page", "rocket", "text", "hubble_deep_field"]
    images = list(skdata.lfw_subset())
    for name in photos:
        x = getattr(skdata, name)()
        x = rgb2gray(x) if x.ndim == 3 else x
        h, w = x.shape
        c = min(h, w)  # the central square
        images.append(x[(h - c) // 2 : (h - c) // 2 + c, (w - c) // 2 : (w - c) // 2 + c])
    scaled = [np.asarray(x, dtype=np.float64) / (255.0 if np.asarray(x).max() > 1 else 1.0) for x in images]
    return np.clip(np.stack([resize(x, (side, side), anti_aliasing=True) for x in scaled]), 0.0, 1.0).astype(np.float32)


def load_dataset(uri: str, decode: DecodeConfig, label_column: str = "label", split_column: str = "split",
                 storage: StorageConfig | None = None) -> tuple[LabeledImages, int]:
    """The labeled dataset at uri: a MedMNIST .npz file, or else a Parquet archive with label and
    split columns. Returns it with the count of files or frames left out as undecodable."""
    loc = resolve(uri, storage)
    if loc.path.endswith(".npz"):
        if not loc.fs.isfile(loc.path):
            raise StorageError(f"dataset not found: {uri}")
        return load_medmnist_npz(loc.fs.cat_file(loc.path), dataset_name(uri)), 0
    return load_archive(uri, decode, label_column, split_column, storage)
