"""DICOM Key Object Selection documents: the selection as radiologists see it in their own viewer.

One KOS document per study (highdicom builds it: Key Object Selection Document Storage, TID 2010),
referencing each selected SOP instance of the study once, with a document title from CID 7010
("Of Interest" unless told otherwise). The document takes its patient and study attributes from the
referenced files themselves, as the PACS files it under that patient and study: a KOS carries
the patient identifiers of its scans and goes back where they came from. Its series and instance
UIDs derive from the study, the title and the instances referenced, so exporting the same
selection again gives the same documents (a second store replaces the first).
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from enrich_ray.config import ConfigError

KOS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"  # Key Object Selection Document Storage
DEFAULT_TITLE = "Of Interest"
MANUFACTURER = "enrich_ray"
SERIES_NUMBER = 1
REFERENCE_UIDS = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")  # what a reference needs
# CID 7010, Key Object Selection Document Title: code by meaning, in lower case.
TITLES: dict[str, Code] = {getattr(codes.cid7010, name).meaning.lower(): getattr(codes.cid7010, name)
                           for name in codes.cid7010.dir()}


@dataclass
class KosDocument:
    """One study's KOS document: its file's bytes and the SOP instances it references."""

    study_uid: str
    sop_uid: str
    data: bytes
    referenced: list[str]


def document_title(meaning: str) -> Code:
    """The CID 7010 code of a document title given by its meaning ("For Research"), or a ConfigError."""
    code = TITLES.get(meaning.strip().lower())
    if code is None:
        raise ConfigError(f"--title {meaning!r} is not a key object selection document title of CID 7010 "
                          f"(e.g. 'Of Interest', 'For Research', 'For Teaching', 'Best In Set')")
    return code


def kos_documents(files: Sequence[bytes], title: Code, description: str) -> tuple[list[KosDocument], int]:
    """KOS documents, one per study, over the DICOM files of the selected instances (each referenced once);
    returns them with the number of files left out for want of a readable header or instance/study UID."""
    studies: dict[str, dict[str, Dataset]] = {}
    unreadable = 0
    for data in files:
        try:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        except Exception:  # a header pydicom cannot read: no reference can be made to it
            unreadable += 1
            continue
        if not all(ds.get(keyword) for keyword in REFERENCE_UIDS):
            unreadable += 1
            continue
        studies.setdefault(str(ds.StudyInstanceUID), {})[str(ds.SOPInstanceUID)] = ds
    docs = [_document(study, list(instances.values()), title, description) for study, instances in sorted(studies.items())]
    return docs, unreadable


def _document(study: str, evidence: list[Dataset], title: Code, description: str) -> KosDocument:
    referenced = sorted(str(ds.SOPInstanceUID) for ds in evidence)
    entropy = ["enrich_ray key object selection", study, title.value, *referenced]
    content = hd.ko.KeyObjectSelection(document_title=title, referenced_objects=evidence, description=description)
    sop_uid = generate_uid(entropy_srcs=[*entropy, "instance"])
    doc = hd.ko.KeyObjectSelectionDocument(
        evidence=evidence, content=content, series_instance_uid=generate_uid(entropy_srcs=[*entropy, "series"]),
        series_number=SERIES_NUMBER, sop_instance_uid=sop_uid, instance_number=1, manufacturer=MANUFACTURER)
    buf = io.BytesIO()
    doc.save_as(buf, enforce_file_format=True)
    return KosDocument(study, str(sop_uid), buf.getvalue(), referenced)
