"""The embedded default's data: the real DICOM files that pydicom and pydicom-data install."""
from __future__ import annotations

from pathlib import Path

from enrich_ray.io.fs import StorageError


def demo_sources() -> list[str]:
    """The folders holding pydicom's test files (CT, MR, ultrasound clips, X-ray, broken files)."""
    from pydicom.data import get_testdata_files

    parents = sorted({Path(p).parent for p in get_testdata_files()})
    folders = [str(f) for f in parents if not any(other in f.parents for other in parents)]
    if not folders:
        raise StorageError("no pydicom test files found: pip install pydicom-data")
    return folders
