"""A real two-node Ray cluster: curate S3 to S3 through `ray job submit`, the work on the worker node.

Two `ray start` on one machine, each in its own process group with its own temp dir and ports: a
head with no CPU (the job's driver runs there, so every decode task and embedding actor must
land elsewhere) and a worker node with 2 CPUs on another loopback address. The archive and the
run folder live on the local moto server only; the outputs must equal a local run's, Ray's state
API must place decode and embedding on the worker, and neither node's disk may gain a data file.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import secrets
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pandas as pd
import pytest
import s3fs

from enrich_ray.config import load_config
from enrich_ray.io.pack import pack
from enrich_ray.pipelines.curate import OUTPUTS, curate
from tests.integration.conftest import S3_KEYS
from tests.local_nodes import RAY, free_port, start_node, stop_nodes

pytestmark = [pytest.mark.ray, pytest.mark.skipif(sys.platform != "linux", reason="needs Linux: 127.0.0.2 and inotify")]
ROOT = Path(__file__).resolve().parents[2]
PIXELS = ["embed.embedder=pixels", "embed.batch_size=16", "decode.batch_size=8"]
WORKER_IP = "127.0.0.2"  # a second loopback address: the worker is a node of its own, not the head's twin
# What a stage would leave if it used a node's disk for data: the run's own output names, and data files.
OUTPUT_NAMES = {name for names in OUTPUTS.values() for name in names}
DATA_SUFFIXES = {".parquet", ".png", ".jpg", ".jpeg", ".dcm", ".faiss", ".safetensors", ".html", ".csv", ".npy", ".pt"}
# The file tempfile.gettempdir() creates and removes once in every Python process, to test that TMPDIR is writable.
PROBE = re.compile(r"[a-z0-9_]{8}")
RETRY = ("No available agent", "Failed to connect", "Connection refused", "Cannot connect")


def test_curate_s3_to_s3_on_a_worker_node_equals_local(s3_endpoint, sample_source, tmp_path, request):
    boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                 region_name="us-east-1").create_bucket(Bucket="cluster")
    storage = [*S3_KEYS, f"storage.endpoint_url={s3_endpoint}"]
    fs = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": s3_endpoint})
    fs.put(str(sample_source) + "/", "cluster/incoming/", recursive=True)
    cfg = load_config(None, [*PIXELS, *storage])
    pack(["s3://cluster/incoming"], "s3://cluster/archive", cfg.pack, cfg.storage, progress=False)

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    with _cluster(env, tmp_path) as (dashboard, disks), _created_in(disks) as created:
        job = _submit(dashboard, env, [
            "python", "jobs/curate.py", "--archive", "s3://cluster/archive", "--out", "s3://cluster/runs/night",
            *[a for s in [*PIXELS, *storage] for a in ("--set", s)],
        ])
        assert job.returncode == 0 and "succeeded" in (job.stdout + job.stderr).lower(), job.stdout[-3000:] + job.stderr[-3000:]
        nodes = _state(dashboard, env, "nodes")
        worker = {n["node_id"] for n in nodes if "worker" in n["resources_total"]}
        head = {n["node_id"] for n in nodes if n["is_head_node"]}
        assert len(worker) == len(head) == 1 and worker != head
        tasks = _state(dashboard, env, "tasks")
        decode = [t for t in tasks if "_decode_batch" in t["name"]]
        embed = [t for t in tasks if t["name"] == "_EmbedActor.embed_file"]
        assert decode and embed, sorted({t["name"] for t in tasks})
        assert {t["node_id"] for t in decode + embed} == worker
        assert {a["node_id"] for a in _state(dashboard, env, "actors") if a["class_name"] == "_EmbedActor"} == worker
        # The driver (head) and the worker kept every data file off their disks, for good or for a moment (a
        # scratch folder in TMPDIR); the driver did run under the head's TMPDIR: its run log is there.
        assert [f for d in disks for f in _data_files(d)] == []
        assert {folder: names for folder, names in created().items() if names} == {}
        assert list((tmp_path / "head-tmp").glob("enrich-ray-curate-*.log"))
        denied = subprocess.run([RAY, "job", "submit", f"--address={dashboard}", "--", "python", "-c", "print(1)"],
                                env={**env, "RAY_AUTH_TOKEN": "wrong"}, capture_output=True, text=True, timeout=120)
        assert denied.returncode != 0  # token authentication is on

    request.getfixturevalue("ray_cluster")  # the local run, on the session's in-process Ray, once the cluster is gone
    pack([str(sample_source)], str(tmp_path / "archive"), progress=False)
    local = curate(str(tmp_path / "archive"), str(tmp_path / "run"), load_config(None, PIXELS))
    assert local.exit_code == 0
    fs.invalidate_cache()
    remote = json.loads(fs.cat_file("cluster/runs/night/summary.json"))
    assert remote["counts"] == local.counts and remote["checks"] == {k: True for k in remote["checks"]}
    # Outliers by frame, not by rank: frames of one family share a score, and their order within it is float noise.
    for name, key in [("manifest.parquet", ["rank"]), ("duplicates.parquet", ["group_id", "image_id", "source_uri"]),
                      ("outliers.parquet", ["image_id", "frame_index"]), ("errors.parquet", ["stage", "image_id", "frame_index", "error_type"])]:
        drop = ["message"] + (["rank"] if name == "outliers.parquet" else [])
        with fs.open(f"cluster/runs/night/{name}", "rb") as fh:
            there = _comparable(pd.read_parquet(fh), "s3://cluster/incoming/", key, drop)
        here = _comparable(pd.read_parquet(tmp_path / "run" / name), f"{sample_source}/", key, drop)
        pd.testing.assert_frame_equal(there, here, check_exact=False, rtol=1e-5, atol=1e-6, check_dtype=False, obj=name)
    assert fs.exists("cluster/runs/night/report.html")


def _comparable(table: pd.DataFrame, prefix: str, key: list[str], drop: list[str]) -> pd.DataFrame:
    """A run's table with its source paths relative to the archive's source, rows in key order, columns `drop`
    dropped (an error message may name the path), so a run on S3 and one on local disk compare cell by cell."""
    table = table.drop(columns=[c for c in drop if c in table.columns])
    if "source_uri" in table.columns:
        assert table["source_uri"].dropna().str.startswith(prefix).all(), table["source_uri"].head()
        table = table.assign(source_uri=table["source_uri"].str.removeprefix(prefix))
    return table.sort_values(key, kind="stable", na_position="first").reset_index(drop=True)


@contextlib.contextmanager
def _cluster(env: dict, tmp_path: Path) -> Iterator[tuple[str, list[Path]]]:
    """A head (no CPU, resource head) and a worker node (2 CPUs, resource worker), each `ray start --block` in a
    process group of its own, stopped worker first; yields the dashboard's address and the folders each node
    may write to (its Ray temp dir and its TMPDIR)."""
    # Short Ray temp dirs (Unix socket paths are short); every port chosen, so another Ray on the machine never collides.
    head_dir, worker_dir = tempfile.mkdtemp(prefix="rayh"), tempfile.mkdtemp(prefix="rayw")
    head_tmp, worker_tmp = tmp_path / "head-tmp", tmp_path / "worker-tmp"
    head_tmp.mkdir()
    worker_tmp.mkdir()
    gcs, dashboard = free_port(), f"http://127.0.0.1:{free_port()}"
    nodes: list[subprocess.Popen] = []
    try:
        nodes.append(start_node([
            "--head", f"--port={gcs}", "--num-cpus=0", '--resources={"head": 1}', "--include-dashboard=true",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard.rsplit(':', 1)[1]}",
            f"--ray-client-server-port={free_port()}", f"--temp-dir={head_dir}",
        ], {**env, "TMPDIR": str(head_tmp)}))
        _wait_for_nodes(dashboard, env, 1)
        nodes.append(start_node([
            f"--address=127.0.0.1:{gcs}", f"--node-ip-address={WORKER_IP}", "--num-cpus=2", '--resources={"worker": 1}',
            f"--temp-dir={worker_dir}",
        ], {**env, "TMPDIR": str(worker_tmp)}))
        _wait_for_nodes(dashboard, env, 2)
        yield dashboard, [Path(head_dir), head_tmp, Path(worker_dir), worker_tmp]
    finally:
        stop_nodes(nodes)  # the worker first: it drains against a live head
        for folder in (head_dir, worker_dir):
            shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _created_in(folders: list[Path]) -> Iterator[Callable[[], dict[Path, list[str]]]]:
    """While the block runs, a function giving the names created so far directly in each TMPDIR of `folders`
    (Linux inotify), the run log aside: a scratch file or folder a stage makes and removes again shows here though
    no scan would find it."""
    libc = ctypes.CDLL(None, use_errno=True)
    watched = {}
    try:
        for folder in (f for f in folders if f.name.endswith("-tmp")):
            watched[folder] = fd = libc.inotify_init1(os.O_NONBLOCK)
            assert fd >= 0 and libc.inotify_add_watch(fd, bytes(folder), 0x100 | 0x80) >= 0  # IN_CREATE, IN_MOVED_TO
        yield lambda: {folder: _names(fd) for folder, fd in watched.items()}
    finally:
        for fd in watched.values():
            os.close(fd)


def _names(fd: int) -> list[str]:
    """The names of the events queued on an inotify descriptor (struct inotify_event: wd, mask, cookie, len, name)."""
    data = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 1 << 16):
            data += chunk
    names, at = [], 0
    while at < len(data):
        size = struct.unpack_from("iIII", data, at)[3]
        names.append(data[at + 16:at + 16 + size].rstrip(b"\0").decode())
        at += 16 + size
    return [n for n in names if not (n.startswith("enrich-ray-curate-") and n.endswith(".log")) and not PROBE.fullmatch(n)]


def _wait_for_nodes(dashboard: str, env: dict, n: int) -> None:
    """Until the cluster has n live nodes (the head's dashboard and then the worker can take a while on a loaded machine)."""
    alive = 0
    for _ in range(60):
        with contextlib.suppress(subprocess.CalledProcessError, json.JSONDecodeError, subprocess.TimeoutExpired):
            alive = sum(node["state"] == "ALIVE" for node in _state(dashboard, env, "nodes"))
            if alive >= n:
                return
        time.sleep(3)
    raise AssertionError(f"the cluster at {dashboard} has {alive} live node(s), not {n}")


def _state(dashboard: str, env: dict, kind: str) -> list[dict]:
    """Ray's state API (`ray list KIND --detail`) for this cluster, as records."""
    out = subprocess.run([RAY, "list", kind, f"--address={dashboard}", "--detail", "--format=json", "--limit=10000"],
                         env=env, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout)


def _submit(dashboard: str, env: dict, entrypoint: list[str]) -> subprocess.CompletedProcess:
    """`ray job submit` with the project's runtime env, again while the head's job agent is not up yet."""
    submit = [RAY, "job", "submit", f"--address={dashboard}", "--working-dir", str(ROOT),
              "--runtime-env", str(ROOT / "configs" / "runtime_env.yaml"), "--", *entrypoint]
    for _ in range(36):
        job = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT, check=False)
        if not any(m in job.stdout + job.stderr for m in RETRY):
            return job
        time.sleep(5)
    return job


def _data_files(folder: Path) -> list[Path]:
    """Files under a node's folder that hold run data: a data file or output name outside the uploaded code, or
    anything the job added to its working dir (the driver's cwd). The run log of an S3 run is the one local file
    curate keeps (README: under the system temp folder)."""
    found = []
    for path in folder.rglob("*"):
        if not path.is_file() or "__pycache__" in path.parts:
            continue
        if path.name.startswith("enrich-ray-curate-") and path.suffix == ".log":
            continue
        parts = path.relative_to(folder).parts
        if "working_dir_files" in parts:  # _ray_pkg_<hash>/ holds the uploaded code, beside Ray's own lock files
            rel = parts[parts.index("working_dir_files") + 2:]
            if rel and not (ROOT / Path(*rel)).is_file():
                found.append(path)
        elif path.suffix.lower() in DATA_SUFFIXES or OUTPUT_NAMES & set(parts):
            found.append(path)
    return found
