"""One small local Ray cluster for the whole integration session (docs/architecture.md §4), and sample archives."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import testdata_path
from tests.local_nodes import free_port

# Real DICOM files with known content: the MR_small family (one image, many encodings), CT, an
# ultrasound cine clip, palette colour, MONOCHROME1 X-ray, and files known to be broken.
SAMPLE_DICOM = [
    "MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm", "CT_small.dcm", "emri_small.dcm", "US1_UNCR.dcm",
    "OBXXXX1A.dcm", "MR_truncated.dcm", "RG1_UNCR.dcm",
]


@pytest.fixture(scope="session")
def fault_marker(tmp_path_factory) -> Path:
    """The file an embedding actor claims before it kills itself (embed.fail_after_batches)."""
    return tmp_path_factory.mktemp("fault") / "fired"


@pytest.fixture(scope="session")
def ray_cluster(fault_marker):
    """A local Ray with more logical CPUs than the actors use, so reads never starve.

    Workers inherit the environment when the cluster starts, so the fault marker is set here.
    """
    import os

    from enrich_ray import runtime
    from enrich_ray.config import RuntimeConfig
    from enrich_ray.embed.encoder import FAULT_MARKER_ENV

    os.environ[FAULT_MARKER_ENV] = str(fault_marker)
    runtime.init(RuntimeConfig(num_cpus=4, no_progress_timeout_s=300))
    yield
    runtime.shutdown()


@pytest.fixture(scope="session")
def sample_source(tmp_path_factory) -> Path:
    """A folder of real DICOM files, a few BUSI PNGs when present, junk and a claimed-but-broken file."""
    src = tmp_path_factory.mktemp("sample_source")
    for name in SAMPLE_DICOM:
        shutil.copy(testdata_path(name), src / name)
    busi = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "busi_256" / "Dataset_BUSI_with_GT" / "benign"
    for f in sorted(busi.glob("*.png"))[:12]:
        shutil.copy(f, src / f.name)
    (src / "readme.txt").write_text("skipped: not an image")
    Image.new("L", (120, 90), 0).save(src / "blank frame.png")  # a black frame: valid, flagged
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return src


@pytest.fixture(scope="session")
def sample_archive(sample_source, tmp_path_factory) -> Path:
    """The sample source packed once for the session."""
    from enrich_ray.io.pack import pack

    out = tmp_path_factory.mktemp("archive") / "archive"
    pack([str(sample_source)], str(out), progress=False)
    return out




def start_moto(env_extra: dict | None = None):
    """moto's standalone S3 server on 127.0.0.1 (a real HTTP endpoint); returns (process, endpoint)."""
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    port = free_port()
    env = {**os.environ, **(env_extra or {})}
    server = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            return proc, endpoint
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto_server did not start")


@pytest.fixture(scope="session")
def s3_endpoint():
    """A local S3 server for the session, with the test credentials it accepts."""
    proc, endpoint = start_moto()
    yield endpoint
    proc.terminate()
    proc.wait(10)


S3_KEYS = ["storage.access_key_id=testing", "storage.secret_access_key=testing", "storage.region=us-east-1"]
