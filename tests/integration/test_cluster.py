"""Cluster submission as README documents it: `ray job submit` to a local `ray start --head` with token auth."""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.integration.conftest import _free_port

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]


def test_ray_job_submit_runs_curate(sample_archive, tmp_path):
    bin_dir = Path(sys.executable).parent
    port, dashboard = _free_port(), _free_port()
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    ray = str(bin_dir / "ray")
    # --block keeps the head in this one process group: stopping it stops this cluster alone
    # (`ray stop` would stop every Ray on the machine). A short temp dir: Unix socket paths are short.
    head = subprocess.Popen([ray, "start", "--head", "--block", "--num-cpus=3", f"--port={port}",
                             f"--dashboard-port={dashboard}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                             f"--temp-dir={tempfile.mkdtemp(prefix='ray')}"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        out = tmp_path / "run"
        submit = [ray, "job", "submit", f"--address=http://127.0.0.1:{dashboard}", "--working-dir", str(ROOT),
                  "--runtime-env", str(ROOT / "configs" / "runtime_env.yaml"), "--",
                  "python", "jobs/curate.py", "--archive", str(sample_archive), "--out", str(out),
                  "--set", "embed.embedder=pixels", "--set", "embed.batch_size=16"]
        for _ in range(36):  # the head and its job agent can take a while to come up on a loaded machine
            job = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
            if not any(m in job.stdout + job.stderr for m in ("No available agent", "Failed to connect", "Connection refused")):
                break
            time.sleep(5)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "succeeded" in (job.stdout + job.stderr).lower()
        summary = json.loads((out / "summary.json").read_text())
        assert summary["checks"]["every_image_decoded_or_error"] and summary["counts"]["ranked"] > 0

        denied = subprocess.run(
            [ray, "job", "submit", f"--address=http://127.0.0.1:{dashboard}", "--", "python", "-c", "print(1)"],
            env={**env, "RAY_AUTH_TOKEN": "wrong"}, capture_output=True, text=True, timeout=120,
        )
        assert denied.returncode != 0  # token authentication is on
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(120)
