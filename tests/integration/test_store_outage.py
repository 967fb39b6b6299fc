"""The object store goes away in the middle of a curate run S3 to S3, and comes back.

The run must end with one line naming the store (exit 2, no traceback), leave nothing
half-written that a rerun could take for complete, and the rerun must resume to the outputs
of a clean run. The store goes away at a chosen write: a proxy in front of the local S3 server
(moto) cuts that request and every connection, refuses new ones, and later listens again on the
same port. The server behind it keeps its objects, as a real store's outage loses none (moto
keeps them in memory only, and its request recorder, the one way to persist them, interleaves
concurrent requests in its file).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from urllib.parse import urlsplit

import boto3
import numpy as np
import pandas as pd
import pytest
import s3fs

from enrich_ray.config import load_config
from enrich_ray.io.pack import pack
from enrich_ray.pipelines.curate import curate
from enrich_ray.pipelines.stages import STAGES
from tests.integration.conftest import S3_KEYS
from tests.integration.test_curate import PIXELS, _assert_same

pytestmark = pytest.mark.ray

BUCKET = "outage"


class Outage:
    """A TCP proxy to the S3 server that goes down on the first request holding `cut` (its request line)."""

    def __init__(self, upstream: str, cut: bytes):
        self.upstream = (urlsplit(upstream).hostname, urlsplit(upstream).port)
        self.cut = cut
        self.down = threading.Event()
        self.lock = threading.Lock()
        self.sockets: set[socket.socket] = set()
        self.port = 0
        self.listener: socket.socket | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Listen (again, on the same port after the first time)."""
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.down.clear()
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def stop(self) -> None:
        """The store goes away: no listener, every open connection closed."""
        self.down.set()
        with self.lock:
            for s in [self.listener, *self.sockets]:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self.sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while not self.down.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            with self.lock:
                self.sockets |= {client, server}
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, watch: bool) -> None:
        tail = b""
        try:
            while data := src.recv(65536):
                if watch and self.cut and self.cut in tail + data:
                    self.cut = b""  # once: after the restart the same request passes
                    self.stop()
                    return
                tail = data[-len(self.cut) :] if self.cut else b""
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture(scope="module")
def store(ray_cluster, s3_endpoint, sample_source):
    """The sample packed into s3://outage/archive, and a clean run of it in s3://outage/runs/clean."""
    fs = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": s3_endpoint})
    boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                 region_name="us-east-1").create_bucket(Bucket=BUCKET)
    fs.put(str(sample_source) + "/", f"{BUCKET}/incoming/", recursive=True)
    cfg = load_config(None, [*PIXELS, *S3_KEYS, f"storage.endpoint_url={s3_endpoint}"])
    pack([f"s3://{BUCKET}/incoming"], f"s3://{BUCKET}/archive", cfg.pack, cfg.storage, progress=False)
    curate(f"s3://{BUCKET}/archive", f"s3://{BUCKET}/runs/clean", cfg)
    return fs, cfg


def _outputs(fs: s3fs.S3FileSystem, run: str) -> dict:
    """What must be identical between the resumed run and the clean one."""
    fs.invalidate_cache()

    def table(name: str, columns: list[str]) -> pd.DataFrame:
        with fs.open(f"{BUCKET}/runs/{run}/{name}", "rb") as fh:
            return pd.read_parquet(fh)[columns]

    files = sorted(fs.find(f"{BUCKET}/runs/{run}/embeddings"))
    emb = pd.concat([pd.read_parquet(fs.open(f, "rb")) for f in files]).dropna(subset=["embedding"])
    emb = emb.sort_values(["image_id", "frame_index"]).reset_index(drop=True)
    return {
        "manifest": table("manifest.parquet", ["rank", "image_id", "frame_index", "score", "is_seed"]),
        "embedding": np.stack(emb["embedding"].to_numpy()),
        "duplicates": table("duplicates.parquet", ["group_id", "image_id", "frame_index", "source_uri", "kind"]),
        "outliers": table("outliers.parquet", ["rank", "image_id", "frame_index", "flagged"]),
        "errors": table("errors.parquet", ["source_uri", "stage", "error_type"]),
    }


@pytest.mark.parametrize("cut", ["decoded/", "embeddings/", "_stages/rank.done"])
def test_store_going_away_ends_in_one_line_and_the_rerun_resumes(store, cut):
    fs, cfg = store
    run = f"cut-{cut.split('/')[0].strip('_')}"
    outage = Outage(cfg.storage.endpoint_url, f"PUT /{BUCKET}/runs/{run}/{cut}".encode())
    outage.start()
    sets = [*PIXELS, *S3_KEYS, f"storage.endpoint_url={outage.endpoint}"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "enrich_ray", "curate", "--archive", f"s3://{BUCKET}/archive",
             "--out", f"s3://{BUCKET}/runs/{run}", *[a for s in sets for a in ("--set", s)]],
            env=env, capture_output=True, text=True, timeout=600,
        )
        assert outage.down.is_set(), f"the run never wrote {cut}: {proc.stderr[-2000:]}"
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("enrich-ray curate: error: the object store at " + outage.endpoint), last
        assert "cannot be reached" in last

        # Nothing half-written counts as complete: the markers left are those of the stages before the cut.
        fs.invalidate_cache()
        done = sorted(p.rsplit("/", 1)[-1][: -len(".done")] for p in fs.glob(f"{BUCKET}/runs/{run}/_stages/*.done"))
        cut_stage = {"decoded/": "decode", "embeddings/": "embed", "_stages/rank.done": "rank"}[cut]
        before = [s for s in STAGES[: STAGES.index(cut_stage)] if s != "train"]
        assert done == sorted(before)
        markers = {s: fs.cat_file(f"{BUCKET}/runs/{run}/_stages/{s}.done") for s in done}

        outage.start()  # the store is back, on the same port, with what it held
        resumed = load_config(None, sets)
        curate(f"s3://{BUCKET}/archive", f"s3://{BUCKET}/runs/{run}", resumed)
        fs.invalidate_cache()
        assert {s: fs.cat_file(f"{BUCKET}/runs/{run}/_stages/{s}.done") for s in done} == markers  # resumed, not redone
        _assert_same(_outputs(fs, "clean"), _outputs(fs, run))
    finally:
        outage.stop()
