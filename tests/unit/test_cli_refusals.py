"""Bad input to every command is refused before any output: exit 2, one line on stderr, no traceback.

Each case runs the real command line in a fresh process (its logging and stderr as a user sees
them); none needs Ray. Every option of every command has help text, and --version answers.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from enrich_ray import __version__
from enrich_ray.cli import build_parser, main

# tqdm's bar, as pack's scan draws it on stderr ("pack: scan: 100%|███| 2/2 [...]" or "0file [...]").
PROGRESS_BAR = re.compile(r"^[\w :-]+: +(\d+%\||\d+\w* \[)")


def _refused(args: list[str], cwd: Path, *words: str) -> str:
    """Run enrich-ray with args in cwd; assert exit 2 and exactly one line, naming words; return it."""
    proc = subprocess.run([sys.executable, "-m", "enrich_ray", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and proc.stdout == "", proc.stdout + proc.stderr
    lines = [line for line in re.split(r"[\r\n]+", proc.stderr) if line.strip() and not PROGRESS_BAR.match(line)]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"enrich-ray {args[0]}: error: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def _embeddings(path: Path, n: int = 20) -> list[str]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    ids = [f"img{i:03d}" for i in range(n)]
    pq.write_table(pa.table({"image_id": ids, "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 8)}), path)
    return ids


def test_pack_of_an_empty_folder_is_refused(tmp_path):
    (tmp_path / "scans").mkdir()
    _refused(["pack", "scans", "--out", "archive"], tmp_path, "nothing to pack", "no file under scans")
    assert not (tmp_path / "archive").exists()


def test_pack_without_a_readable_image_names_each_cause(tmp_path):
    src = tmp_path / "scans"
    src.mkdir()
    (src / "notes.txt").write_text("not an image")
    (src / "table.csv").write_text("a,b\n1,2\n")
    (src / "gone.png").symlink_to(tmp_path / "deleted.png")  # listed, but its bytes cannot be read
    line = _refused(["pack", "scans", "--out", "archive"], tmp_path, "none of the 3 file(s) under scans",
                    "2 not an image", "1 unreadable (FileNotFoundError)")
    assert "DICOM, PNG or JPEG" in line
    assert not (tmp_path / "archive").exists()


def test_select_smi_without_a_query_set_is_refused(tmp_path):
    _embeddings(tmp_path / "emb.parquet")
    _refused(["select", "--embeddings", "emb.parquet", "--out", "ranked", "--ranker", "smi"], tmp_path,
             "--ranker smi needs a query set", "selection.smi_query")
    assert not (tmp_path / "ranked").exists()


def test_select_smi_toward_a_folder_points_to_curate(tmp_path):
    _embeddings(tmp_path / "emb.parquet")
    (tmp_path / "exemplars").mkdir()
    _refused(["select", "--embeddings", "emb.parquet", "--out", "ranked", "--ranker", "smi",
              "--set", "selection.smi_query=exemplars"], tmp_path, "selection.smi_query exemplars", "enrich-ray curate")
    assert not (tmp_path / "ranked").exists()


@pytest.mark.parametrize("files", [[], ["manifest.csv", "notes/readme.txt"]], ids=["empty", "no-parquet"])
def test_select_on_a_folder_without_parquet_is_refused(tmp_path, files):
    (tmp_path / "emb").mkdir()
    for name in files:
        (tmp_path / "emb" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "emb" / name).write_text("image_id\nimg000\n")
    _refused(["select", "--embeddings", "emb", "--out", "ranked"], tmp_path,
             f"no .parquet file among the folder's {len(files)} file(s)")
    assert not (tmp_path / "ranked").exists()


def test_select_seed_set_of_zero_is_refused(tmp_path):
    _embeddings(tmp_path / "emb.parquet")
    _refused(["select", "--embeddings", "emb.parquet", "--out", "ranked", "--seed-set", "0"], tmp_path, "--seed-set 0")
    assert not (tmp_path / "ranked").exists()


def test_seed_is_the_old_name_of_seed_set():
    parser = build_parser()
    new = parser.parse_args(["select", "--embeddings", "e", "--out", "o", "--seed-set", "labeled.csv"])
    old = parser.parse_args(["select", "--embeddings", "e", "--out", "o", "--seed", "labeled.csv"])
    assert new.seed_set == old.seed_set == "labeled.csv"


def test_every_option_has_help_text():
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    missing = [f"{name} {action.option_strings or action.dest}"
               for name, sub in [("enrich-ray", parser), *commands.choices.items()]
               for action in sub._actions
               if not isinstance(action, argparse._SubParsersAction) and not (action.help or "").strip()]
    assert not missing, missing
    assert len(commands.choices) >= 8


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"enrich-ray {__version__}"


def _tiny_archive(cwd: Path) -> None:
    """A real packed archive of four PNG frames at cwd/archive (no Ray), for the commands that read one."""
    import cv2

    from enrich_ray.io.pack import pack

    src = cwd / "scans"
    src.mkdir()
    for i in range(2):
        cv2.imwrite(str(src / f"f{i}.png"), np.full((16, 16), 40 * (i + 1), np.uint8))
    for i, folder in enumerate(("a", "b")):  # two frames of one name in two folders
        (src / folder).mkdir()
        cv2.imwrite(str(src / folder / "g.png"), np.full((16, 16), 150 + 40 * i, np.uint8))
    pack([str(src)], str(cwd / "archive"), progress=False)


def _has_gpu() -> bool:
    import torch

    return torch.cuda.device_count() > 0


# Bad invocations across every command: (arguments, words the one line must hold). Each must exit 2
# before any work, with one line, no traceback, and leave the folder as it was.
BAD_INVOCATIONS = [
    (["pack", "missing_folder", "--out", "out"], ["missing_folder"]),
    (["pack", "scans", "--out", "out", "--set", "pack.no_such_key=1"], ["pack.no_such_key"]),
    (["pack", "scans", "--out", "out", "--set", "pack.require_patient_key=true"], ["ENRICH_RAY_PATIENT_KEY", "is not set"]),
    (["train-vae", "--archive", "missing_archive", "--out", "model"], ["missing_archive"]),
    (["train-vae", "--archive", "archive", "--out", "model", "--set", "vae.max_epochs=0"], ["vae.max_epochs"]),
    (["curate", "--archive", "archive", "--out", "run", "--set", "analysis.near_duplicate_threshold=5"], ["near_duplicate_threshold", "5"]),
    (["curate", "--archive", "archive", "--out", "run", "--set", "selection.k=-3"], ["selection.k", "-3"]),
    (["curate", "--archive", "archive", "--out", "run", "--set", "embed.batch_size=0"], ["embed.batch_size"]),
    (["curate", "--archive", "archive", "--out", "run", "--set", "analysis.near_duplicate_content_alone=0.5"], ["near_duplicate_content_alone"]),
    (["curate", "--archive", "archive", "--out", "run", "--set", "runtime.num_cpus=1"], ["runtime.num_cpus"]),
    (["curate", "--archive", "archive", "--out", "run", "--config", "missing.yaml"], ["missing.yaml"]),
    (["curate", "--archive", "archive", "--out", "run", "--set", "selection.ranker=kmeans"], ["selection.ranker", "kmeans"]),
    (["curate", "--archive", "missing_archive", "--out", "run"], ["missing_archive"]),
    (["curate", "--archive", "archive", "--out", "run", "--set", "analysis.leakage_split=missing_split.csv"], ["missing_split.csv", "not found"]),
    (["curate", "--archive", "archive", "--out", "run", "--set", "analysis.leakage_split=fold"], ["no column 'fold'"]),
    (["curate", "--archive", "archive", "--out", "run", "--set", "analysis.leakage_split=bad_split.csv"], ["'fold1'", "train, val, test"]),
    (["curate", "--archive", "archive", "--out", "run", "--set", "analysis.leakage_split=ambiguous_split.csv"], ["'g.png'", "ends 2 archive paths"]),
    (["select", "--embeddings", "missing.parquet", "--out", "ranked"], ["missing.parquet"]),
    (["select", "--embeddings", "emb.parquet", "--out", "ranked", "--k", "-1"], ["-1"]),
    (["nightly", "--catalog", "catalog", "--archive", "archive", "--night", "2026-13-45"], ["2026-13-45"]),
    (["nightly", "--catalog", "catalog", "--archive", "missing_archive", "--night", "2026-11-20"], ["missing_archive"]),
    (["nightly", "--catalog", "catalog", "--archive", "archive", "--night", "2026-11-20", "--set", "analysis.leakage_split=x.csv"],
     ["analysis.leakage_split", "not a night"]),
    (["reembed", "--catalog", "missing_catalog", "--model", "model"], ["missing_catalog"]),
    (["export", "--run", "missing_run", "--to", "labelstudio", "--out", "out"], ["missing_run", "summary.json"]),
    (["export", "--run", "archive", "--to", "csv", "--out", "out", "--top", "0"], ["--top 0"]),
    (["export", "--run", "archive", "--to", "kos", "--out", "out", "--title", "Of No Interest"], ["Of No Interest", "CID 7010"]),
    (["export", "--run", "archive", "--to", "csv", "--out", "out", "--title", "For Research"], ["--title", "--to kos only"]),
    (["export", "--run", "archive", "--to", "labelstudio", "--out", "out", "--document-root", "elsewhere"], ["document root"]),
    (["export", "--run", "archive", "--to", "csv", "--out", "dicomweb://127.0.0.1:9/dicom-web"], ["--to kos only"]),
    (["export", "--run", "archive", "--to", "kos", "--out", "dicomweb://127.0.0.1:9/dicom-web?Modality=US"], ["takes no query"]),
    (["labels", "--catalog", "missing_catalog", "--from", "labels.csv"], ["missing_catalog", "catalog.json"]),
    (["labels", "--catalog", "labels_catalog", "--from", "missing.json"], ["missing.json", "not found"]),
    (["labels", "--catalog", "labels_catalog", "--from", "broken_export.json"], ["broken_export.json", "not valid JSON"]),
    (["labels", "--catalog", "labels_catalog", "--from", "cvat.xml"], ["cvat.xml", "root element is <dataset>"]),
    (["labels", "--catalog", "labels_catalog", "--from", "labels.csv"], ["labels.csv", "columns image_id and label"]),
    (["leakage", "--run", "missing_run", "--split", "bad_split.csv"], ["missing_run", "not a finished curate run"]),
    (["evaluate", "--dataset", "missing.npz", "--out", "eval"], ["missing.npz"]),
    (["evaluate", "--dataset", "scans", "--out", "eval", "--set", "evaluate.fractions=[0.5,0.1]"], ["evaluate.fractions"]),
    (["evaluate", "--dataset", "scans", "--out", "eval", "--set", "evaluate.rankers=[enrich]"], ["evaluate.rankers", "random"]),
    (["demo", "--out", "demo", "--set", "index.k=0"], ["index.k"]),
    # GPU actors asked of a local Ray on a machine without a GPU (where one is, the row is not asked).
    *([(["curate", "--archive", "archive", "--out", "run", "--set", "embed.num_gpus=1"], ["embed.num_gpus=1", "0 GPU"])]
      if not _has_gpu() else []),
]


@pytest.fixture(scope="module")
def bad_input_folder(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("bad_input")
    _tiny_archive(cwd)
    _embeddings(cwd / "emb.parquet")
    (cwd / "labels_catalog").mkdir()  # a catalog of no night yet, and labeling tools' exports that are not
    (cwd / "labels_catalog" / "catalog.json").write_text('{"nights": [], "model_hash": null, "index": null}')
    (cwd / "broken_export.json").write_text('[{"data": {"image_id": "a"}, ')
    (cwd / "cvat.xml").write_text("<dataset><image name='a.png'/></dataset>")
    (cwd / "labels.csv").write_text("image,class\na.png,benign\n")
    (cwd / "bad_split.csv").write_text("source_uri,split\nf0.png,train\nf1.png,fold1\n")
    (cwd / "ambiguous_split.csv").write_text("source_uri,split\ng.png,train\nf1.png,test\n")  # g.png: a/g.png or b/g.png?
    return cwd


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("args,words", BAD_INVOCATIONS, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD_INVOCATIONS])
def test_bad_invocations_are_refused_before_any_work(bad_input_folder, args, words):
    before = _tree(bad_input_folder)
    _refused(args, bad_input_folder, *words)
    assert _tree(bad_input_folder) == before  # nothing written, nothing lost


def test_the_bad_invocation_table_covers_every_command():
    assert len(BAD_INVOCATIONS) >= 15
    assert {a[0] for a, _ in BAD_INVOCATIONS} == set(build_parser()._subparsers._group_actions[0].choices)
