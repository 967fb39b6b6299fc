"""The whole curate job from S3 to S3 on moto's real HTTP server: same outputs as a local run."""
from __future__ import annotations

import json

import boto3
import numpy as np
import pandas as pd
import pytest
import s3fs

from enrich_ray.config import load_config
from enrich_ray.io.pack import pack
from enrich_ray.pipelines.curate import curate
from tests.integration.conftest import S3_KEYS

pytestmark = pytest.mark.ray

PIXELS = ["embed.embedder=pixels", "embed.batch_size=16", "decode.batch_size=8"]


def test_curate_s3_to_s3_equals_local(ray_cluster, s3_endpoint, sample_source, tmp_path):
    boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                 region_name="us-east-1").create_bucket(Bucket="scans")
    cfg = load_config(None, [*PIXELS, *S3_KEYS, f"storage.endpoint_url={s3_endpoint}"])
    fs = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": s3_endpoint})
    fs.put(str(sample_source) + "/", "scans/incoming/", recursive=True)

    summary = pack(["s3://scans/incoming"], "s3://scans/archive", cfg.pack, cfg.storage, progress=False)
    assert summary.images >= 12  # 11 DICOM files and a blank PNG, with or without BUSI
    s3 = curate("s3://scans/archive", "s3://scans/runs/one", cfg)
    pack([str(sample_source)], str(tmp_path / "archive"), progress=False)
    local = curate(str(tmp_path / "archive"), str(tmp_path / "run"), load_config(None, PIXELS))
    assert s3.counts == local.counts and s3.exit_code == local.exit_code == 0

    fs.invalidate_cache()
    with fs.open("scans/runs/one/manifest.parquet", "rb") as fh:
        remote = pd.read_parquet(fh)
    here = pd.read_parquet(tmp_path / "run" / "manifest.parquet")
    assert list(remote["image_id"]) == list(here["image_id"])
    np.testing.assert_allclose(remote["score"].to_numpy(), here["score"].to_numpy(), rtol=0, atol=1e-6)
    assert remote["source_uri"].str.startswith("s3://scans/incoming/").all()
    with fs.open("scans/runs/one/errors.parquet", "rb") as fh:
        errors = pd.read_parquet(fh)
    assert sorted(errors["error_type"]) == sorted(pd.read_parquet(tmp_path / "run" / "errors.parquet")["error_type"])
    storage = json.loads(fs.cat_file("scans/runs/one/summary.json"))["config"]["storage"]
    assert storage["secret_access_key"] == storage["access_key_id"] == "***"
    assert fs.exists("scans/runs/one/report.html")
