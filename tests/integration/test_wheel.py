"""The built wheel works where a user installs it: a fresh virtualenv, run from an unrelated folder.

The wheel is built from a copy of the files a build reads (so nothing in the source tree helps),
installed with --no-deps into a new venv whose dependencies come from this environment through
a .pth file (nothing is downloaded), and then `enrich-ray --version`, `pack` and `curate` run
from a temporary folder on a few synthetic PNGs, training a small β-VAE on a two-CPU local Ray.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from enrich_ray import __version__

pytestmark = [pytest.mark.slow, pytest.mark.ray]
ROOT = Path(__file__).resolve().parents[2]
BUILD_INPUTS = ["pyproject.toml", "setup.py", "README.md", "LICENSE", "enrich_ray", "configs"]


def _run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, src / name)
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", dist, src], src)
    (whl,) = dist.glob("enrich_ray-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A new venv holding only the wheel; this environment's site-packages supply its dependencies."""
    venv = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", "--without-pip", "--clear", venv], venv)
    python = venv / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], venv).stdout.strip())
    (site / "_enrich_ray_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --ignore-installed: pip must not see (nor uninstall) this environment's own enrich_ray through the .pth
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--ignore-installed", "-q",
          wheel], venv)
    return venv


def _env(venv: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS", "VIRTUAL_ENV")}
    return {**env, "PATH": f"{venv / 'bin'}{os.pathsep}{env['PATH']}", "RAY_USAGE_STATS_ENABLED": "0"}


def test_wheel_holds_every_module_the_configs_and_the_license(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "enrich_ray").rglob("*.py") if "__pycache__" not in p.parts}
    configs = {f"enrich_ray/configs/{p.name}" for p in (ROOT / "configs").glob("*.yaml")}
    assert modules - names == set() and configs - names == set() and {"enrich_ray/configs/curate.yaml"} <= configs
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert f"Version: {__version__}" in metadata and "License-Expression: Apache-2.0" in metadata


def test_installed_wheel_runs_curate_from_any_folder(venv, tmp_path):
    env = _env(venv)
    where = _run([venv / "bin" / "python", "-c",
                  "import enrich_ray; from enrich_ray.config import packaged_config; "
                  "print(enrich_ray.__file__); print(packaged_config('curate.yaml'))"], tmp_path, env).stdout.split()
    assert all(Path(p).resolve().is_relative_to(venv.resolve()) for p in where), where  # the wheel, not the source tree
    cli = venv / "bin" / "enrich-ray"
    assert _run([cli, "--version"], tmp_path, env).stdout.strip() == f"enrich-ray {__version__}"

    rng = np.random.default_rng(0)
    (tmp_path / "scans").mkdir()
    for i in range(8):
        y, x = np.mgrid[:48, :48]
        image = 120 + 100 * np.sin(x / (2 + i)) * np.cos(y / (3 + i % 3)) + rng.normal(0, 8, (48, 48))
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(tmp_path / "scans" / f"scan{i}.png")
    _run([cli, "pack", "scans", "--out", "archive"], tmp_path, env)
    # Two CPUs: with one, the embedding actor holds it and the Parquet reads feeding it never start.
    _run([cli, "curate", "--archive", "archive", "--out", "run", "--set", "runtime.num_cpus=2",
          "--set", "vae.max_epochs=1", "--set", "vae.sample_size=8", "--set", "vae.latent_dim=8",
          "--set", "decode.size=32", "--set", "embed.batch_size=8"], tmp_path, env, timeout=240)
    run = tmp_path / "run"
    for name in ("manifest.parquet", "manifest.csv", "report.html", "summary.json"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["counts"]["frames_embedded"] == 8 and summary["counts"]["ranked"] == 8
