"""The embedding stage: shapes, unit norm, determinism, blank and bad frames, the registry's baselines."""
from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest
import torch

from enrich_ray import schema
from enrich_ray.config import DecodeConfig, EmbedConfig, VAEConfig
from enrich_ray.embed import diagnostics
from enrich_ray.embed.beta_vae import build_model
from enrich_ray.embed.checkpoint import load_model, save_checkpoint
from enrich_ray.embed.encoder import FAULT_MARKER_ENV, unit_rows
from enrich_ray.embed.registry import (
    PixelState,
    PrecomputedState,
    fit_state,
    make_embedder,
    state_from_json,
)
from tests.conftest import testdata_path

ROOT = Path(__file__).resolve().parents[2]
DECODE = DecodeConfig()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    """A seeded, untrained β-VAE with a latent centre, saved as a model folder (the encoder's contract needs no training)."""
    out = tmp_path_factory.mktemp("model")
    model = build_model(VAEConfig(seed=3))
    model.latent_center.copy_(torch.linspace(-0.5, 0.5, 128))
    save_checkpoint(model, VAEConfig(seed=3), DECODE, str(out))
    return str(out)


@pytest.fixture(scope="module")
def xray_frames(pneumonia_npz) -> np.ndarray:
    """60 real chest X-rays, 28 px upsampled to 64 (INTER_LINEAR), in [0, 1]."""
    imgs = np.load(pneumonia_npz)["test_images"][:60]
    return np.stack([cv2.resize(i, (64, 64), interpolation=cv2.INTER_LINEAR) for i in imgs]).astype(np.float32) / 255


def frames_table(pixels: np.ndarray, ids: list[str] | None = None) -> pa.Table:
    """A frames table (schema.frames_schema) holding the given (N, 64, 64) frames."""
    n = len(pixels)
    ids = ids or [f"img{i:04d}" for i in range(n)]
    flat = pa.array(np.asarray(pixels, np.float32).reshape(-1), pa.float32())
    cols = {
        "image_id": pa.array(ids, pa.string()),
        "frame_index": pa.array([0] * n, pa.int32()),
        "source_uri": pa.array([f"s3://bucket/{i}.dcm" for i in ids], pa.string()),
        "format": pa.array(["dicom"] * n, pa.string()),
        "pixels": pa.FixedSizeListArray.from_arrays(flat, 64 * 64),
        "is_constant": pa.array([False] * n, pa.bool_()),
        "patient_key": pa.array([f"p{i % 3}" for i in range(n)], pa.string()),
        "study_uid": pa.array([f"1.2.{i % 5}" for i in range(n)], pa.string()),
        "series_uid": pa.array([f"1.2.3.{i}" for i in range(n)], pa.string()),
        "modality": pa.array(["CR"] * n, pa.string()),
        "station": pa.array([f"SITE / CR{i % 2}" for i in range(n)], pa.string()),
        "pixel_hash": pa.array([f"hash{i}" for i in range(n)], pa.string()),
        "colorfulness": pa.array([0.0] * n, pa.float32()),
        "rows": pa.array([64] * n, pa.int32()),
        "cols": pa.array([64] * n, pa.int32()),
        "photometric": pa.array(["MONOCHROME2"] * n, pa.string()),
        "body_part": pa.array(["CHEST"] * n, pa.string()),
    }
    return pa.Table.from_pydict(cols, schema=schema.frames_schema(64))


def vae_embedder(model_dir: str, batch_size: int = 16, **kw):
    return make_embedder(EmbedConfig(embedder="vae", model=model_dir, batch_size=batch_size, **kw), DECODE)


def embeddings_of(table: pa.Table) -> np.ndarray:
    return np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)


def test_embed_batch_schema_keys_and_unit_norm(model_dir, xray_frames):
    emb = vae_embedder(model_dir)
    frames = frames_table(xray_frames)
    table, errors = emb.embed_batch(frames)
    assert table.schema == schema.embeddings_schema(128)
    assert emb.dim == 128 and table.num_rows == 60 and errors.num_rows == 0
    x = embeddings_of(table)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-6)
    assert set(table.column("model_hash").to_pylist()) == {emb.model_hash}
    for name in ["image_id", "frame_index", "source_uri", "patient_key", "study_uid", "series_uid", "modality", "station"]:
        assert table.column(name).to_pylist() == frames.column(name).to_pylist()
    np.testing.assert_array_equal(x, emb.embed_array(xray_frames))
    # reference: the posterior mean minus the stored latent centre, divided by its norm
    model = load_model(model_dir).model
    with torch.no_grad():
        mu = model.encode(torch.from_numpy(xray_frames[:, None]))[0].double().numpy()
    ref = mu - np.linspace(-0.5, 0.5, 128)
    np.testing.assert_allclose(x, ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=1e-5)
    empty, no_errors = emb.embed_batch(frames.slice(0, 0))
    assert empty.schema == table.schema and empty.num_rows == no_errors.num_rows == 0
    # real X-rays are not all the same point, even for an untrained encoder
    assert diagnostics.nn_similarity(x).min() < 1.0


