"""One nightly at a time on an S3 catalog (moto's real server): a second run is refused naming the holder,
a crashed run's expired lock is taken over."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import boto3
import pytest
import s3fs

from enrich_ray.config import load_config
from enrich_ray.io.pack import pack
from enrich_ray.pipelines import nightly as nightly_mod
from enrich_ray.pipelines.nightly import nightly
from tests.integration.conftest import S3_KEYS

pytestmark = pytest.mark.ray

SETTINGS = ["vae.max_epochs=2", "vae.latent_dim=16", "embed.batch_size=32", "decode.batch_size=8", "selection.k=5"]
NIGHT = "2026-11-20"


def test_a_second_nightly_is_refused_while_one_runs_and_an_expired_lock_is_taken_over(ray_cluster, s3_endpoint,
                                                                                       sample_source, monkeypatch):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                      region_name="us-east-1")
    s3.create_bucket(Bucket="nightly")
    settings = [*SETTINGS, *S3_KEYS, f"storage.endpoint_url={s3_endpoint}"]
    cfg = load_config(None, settings)
    fs = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": s3_endpoint})
    fs.put(str(sample_source) + "/", "nightly/incoming/", recursive=True)
    pack(["s3://nightly/incoming"], "s3://nightly/archive", cfg.pack, cfg.storage, progress=False)

    # The first run waits inside its train stage (lock held) until the second has been answered.
    answered = threading.Event()
    real_first_model = nightly_mod._first_model
    monkeypatch.setattr(nightly_mod, "_first_model", lambda *a: (answered.wait(300), real_first_model(*a))[1])
    result: dict = {}
    first = threading.Thread(target=lambda: result.update(r=nightly("s3://nightly/catalog", "s3://nightly/archive", NIGHT, cfg)))
    first.start()
    deadline = time.monotonic() + 120
    while not fs.exists("nightly/catalog/_lock") and first.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fs.exists("nightly/catalog/_lock"), "the first run never took the lock"
    second = subprocess.run([sys.executable, "-m", "enrich_ray", "nightly", "--catalog", "s3://nightly/catalog",
                             "--archive", "s3://nightly/archive", "--night", NIGHT,
                             *[a for s in settings for a in ("--set", s)]],
                            capture_output=True, text=True, timeout=300)
    answered.set()
    first.join(600)
    assert not first.is_alive() and result["r"].exit_code == 0, result
    assert second.returncode == 2, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
    holder = json.loads(fs.cat_file("nightly/catalog/nights/" + NIGHT + "/summary.json"))  # the first run committed
    assert holder["counts"]["frames_embedded"] > 0
    assert "is held by run" in lines[0] and "on host" in lines[0] and "s3://nightly/catalog" in lines[0], lines[0]
    assert not fs.exists("nightly/catalog/_lock")  # released

    # A crashed run's lock, past its expiry: the next run takes it over (and finds the night done).
    stale = {"host": "gone", "pid": 1, "run_id": "crashed", "started": "2026-11-20T02:30:00Z", "expires": "2026-11-20T14:30:00Z"}
    fs.pipe_file("nightly/catalog/_lock", json.dumps(stale).encode())
    again = nightly("s3://nightly/catalog", "s3://nightly/archive", NIGHT, cfg)
    assert "already in catalog" in again.message and not fs.exists("nightly/catalog/_lock")
