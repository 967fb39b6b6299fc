"""The selection out to the labeling tools and the PACS, and the labels back into the nightly catalog.

    source.py   which run, which of its ranked frames, and their files' bytes from the run's archive
    render.py   a frame's display image (the decode pipeline's, before crop and resize) as a PNG
    tools.py    Label Studio tasks, CVAT's manifest.jsonl, the labeling CSV (plain values in, out)
    kos.py      DICOM Key Object Selection documents, one per study (highdicom)
    labels.py   a labeling tool's export (Label Studio JSON, CVAT XML, CSV) to (image_id, label) rows
    job.py      `enrich-ray export` and `enrich-ray labels`: read, build, write

Plain functions over DataFrames and bytes; no Ray.
"""
from __future__ import annotations

FORMATS = ("labelstudio", "cvat", "csv", "kos")  # what `export --to` writes
