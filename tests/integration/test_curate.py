"""The curate job end to end on a real local Ray cluster: accounting, outputs, resume, determinism."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from enrich_ray.config import load_config
from enrich_ray.pipelines.curate import EXIT_NOTHING_EMBEDDED, curate
from enrich_ray.pipelines.run_folder import RunFolder

pytestmark = pytest.mark.ray

PIXELS = ["embed.embedder=pixels", "embed.batch_size=16", "decode.batch_size=8"]


def _outputs(out) -> dict:
    """The outputs that must be identical between two runs of the same archive and config."""
    out = str(out)
    manifest = pd.read_parquet(f"{out}/manifest.parquet")
    emb = pd.read_parquet(f"{out}/embeddings").dropna(subset=["embedding"])
    emb = emb.sort_values(["image_id", "frame_index"]).reset_index(drop=True)
    return {
        "manifest": manifest[["rank", "image_id", "frame_index", "score", "is_seed"]],
        "embedding": np.stack(emb["embedding"].to_numpy()),
        "duplicates": pd.read_parquet(f"{out}/duplicates.parquet")[["group_id", "image_id", "frame_index", "source_uri", "kind"]],
        "outliers": pd.read_parquet(f"{out}/outliers.parquet")[["rank", "image_id", "frame_index", "flagged"]],
        "errors": pd.read_parquet(f"{out}/errors.parquet")[["source_uri", "stage", "error_type"]],
    }


def _assert_same(a: dict, b: dict) -> None:
    for key in ("manifest", "duplicates", "outliers", "errors"):
        pd.testing.assert_frame_equal(a[key], b[key], check_dtype=False, obj=key)
    np.testing.assert_array_equal(a["embedding"], b["embedding"])


@pytest.fixture(scope="module")
def pixel_run(ray_cluster, sample_archive, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "pixels"
    result = curate(str(sample_archive), str(out), load_config(None, PIXELS))
    return result, out


def test_every_input_ends_in_one_place(pixel_run, sample_archive):
    result, out = pixel_run
    summary = json.loads((out / "summary.json").read_text())
    counts = summary["counts"]
    assert summary["checks"] == {"every_image_decoded_or_error": True, "every_frame_embedded_or_error": True}
    assert counts["archive_images"] == counts["images_accounted"] >= 12  # 11 DICOM files and a blank PNG, with or without BUSI
    assert summary["index"]["recall_at_k"] >= 0.95 and summary["index"]["sample"] > 0  # the kNN graph's measured recall
    assert {"content_correlation", "distinct_frames", "participation_ratio"} <= set(summary["embedding"])
    errors = pd.read_parquet(out / "errors.parquet")
    failed = set(errors["source_uri"].str.rsplit("/", n=1).str[-1])
    assert {"MR_truncated.dcm", "broken.png"} <= failed
    assert (errors["message"].str.len() > 10).all()
    emri = pd.read_parquet(out / "embeddings").dropna(subset=["embedding"])
    assert emri["source_uri"].str.endswith("emri_small.dcm").sum() == 10  # a 10-frame MR: one row per frame
    excluded = pd.read_parquet(out / "excluded.parquet")
    assert result.exit_code == 0 and counts["frames_embedded"] == counts["ranked"] + len(excluded)
    assert sum(summary["excluded_from_ranking"].values()) == len(excluded)
    blank = excluded[excluded["source_uri"].str.endswith("blank frame.png")]
    assert list(blank["why"]) == ["blank"]  # junk leaves the ranking, with its reason
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert not set(zip(excluded["image_id"], excluded["frame_index"])) & set(zip(manifest["image_id"], manifest["frame_index"]))


def test_outputs_have_the_documented_columns(pixel_run):
    _, out = pixel_run
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert {"rank", "image_id", "frame_index", "source_uri", "ranker", "score", "is_seed"} <= set(manifest.columns)
    assert list(manifest["rank"]) == list(range(1, len(manifest) + 1))
    assert manifest["image_id"].nunique() + manifest.duplicated(["image_id"]).sum() == len(manifest)
    assert len(pd.read_csv(out / "manifest.csv")) == len(manifest)
    dups = pd.read_parquet(out / "duplicates.parquet")
    mr_family = dups[dups["source_uri"].str.contains("MR_small")]
    assert mr_family["group_id"].nunique() == 1 and len(mr_family) == 5  # one image, five encodings
    outliers = pd.read_parquet(out / "outliers.parquet")
    blank = outliers[outliers["source_uri"].str.endswith("blank frame.png")]
    assert len(blank) == 1 and blank["flagged"].all() and blank["is_constant"].all()
    html = (out / "report.html").read_text()
    assert "<img" in html and "MR_truncated.dcm" in html


def test_no_header_phi_in_any_output(pixel_run, sample_source):
    import pydicom

    _, out = pixel_run
    phi = set()
    for path in sample_source.glob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "StationName", "ReferringPhysicianName"):
            value = str(ds.get(keyword, "") or "").strip()
            if len(value) >= 4:
                phi.add(value.encode())
    assert phi, "the sample files should carry some header PHI to look for"
    outputs = [p for p in out.rglob("*") if p.is_file() and "decoded" not in p.parts]
    for path in outputs:
        data = path.read_bytes()
        leaked = [v for v in phi if v in data]
        assert not leaked, f"{path.relative_to(out)} holds {leaked}"


def test_rerun_resumes_without_recomputing(pixel_run, sample_archive):
    result, out = pixel_run
    before = _outputs(out)
    marks = {p.name: p.stat().st_mtime for p in (out / "_stages").iterdir()}
    again = curate(str(sample_archive), str(out), load_config(None, PIXELS))
    assert {p.name: p.stat().st_mtime for p in (out / "_stages").iterdir()} == marks
    _assert_same(before, _outputs(out))
    assert again.counts == result.counts


def test_partial_stage_output_is_recomputed(pixel_run, sample_archive):
    _, out = pixel_run
    before = _outputs(out)
    (out / "_stages" / "rank.done").unlink()
    (out / "manifest.parquet").write_bytes(b"half-written")
    curate(str(sample_archive), str(out), load_config(None, PIXELS))
    _assert_same(before, _outputs(out))


def test_same_outputs_with_two_embedding_actors_and_the_graph_by_tasks(pixel_run, sample_archive, tmp_path):
    """Two actors write the embeddings in another order; the index and graph built by Ray tasks from
    the embeddings files (index.distributed_min_frames=0) give the driver's outputs."""
    _, out = pixel_run
    two = tmp_path / "two"
    curate(str(sample_archive), str(two), load_config(None, [*PIXELS, "embed.num_actors=2", "index.distributed_min_frames=0"]))
    _assert_same(_outputs(out), _outputs(two))
    marker = RunFolder(str(two)).marker("index")
    assert marker["built_by"] == "tasks" and marker["recall"]["method"] == "exact"
    assert list((two / "knn").glob("part-*.parquet")) and not (two / "knn" / "graph.parquet").exists()
    assert json.loads((two / "index" / "index.json").read_text())["stored_ids"]