def test_same_embedding_across_runs_and_batch_splits(model_dir, xray_frames):
    frames = frames_table(xray_frames)
    whole = embeddings_of(vae_embedder(model_dir, batch_size=8).embed_batch(frames)[0])
    again = vae_embedder(model_dir, batch_size=8)  # a second actor, loading the checkpoint anew
    for split in (1, 5, 13, 32):  # Ray hands an actor slices of blocks: Arrow offsets included
        parts = [again.embed_batch(frames.slice(s, split))[0] for s in range(0, frames.num_rows, split)]
        np.testing.assert_array_equal(np.concatenate([embeddings_of(p) for p in parts]), whole)
    order = np.random.default_rng(0).permutation(len(xray_frames))
    table, _ = again.embed_batch(frames_table(xray_frames[order], [f"img{i:04d}" for i in order]))
    by_id = dict(zip(table.column("image_id").to_pylist(), embeddings_of(table)))
    np.testing.assert_array_equal(np.stack([by_id[f"img{i:04d}"] for i in range(len(order))]), whole)


def test_gpu_request_without_gpu_runs_on_cpu(model_dir, xray_frames, caplog):
    with caplog.at_level(logging.WARNING):
        emb = vae_embedder(model_dir, num_gpus=1.0, amp=True)
    assert emb.device.type == "cpu" and "no CUDA device" in caplog.text
    np.testing.assert_array_equal(emb.embed_array(xray_frames[:5]), vae_embedder(model_dir).embed_array(xray_frames[:5]))


def test_constant_and_empty_frames_give_finite_unit_vectors(model_dir):
    blank = np.stack([np.zeros((64, 64)), np.ones((64, 64)), np.full((64, 64), 0.5)]).astype(np.float32)
    for emb in (vae_embedder(model_dir), make_embedder(EmbedConfig(embedder="pixels", pixel_center=False), DECODE)):
        x = emb.embed_array(blank)
        assert np.isfinite(x).all()
        np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-6)
    # the documented zero-vector rule: an all-black frame's raw-pixel vector is (1, ..., 1)/√d
    pixels = make_embedder(EmbedConfig(embedder="pixels", pixel_center=False, pixel_size=8), DECODE)
    np.testing.assert_allclose(pixels.embed_array(blank[:1])[0], np.full(64, 1 / 8), atol=1e-7)
    np.testing.assert_allclose(unit_rows(np.zeros((2, 4))), 0.5)


def test_missing_and_non_finite_pixels_become_error_rows(model_dir, xray_frames):
    frames = xray_frames[:4].copy()
    frames[1, 10, 10] = np.nan
    table = frames_table(frames)
    pixels = table.column("pixels").combine_chunks()
    mask = pa.array([False, False, True, False])
    nulled = pa.FixedSizeListArray.from_arrays(pixels.values, 64 * 64, mask=mask)
    table = table.set_column(table.column_names.index("pixels"), "pixels", nulled)
    emb, errors = vae_embedder(model_dir).embed_batch(table)
    assert sorted(emb.column("image_id").to_pylist()) == ["img0000", "img0003"]
    assert errors.schema == schema.ERRORS
    rows = {r["image_id"]: r for r in errors.to_pylist()}
    assert set(rows) == {"img0001", "img0002"}
    assert rows["img0001"]["stage"] == "embed" and "NaN" in rows["img0001"]["message"]
    assert "null" in rows["img0002"]["message"] and rows["img0002"]["source_uri"] == "s3://bucket/img0002.dcm"
    assert rows["img0002"]["frame_index"] == 0


LOSSLESS_MR = [
    "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm",
]


def test_lossless_encodings_of_one_image_embed_alike(model_dir):
    from tests.unit.test_decode_dicom import decode_dicom
    from enrich_ray.decode.preprocess import preprocess

    frames = []
    for name in LOSSLESS_MR:
        (image,) = decode_dicom(testdata_path(name).read_bytes(), DECODE)
        pixels, is_constant = preprocess(image, DECODE)
        assert not is_constant
        frames.append(pixels)
    x = vae_embedder(model_dir).embed_array(np.stack(frames))
    cos = x @ x[0]
    assert cos.min() > 0.999, dict(zip(LOSSLESS_MR, cos.round(6)))


