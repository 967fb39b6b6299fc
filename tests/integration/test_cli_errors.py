"""Bad input ends in one line naming the cause and exit code 2, never a traceback."""
from __future__ import annotations

import os
import subprocess
import sys

import boto3

from tests.integration.conftest import start_moto


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "enrich_ray", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def _one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.strip().splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for word in words:
        assert word in lines[0], lines[0]


def test_missing_archive(tmp_path):
    _one_line_error(_run("curate", "--archive", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")), "archive not found")


def test_empty_archive(tmp_path):
    (tmp_path / "empty").mkdir()
    _one_line_error(_run("curate", "--archive", str(tmp_path / "empty"), "--out", str(tmp_path / "run")), "no Parquet shards")


def test_malformed_config(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("embed: {embedder: vae\n")
    _one_line_error(_run("curate", "--archive", str(tmp_path), "--out", str(tmp_path / "r"), "--config", str(cfg)), "not valid YAML")


def test_unreachable_endpoint(tmp_path):
    proc = _run("pack", "s3://scans/x", "--out", str(tmp_path / "a"), "--set", "storage.endpoint_url=http://127.0.0.1:9",
                env={"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_MAX_ATTEMPTS": "1",
                     "AWS_RETRY_MODE": "standard"})
    _one_line_error(proc, "127.0.0.1:9")


def test_bucket_without_permission(tmp_path):
    # moto checks credentials after the first three actions (create the bucket and put one object, as boto3 sends them).
    server, endpoint = start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "3"})
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="a", aws_secret_access_key="b", region_name="us-east-1")
        s3.create_bucket(Bucket="locked")
        s3.put_object(Bucket="locked", Key="archive/part-00000.parquet", Body=b"x")
        proc = _run("curate", "--archive", "s3://locked/archive", "--out", str(tmp_path / "run"),
                    "--set", f"storage.endpoint_url={endpoint}",
                    env={"AWS_ACCESS_KEY_ID": "nobody", "AWS_SECRET_ACCESS_KEY": "nothing"})
        _one_line_error(proc, "locked")
    finally:
        server.terminate()
        server.wait(10)
