"""A real PACS for the DICOMweb tests: Orthanc with its DICOMweb plugin on 127.0.0.1, loaded over STOW-RS.

Fixtures live here rather than in conftest.py: only test_dicomweb.py uses them. Where Orthanc or
its plugin is not installed (`make test` installs both with apt), the tests skip with the reason.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.local_nodes import free_port

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
CONFIG = Path(__file__).with_name("orthanc.json")
USER, PASSWORD = "enrich", "test-password"  # the test user of orthanc.json


def orthanc_missing() -> str | None:
    """Why Orthanc cannot run here, or None."""
    if not ORTHANC.is_file():
        return f"{ORTHANC} not found: install Debian's orthanc and orthanc-dicomweb (make orthanc)"
    if not DICOMWEB_PLUGIN.is_file():
        return f"Orthanc's DICOMweb plugin {DICOMWEB_PLUGIN} not found: install Debian's orthanc-dicomweb (make orthanc)"
    return None


@dataclass
class Orthanc:
    """A running Orthanc: its process, port and folders, its REST API for the test's own bookkeeping."""

    root: Path
    port: int
    process: subprocess.Popen | None = None

    @property
    def source(self) -> str:
        """The `enrich-ray pack` source of everything this PACS holds."""
        return f"dicomweb://127.0.0.1:{self.port}/dicom-web"

    @property
    def storage(self) -> Path:
        """The folder of the stored instances' files (the index lives apart)."""
        return self.root / "storage"

    def rest(self, method: str, path: str, **kwargs):
        response = requests.request(method, f"http://127.0.0.1:{self.port}{path}", auth=(USER, PASSWORD), timeout=60, **kwargs)
        response.raise_for_status()
        return response.json() if response.content else None

    def start(self) -> None:
        """Start (or restart, on the same port and folders) and wait until its REST API answers."""
        config = self.root / "config"
        config.mkdir(parents=True, exist_ok=True)
        shutil.copy(CONFIG, config / "orthanc.json")
        (config / "run.json").write_text(json.dumps({
            "Plugins": [str(DICOMWEB_PLUGIN)], "HttpPort": self.port, "StorageDirectory": str(self.storage), "IndexDirectory": str(self.root / "index")}))
        log = open(self.root / "orthanc.log", "ab")
        self.process = subprocess.Popen([str(ORTHANC), str(config)], stdout=log, stderr=subprocess.STDOUT)
        for _ in range(300):
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited {self.process.returncode}: "
                                   f"{(self.root / 'orthanc.log').read_text(errors='replace')[-2000:]}")
            try:
                self.rest("GET", "/system")
                return
            except requests.RequestException:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("Orthanc did not answer on 127.0.0.1:%d" % self.port)

    def stop(self) -> None:
        """Stop and wait for the exit (a second Orthanc on the same index would find it locked)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(60)

    def store(self, datasets) -> list:
        """STOW-RS each dataset with dicomweb-client; the datasets Orthanc accepted."""
        from dicomweb_client.api import DICOMwebClient

        session = requests.Session()
        session.auth = (USER, PASSWORD)
        client = DICOMwebClient(f"http://127.0.0.1:{self.port}/dicom-web", session=session)
        accepted = []
        for ds in datasets:
            try:
                client.store_instances([ds])
            except requests.HTTPError:  # Orthanc refuses some of pydicom-data's deliberately odd files
                continue
            accepted.append(ds)
        return accepted

    def instances(self) -> dict[str, dict]:
        """Every instance Orthanc holds, by SOP Instance UID: its UIDs, modality, study date and patient ID."""
        held = {}
        for orthanc_id in self.rest("GET", "/instances"):
            tags = self.rest("GET", f"/instances/{orthanc_id}/simplified-tags")
            held[tags["SOPInstanceUID"]] = {"orthanc_id": orthanc_id, **{k: tags.get(k) for k in (
                "StudyInstanceUID", "SeriesInstanceUID", "Modality", "StudyDate", "PatientID")}}
        return held


def pydicom_data_files() -> list[Path]:
    """pydicom-data's DICOM files (installed with the test extra, never downloaded)."""
    from pydicom.data.data_manager import external_data_sources

    source = external_data_sources().get("pydicom-data")
    if source is None:
        pytest.skip("pydicom-data is not installed (pip install pydicom-data)")
    return sorted(Path(source.data_path).glob("*.dcm"))


def broken_instance():
    """A DICOM image whose pixel data ends halfway (its header is sound, so the PACS takes it)."""
    import pydicom
    from pydicom.uid import generate_uid

    from tests.conftest import testdata_path

    ds = pydicom.dcmread(testdata_path("MR_small.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    return ds


def start_pacs(root: Path, datasets) -> tuple[Orthanc, list]:
    """An Orthanc under `root` on a free port, loaded with `datasets` over STOW-RS; (pacs, accepted)."""
    missing = orthanc_missing()
    if missing:
        pytest.skip(missing)
    pacs = Orthanc(root, free_port())
    pacs.start()
    try:
        return pacs, pacs.store(datasets)
    except BaseException:
        pacs.stop()
        raise


class BearerGate:
    """A tiny HTTP proxy in front of an Orthanc that takes a bearer token (Orthanc itself takes HTTP basic
    only): it records every request's Authorization header, answers 401 to any but `Bearer TOKEN`, and
    forwards the rest to Orthanc with the test user's basic credentials. `source` is pack's source through it."""

    def __init__(self, orthanc: Orthanc, token: str):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.seen: list[tuple[str, str, str | None]] = []  # (method, path, Authorization)
        gate = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                auth = self.headers.get("Authorization")
                gate.seen.append((self.command, self.path, auth))
                if auth != f"Bearer {token}":
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Bearer realm="enrich-ray-test"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "content-type")}
                answer = requests.request(self.command, f"http://127.0.0.1:{orthanc.port}{self.path}", data=body or None,
                                          headers=headers, auth=(USER, PASSWORD), timeout=60)
                self.send_response(answer.status_code)
                for key in ("Content-Type",):
                    if key in answer.headers:
                        self.send_header(key, answer.headers[key])
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = _forward

            def log_message(self, *args) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def source(self) -> str:
        return f"dicomweb://127.0.0.1:{self.port}/dicom-web"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
