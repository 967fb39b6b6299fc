"""A plain run prints a handful of lines a person reads; Ray's and the libraries' messages go to run.log.

One `enrich-ray demo` (pydicom's real test files, packed and curated on a real local Ray) and one
`enrich-ray curate --quiet` of its archive with its model, each in a fresh process as a person
runs them; the console is stdout and stderr together.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from enrich_ray.pipelines.stages import STAGES

MAX_LINES = 25
RESULT_LINES = ("images in:", "report:", "no frame could be embedded")
# What Ray, Ray Data and the libraries print on their own: none of it belongs on a plain console.
CHATTER = ("INFO", "WARNING ray", "Started a local Ray instance", "Token authentication", "streaming_executor",
           "Running Dataset", "Total Progress", "faiss", "pid=", "core_worker", "UserWarning", "Invalid value for VR")


def _run(*args: str) -> tuple[int, list[str]]:
    """enrich-ray on a local Ray: its exit code and console lines (a line redrawn with carriage returns counts once)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "enrich_ray", *args], capture_output=True, timeout=900, env=env)
    console = proc.stdout.decode() + proc.stderr.decode()
    return proc.returncode, [line for line in console.split("\n") if line.strip()]


def _shown(line: str) -> str:
    """What a terminal shows of a line drawn over with carriage returns: its last drawing."""
    return line.split("\r")[-1].rstrip()


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("console") / "demo"
    code, lines = _run("demo", "--out", str(out))
    assert code == 0, "\n".join(lines[-40:])
    return out, lines


def test_a_plain_run_prints_a_line_per_stage_and_the_result(demo):
    out, lines = demo
    assert len(lines) < MAX_LINES, "\n".join(lines)
    shown = [_shown(line) for line in lines]
    for stage in STAGES:
        mine = [line for line in shown if re.fullmatch(rf"{stage}: .+ \(\d+\.\d s\)", line)]
        assert len(mine) == 1, (stage, shown)
    (train,) = [line for line in shown if line.startswith("train: ")]
    assert re.match(r"train: \d+ epochs \(stopped: \w+\), validation loss \d+\.\d nats per image", train), train
    assert any(line.startswith("images in: 233;") for line in shown), shown
    assert f"report: {out / 'run' / 'report.html'}" in shown and (out / "run" / "report.html").is_file()
    leaked = [line for line in lines if any(word in line for word in CHATTER)]
    assert not leaked, leaked


def test_ray_and_library_messages_go_to_run_log(demo):
    out, lines = demo
    printed = [line for line in lines if "run.log" in line]
    assert len(printed) == 1 and printed[0].startswith("log: "), printed
    path = Path(printed[0].removeprefix("log: "))
    assert path == out / "run" / "run.log" and path.is_file()
    text = path.read_text()
    for said in ("INFO ray._private.worker: Started a local Ray instance", "INFO ray.data.", "faiss.loader",
                 "decode: done in", "report: done in"):
        assert said in text, said


def test_run_log_holds_no_header_phi(demo):
    import warnings

    import pydicom

    from enrich_ray.pipelines.demo import demo_sources

    out, _ = demo
    phi = set()
    for path in (p for folder in demo_sources() for p in Path(folder).rglob("*") if p.is_file()):
        try:
            with warnings.catch_warnings():  # the broken files among them warn; they are read for their headers only
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            values = [str(ds.get(k, "") or "").strip() for k in ("PatientName", "PatientID", "PatientBirthDate",
                                                              "InstitutionName", "ReferringPhysicianName")]
        except Exception:  # not DICOM, or a header pydicom cannot read: nothing to look for
            continue
        phi.update(v for v in values if len(v) >= 6)
    assert len(phi) > 20, "pydicom's files should carry header PHI to look for"
    text = (out / "run" / "run.log").read_text()
    assert not [v for v in phi if v in text]


def test_quiet_prints_only_the_result_lines(demo, tmp_path):
    out, _ = demo
    run = tmp_path / "quiet"
    code, lines = _run("curate", "--archive", str(out / "archive"), "--out", str(run),
                       "--model", str(out / "run" / "model"), "--quiet")
    assert code == 0, "\n".join(lines[-40:])
    assert 1 <= len(lines) <= 2 and all(line.startswith(RESULT_LINES) for line in lines), lines
    assert "Started a local Ray instance" in (run / "run.log").read_text()  # the messages still have a home


def test_a_nightly_prints_a_line_per_stage_as_curate_does(demo, tmp_path):
    out, _ = demo
    catalog = tmp_path / "catalog"
    code, lines = _run("nightly", "--catalog", str(catalog), "--archive", str(out / "archive"), "--night", "2026-11-20",
                       "--model", str(out / "run" / "model"))
    assert code == 0, "\n".join(lines[-40:])
    assert len(lines) < MAX_LINES, "\n".join(lines)
    shown = [_shown(line) for line in lines]
    for stage in ("select", *STAGES):
        mine = [line for line in shown if re.fullmatch(rf"{stage}: .+ \(\d+\.\d s\)", line)]
        assert len(mine) == 1, (stage, shown)
    assert any(line.startswith("select: 233 new images, 0 re-sent") for line in shown), shown
    assert any(line.startswith("train: none: the model given") for line in shown), shown
    assert any(line.startswith("night 2026-11-20: 233 new images") for line in shown), shown
    assert not [line for line in lines if any(word in line for word in CHATTER)]
    assert "Started a local Ray instance" in (catalog / "run.log").read_text()


def test_lines_printed_by_other_threads_go_to_the_log_and_results_to_stdout(tmp_path, capfd):
    """Ray's listener threads print raylet warnings to sys.stdout; while a run logs they reach run.log."""
    import argparse
    import threading

    from enrich_ray.cli import Console, _run_log
    from enrich_ray.config import load_config

    args = argparse.Namespace(command="curate", out=str(tmp_path / "run"), verbose=False, quiet=True)
    console = Console(sys.stderr, verbose=False, quiet=True, plain=True)
    with _run_log(args, load_config(), console):
        listener = threading.Thread(target=print, args=("(raylet) WARNING: 8 PYTHON worker processes",))
        listener.start()
        listener.join()
        print("images in: 3")
    out, err = capfd.readouterr()
    assert out == "images in: 3\n" and "raylet" not in err
    assert "(raylet) WARNING: 8 PYTHON worker processes" in (tmp_path / "run" / "run.log").read_text()
