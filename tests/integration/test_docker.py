"""The image of infra/docker/Dockerfile builds and runs the installed CLI: `enrich-ray --version` and
the demo (pydicom's test files, curated on a local Ray inside the container).

Needs a running Docker engine (`docker info` answers) and the network the build pulls from (the Ray
image, torch, the dependencies); elsewhere it skips with the reason. TORCH_INDEX in the environment
is passed on as the build argument of that name (https://download.pytorch.org/whl/cpu: a CPU torch).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from enrich_ray import __version__

pytestmark = [pytest.mark.slow, pytest.mark.timeout(7200)]  # the build pulls the multi-GB Ray GPU image
ROOT = Path(__file__).resolve().parents[2]
TAG = f"enrich-ray:test-{__version__}"


def docker_engine() -> str:
    """The docker client's path, when a Docker engine answers it; otherwise the test skips, saying why."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client on PATH (Debian: apt-get install docker.io)")
    try:
        info = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.skip("`docker info` did not answer within 60 s: no Docker engine to build the image with")
    if info.returncode != 0:
        said = next((line.strip() for line in info.stderr.splitlines() if line.strip()), f"exit {info.returncode}")
        pytest.skip(f"no running Docker engine (`docker info` failed: {said}); the docker client alone cannot build")
    return docker


@pytest.fixture(scope="module")
def image() -> str:
    docker = docker_engine()
    build_args = ["--build-arg", f"TORCH_INDEX={os.environ['TORCH_INDEX']}"] if os.environ.get("TORCH_INDEX") else []
    build = subprocess.run([docker, "build", "-f", "infra/docker/Dockerfile", *build_args, "-t", TAG, "."],
                           cwd=ROOT, capture_output=True, text=True, env={**os.environ, "DOCKER_BUILDKIT": "1"})
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    yield TAG
    subprocess.run([docker, "image", "rm", "-f", TAG], capture_output=True)


def docker_run(image: str, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run([shutil.which("docker"), "run", "--rm", "--shm-size=2g", image, *command],
                          capture_output=True, text=True)


def test_image_answers_version(image):
    proc = docker_run(image, "enrich-ray", "--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"enrich-ray {__version__}", proc.stdout + proc.stderr


def test_image_runs_the_demo(image):
    proc = docker_run(image, "sh", "-c", "enrich-ray demo --out /tmp/demo && test -s /tmp/demo/run/report.html")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "report: /tmp/demo/run/report.html" in proc.stdout, proc.stdout