def test_pixel_baseline_matches_cv2_reference_and_centres_on_a_fitted_mean(xray_frames):
    cfg = EmbedConfig(embedder="pixels", pixel_size=16, pixel_center=True, batch_size=7)
    state = fit_state(cfg, DECODE, xray_frames)
    small = np.stack([cv2.resize(f, (16, 16), interpolation=cv2.INTER_AREA) for f in xray_frames]).reshape(60, -1)
    np.testing.assert_allclose(state.mean, small.mean(axis=0), atol=1e-6)
    ref = small - small.mean(axis=0)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    emb = make_embedder(cfg, DECODE, state=state_from_json(state.to_json()))
    x = emb.embed_array(xray_frames)
    np.testing.assert_allclose(x, ref, atol=1e-5)
    # the mean image is the state's, not the batch's: a single frame embeds the same alone
    np.testing.assert_array_equal(emb.embed_array(xray_frames[5:6])[0], x[5])
    plain_cfg = dataclasses.replace(cfg, pixel_center=False)
    plain = make_embedder(plain_cfg, DECODE, state=fit_state(plain_cfg, DECODE, xray_frames)).embed_array(xray_frames)
    # without centring every X-ray is close to the mean image: nearest neighbours crowd near 1
    assert np.median(diagnostics.nn_similarity(plain)) > np.median(diagnostics.nn_similarity(x))
    assert emb.model_hash != make_embedder(plain_cfg, DECODE).model_hash
    with pytest.raises(ValueError, match="mean image"):
        make_embedder(cfg, DECODE)


def test_precomputed_embeddings_read_from_a_column():
    vectors = [[3.0, 4.0, 0.0], [0.0, 0.0, 0.0], None, [1.0, 2.0], [1.0, None, 0.0], [0.0, -2.0, 0.0]]
    table = pa.table({
        "image_id": [f"i{k}" for k in range(6)],
        "frame_index": pa.array([0] * 6, pa.int32()),
        "vec": pa.array(vectors, pa.list_(pa.float64())),
    })
    cfg = EmbedConfig(embedder="precomputed", precomputed_column="vec")
    state = fit_state(cfg, DECODE, table)
    assert state == PrecomputedState("vec", 3) == state_from_json(state.to_json())
    emb = make_embedder(cfg, DECODE, state=state)
    out, errors = emb.embed_batch(table)
    assert out.schema == schema.embeddings_schema(3) and emb.dim == 3
    got = dict(zip(out.column("image_id").to_pylist(), embeddings_of(out)))
    np.testing.assert_allclose(got["i0"], [0.6, 0.8, 0.0], atol=1e-7)
    np.testing.assert_allclose(got["i1"], np.full(3, 1 / np.sqrt(3)), atol=1e-7)
    np.testing.assert_allclose(got["i5"], [0.0, -1.0, 0.0])
    assert sorted(errors.column("image_id").to_pylist()) == ["i2", "i3", "i4"]
    nan_row = table.set_column(2, "vec", pa.array([[1.0, float("nan"), 0.0]] * 6, pa.list_(pa.float32())))
    assert emb.embed_batch(nan_row)[1].num_rows == 6
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(24, dtype=np.float32)), 4)
    wrong_width = table.set_column(2, "vec", fixed)  # a fixed-size column of another dimension
    out4, errors4 = emb.embed_batch(wrong_width)
    assert out4.num_rows == 0 and errors4.num_rows == 6 and "expected 3" in errors4.column("message")[0].as_py()
    assert set(errors.column("stage").to_pylist()) == {"embed"}
    assert out.column("source_uri").null_count == out.num_rows  # absent input columns stay null


def test_registry_rejects_unusable_settings(model_dir, tmp_path):
    with pytest.raises(ValueError, match="embed.model"):
        make_embedder(EmbedConfig(embedder="vae", model=None), DECODE)
    with pytest.raises(ValueError, match="unknown embedder"):
        make_embedder(EmbedConfig(embedder="clip"), DECODE)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="does not match"):
        make_embedder(EmbedConfig(embedder="pixels", pixel_size=8), DECODE, state=PixelState(16, True, np.zeros(256)))
    with pytest.raises(ValueError, match="dimension"):
        make_embedder(EmbedConfig(embedder="precomputed"), DECODE)


def test_fault_injection_kills_one_process_once(tmp_path, xray_frames, monkeypatch):
    np.save(tmp_path / "frames.npy", xray_frames[:8])
    marker = tmp_path / "died"
    script = textwrap.dedent(
        f"""
        import numpy as np
        from enrich_ray.config import DecodeConfig, EmbedConfig
        from enrich_ray.embed.registry import make_embedder
        from tests.unit.test_encoder import frames_table
        emb = make_embedder(EmbedConfig(embedder="pixels", pixel_center=False, fail_after_batches=1), DecodeConfig())
        table = frames_table(np.load({str(tmp_path / "frames.npy")!r}))
        for k in range(3):
            print("batch", k, emb.embed_batch(table)[0].num_rows, flush=True)
        """
    )
    env = {**os.environ, FAULT_MARKER_ENV: str(marker)}
    first = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert first.returncode == 1 and marker.exists()
    assert first.stdout.splitlines() == ["batch 0 8"]
    # the marker exists now: the restarted actor runs to the end
    monkeypatch.setenv(FAULT_MARKER_ENV, str(marker))
    emb = make_embedder(EmbedConfig(embedder="pixels", pixel_center=False, fail_after_batches=1), DECODE)
    for _ in range(3):
        assert emb.embed_batch(frames_table(xray_frames[:8]))[0].num_rows == 8