def test_killed_embedding_actor_still_gives_identical_outputs(pixel_run, sample_archive, tmp_path):
    import os
    import subprocess
    import sys

    from enrich_ray.embed.encoder import FAULT_MARKER_ENV

    _, out = pixel_run
    faulty, fired = tmp_path / "faulty", tmp_path / "fired"
    # A process of its own, with a Ray of its own: Ray's core worker says what follows once per process.
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, FAULT_MARKER_ENV: str(fired)}
    cmd = [sys.executable, "-m", "enrich_ray", "curate", "--archive", str(sample_archive), "--out", str(faulty),
           *[a for s in [*PIXELS, "embed.fail_after_batches=1"] for a in ("--set", s)]]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert fired.exists(), "the injected fault never fired"
    _assert_same(_outputs(out), _outputs(faulty))
    # The run's log takes file descriptor 2, where Ray's core worker warns when an actor that may be
    # restarted takes constructor arguments from the object store (a restart may find them gone).
    log = (faulty / "run.log").read_text()
    assert "fault injection: process" in log
    assert "constructor arguments in the object store" not in log + proc.stderr


def test_every_file_corrupt_gives_empty_manifest_and_exit_code(ray_cluster, tmp_path):
    from enrich_ray.io.pack import pack

    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"scan{i}.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00" * i)
    (src / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    pack([str(src)], str(tmp_path / "archive"), progress=False)
    result = curate(str(tmp_path / "archive"), str(tmp_path / "run"), load_config(None, PIXELS))
    assert result.exit_code == EXIT_NOTHING_EMBEDDED
    assert len(pd.read_parquet(tmp_path / "run" / "manifest.parquet")) == 0
    errors = pd.read_parquet(tmp_path / "run" / "errors.parquet")
    assert len(errors) == 4 and set(errors["stage"]) == {"decode"}
    assert (tmp_path / "run" / "report.html").stat().st_size > 1000


def test_other_settings_on_the_same_run_folder_are_refused(pixel_run, sample_archive):
    from enrich_ray.config import ConfigError

    _, out = pixel_run
    with pytest.raises(ConfigError, match="other settings"):
        curate(str(sample_archive), str(out), load_config(None, [*PIXELS, "selection.ranker=random"]))


def test_vae_run_trains_and_embeds(ray_cluster, sample_archive, tmp_path):
    cfg = load_config(None, ["vae.max_epochs=2", "vae.latent_dim=16", "embed.batch_size=32", "decode.batch_size=8"])
    result = curate(str(sample_archive), str(tmp_path / "vae"), cfg)
    run = RunFolder(str(tmp_path / "vae"))
    assert run.is_done("train") and result.exit_code == 0
    emb = pd.read_parquet(tmp_path / "vae" / "embeddings").dropna(subset=["embedding"])
    vectors = np.stack(emb["embedding"].to_numpy())
    assert vectors.shape[1] == 16
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert emb["model_hash"].nunique() == 1


def test_interrupted_run_resumes_to_identical_outputs(pixel_run, sample_archive, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    _, out = pixel_run
    run = tmp_path / "interrupted"
    cmd = [sys.executable, "-m", "enrich_ray", "curate", "--archive", str(sample_archive), "--out", str(run),
           *[a for s in PIXELS for a in ("--set", s)]]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not (run / "_stages" / "decode.done").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode in (0, 130), output[-3000:]
    assert not (run / "_stages" / "report.done").exists() or proc.returncode == 0
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "report:" in done.stdout
    _assert_same(_outputs(out), _outputs(run))


def test_targeted_ranking_toward_a_folder_of_exemplars(ray_cluster, sample_archive, busi_dir, tmp_path):
    import shutil

    exemplars = tmp_path / "exemplars"
    exemplars.mkdir()
    for f in sorted((busi_dir / "malignant").glob("*.png"))[:3]:  # ultrasound, not in the archive
        shutil.copy(f, exemplars / f.name)
    cfg = load_config(None, [*PIXELS, "selection.ranker=smi", f"selection.smi_query={exemplars}", "selection.k=5"])
    curate(str(sample_archive), str(tmp_path / "smi"), cfg)
    manifest = pd.read_parquet(tmp_path / "smi" / "manifest.parquet")
    picks = manifest[~manifest["is_seed"]]
    assert len(picks) == 5 and set(manifest["ranker"]) == {"smi"}
    assert not picks["source_uri"].str.contains("malignant").any()  # exemplars are the query, never ranked
    assert picks["source_uri"].str.contains("benign").iloc[:3].all()  # the ultrasound frames most like the exemplars


def test_a_quota_reranks_the_run_within_every_cap(pixel_run, sample_archive, tmp_path):
    """selection.quota.modality=1, the rank stage alone on a copy of the run: one frame of each modality
    (the seed's modality none more), every frame without a modality (the PNGs) still ranked, and the
    marker and the console line say the quota ended the ranking."""
    import shutil

    from enrich_ray.cli import stage_result
    from enrich_ray.pipelines.curate import _rank

    _, out = pixel_run
    shutil.copytree(out, tmp_path / "quota")
    marker = _rank(RunFolder(str(tmp_path / "quota")), str(sample_archive), load_config(None, [*PIXELS, "selection.quota.modality=1"]))
    manifest, full = pd.read_parquet(tmp_path / "quota" / "manifest.parquet"), pd.read_parquet(out / "manifest.parquet")
    keyed = manifest["modality"].notna()
    assert manifest.loc[keyed, "modality"].is_unique and set(manifest.loc[keyed, "modality"]) == set(full["modality"].dropna())
    assert (~keyed).sum() == full["modality"].isna().sum() and marker["ranked"] == len(manifest) < len(full)
    assert marker["quota"]["reached"] and f"quota reached (modality=1): {len(manifest)} frames ranked of the {len(full)}" in \
        stage_result("rank", {**marker, "seconds": 0.1})
