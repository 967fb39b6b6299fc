"""A labeling tool's export to (image_id, label) rows: the labeled set the next night seeds from.

- Label Studio's JSON export: a list of tasks; a task is labeled when it has an annotation that was
  not cancelled (skipped); its labels are every label value of those annotations' results (choices,
  rectanglelabels, taxonomy paths, ...). The image_id comes from the task data an export wrote
  (data.image_id), else from the image's file name.
- CVAT's XML for images 1.1: an <image> is labeled when it holds a tag or shape with a label; the
  image_id comes from its name (the PNG names `export` writes).
- A CSV with image_id and label columns: a row is labeled when its label is not blank.

Frames of one image are one labeled image: their labels are joined (distinct, sorted, ';').
"""
from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pandas as pd

from enrich_ray.export.tools import image_id_in

SEPARATOR = ";"
FORMATS = {".json": "Label Studio JSON export", ".xml": "CVAT XML export", ".csv": "CSV of image_id,label"}


class LabelsError(ValueError):
    """A file that is not the labeling tool export it claims to be."""


@dataclass
class Labels:
    """The labeled images of an export and what was read to find them."""

    table: pd.DataFrame  # image_id, label: one row per labeled image
    entries: int  # tasks, images or rows read
    unlabeled: int  # of them without a label
    without_id: int  # labeled, but naming no image_id


def read_labels(data: bytes, name: str) -> Labels:
    """The labels of a Label Studio JSON, CVAT XML or CSV export, told apart by the file's extension."""
    suffix = "." + name.rsplit(".", 1)[-1].lower() if "." in name.rsplit("/", 1)[-1] else ""
    readers = {".json": read_label_studio, ".xml": read_cvat, ".csv": read_label_csv}
    if suffix not in readers:
        raise LabelsError(f"expected a {', a '.join(FORMATS.values())} (by its extension: {', '.join(FORMATS)})")
    return readers[suffix](data)


def read_label_studio(data: bytes) -> Labels:
    """Labels of a Label Studio JSON export (Export > JSON: the tasks with their annotations)."""
    try:
        tasks = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LabelsError(f"not valid JSON ({exc})") from None
    if not isinstance(tasks, list) or not all(isinstance(t, dict) and isinstance(t.get("data"), dict) for t in tasks):
        raise LabelsError("not a Label Studio JSON export: expected a list of tasks, each with a data object "
                          "(Label Studio's Export > JSON, not JSON-MIN)")
    found = []
    for task in tasks:
        annotations = task.get("annotations") or []
        if not isinstance(annotations, list) or not all(isinstance(a, dict) for a in annotations):
            raise LabelsError(f"task {task.get('id')}: annotations is not a list of annotations")
        done = [a for a in annotations if not a.get("was_cancelled")]
        image_id = image_id_in(task["data"].get("image_id")) or image_id_in(task["data"].get("image"))
        found.append((image_id, list(_result_labels(r for a in done for r in _results(a, task))) if done else None))
    return _labels(found)


def read_cvat(data: bytes) -> Labels:
    """Labels of a CVAT for images 1.1 XML export: each image's tags and shapes."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise LabelsError(f"not valid XML ({exc})") from None
    if root.tag != "annotations":
        raise LabelsError(f"not a CVAT XML export: the root element is <{root.tag}>, not <annotations>")
    images = root.findall("image")
    if not images and root.find("track") is not None:
        raise LabelsError("a CVAT for video export (tracks): export the task as 'CVAT for images 1.1'")
    found = []
    for image in images:
        labels = [child.get("label") for child in image if child.get("label")]
        found.append((image_id_in(image.get("name")), labels or None))
    return _labels(found)


def read_label_csv(data: bytes) -> Labels:
    """Labels of a CSV with image_id and label columns (other columns are ignored)."""
    try:
        df = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise LabelsError(f"not a readable CSV ({' '.join(str(exc).split())})") from None
    missing = [c for c in ("image_id", "label") if c not in df.columns]
    if missing:
        raise LabelsError(f"a CSV of labels needs the columns image_id and label; it has {', '.join(df.columns) or 'none'}")
    found = [(image_id.strip().lower() or None, [label.strip()] if label.strip() else None)
             for image_id, label in zip(df["image_id"], df["label"])]
    return _labels(found)


def _results(annotation: dict, task: dict) -> list[dict]:
    results = annotation.get("result") or []
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        raise LabelsError(f"task {task.get('id')}: an annotation's result is not a list of results")
    return results


def _result_labels(results: Iterable[dict]) -> Iterator[str]:
    """Every label value in Label Studio results: value[type] (a list of labels or of taxonomy paths, or one
    value), a textarea's text."""
    for result in results:
        value = result.get("value") if isinstance(result.get("value"), dict) else {}
        given = value.get("text") if result.get("type") == "textarea" else value.get(result.get("type"))
        for item in given if isinstance(given, list) else [] if given is None else [given]:
            yield "/".join(map(str, item)) if isinstance(item, list) else str(item)


def _labels(found: list[tuple[str | None, list[str] | None]]) -> Labels:
    """Labels from (image_id or None, labels or None when not labeled) per entry."""
    labeled = [(image_id, labels) for image_id, labels in found if labels is not None]
    rows = [(image_id, label) for image_id, labels in labeled if image_id for label in labels or [""]]
    table = pd.DataFrame(rows, columns=["image_id", "label"])
    table = (table.groupby("image_id", sort=False)["label"]
             .agg(lambda s: SEPARATOR.join(sorted({x for x in s if x}))).reset_index())
    return Labels(table, len(found), len(found) - len(labeled), sum(1 for image_id, _ in labeled if not image_id))
