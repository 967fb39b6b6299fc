"""Config: every YAML in configs/ loads; unknown keys and wrong types stop the run with the key named."""
from pathlib import Path

import pytest
import yaml

from enrich_ray.cli import main
from enrich_ray.config import Config, ConfigError, config_dict, config_yaml, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
JOB_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if p.name != "runtime_env.yaml")


@pytest.mark.parametrize("path", JOB_CONFIGS, ids=lambda p: p.name)
def test_every_job_config_loads(path):
    assert isinstance(load_config(path), Config)


def test_unknown_key_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("decode:\n  sise: 64\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'decode\.sise'"):
        load_config(p)


def test_removed_setting_is_refused():
    with pytest.raises(ConfigError, match=r"unknown setting 'runtime\.read_parallelism'"):  # never read: removed
        load_config(None, ["runtime.read_parallelism=4"])


def test_unknown_section_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("decoding:\n  size: 64\n")
    with pytest.raises(ConfigError, match="unknown setting 'decoding'"):
        load_config(p)


@pytest.mark.parametrize(
    "override, message",
    [
        ("decode.size=large", r"decode\.size: expected an integer"),
        ("embed.num_gpus=yes please", r"embed\.num_gpus: expected a number"),
        ("report.thumbnails=3", r"report\.thumbnails: expected true or false"),
        ("selection.ranker=best", r"selection\.ranker: 'best' is not one of"),
        ("decode=3", r"decode: expected a mapping"),
        ("selection.quota=3", r"selection\.quota: expected a mapping"),
        ("selection.quota.site=2", r"selection\.quota: 'site' is not one of 'patient_key'"),
        ("selection.quota.patient_key=two", r"selection\.quota\.patient_key: expected an integer"),
        ("selection.quota.patient_key=0", r"selection\.quota\.patient_key: 0 must be a whole number of frames, at least 1"),
    ],
)
def test_wrong_type_is_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_overrides_parse_yaml_scalars():
    cfg = load_config(None, ["embed.num_gpus=1", "runtime.address=ray://head:10001", "selection.k=null",
                             "report.thumbnails=false", "vae.lr=3e-4"])
    assert cfg.embed.num_gpus == 1.0 and cfg.selection.k is None
    assert cfg.report.thumbnails is False and cfg.vae.lr == pytest.approx(3e-4)


def test_a_quota_is_a_mapping_from_yaml_or_set_and_enrich_s_alone(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("selection:\n  quota: {patient_key: 2, modality: 100}\n")
    assert load_config(p, ["selection.quota.study_uid=5"]).selection.quota == {"patient_key": 2, "modality": 100, "study_uid": 5}
    assert load_config(None, ["selection.quota={series_uid: 1}"]).selection.quota == {"series_uid": 1}
    assert load_config(None, ["selection.quota.station=4"]).selection.quota == {"station": 4}
    with pytest.raises(ConfigError, match="selection.quota holds for the enrich ranker only .* not typiclust"):
        load_config(None, ["selection.quota.patient_key=2", "selection.ranker=typiclust"])


def test_saved_config_redacts_secrets_and_reloads(tmp_path):
    cfg = load_config(None, ["storage.secret_access_key=abc123", "storage.access_key_id=AKIA0000", "storage.endpoint_url=http://127.0.0.1:5000",
                             "selection.quota.patient_key=2"])
    text = config_yaml(cfg)
    assert "abc123" not in text and "AKIA0000" not in text and "***" in text
    assert "http://127.0.0.1:5000" in text
    assert yaml.safe_load(text)["storage"]["secret_access_key"] == "***"
    assert config_dict(cfg, redact=False)["storage"]["secret_access_key"] == "abc123"
    (tmp_path / "config.yaml").write_text(text)
    again = load_config(tmp_path / "config.yaml")  # a run's config.yaml reloads
    assert again.storage.endpoint_url == "http://127.0.0.1:5000" and again.selection.quota == {"patient_key": 2}


def test_cli_reports_config_errors_in_one_line(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_text("selection: [1, 2]\n")
    assert main(["curate", "--archive", str(tmp_path), "--out", str(tmp_path / "o"), "--config", str(p)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "selection: expected a mapping" in err[0]


def test_a_local_ray_too_small_for_its_embedding_actors_is_refused_before_work():
    """With one CPU the embedding actor takes it and the Parquet reads that feed it never start (a hang)."""
    with pytest.raises(ConfigError, match=r"runtime.num_cpus=1 .*embed.num_actors"):
        load_config(None, ["runtime.num_cpus=1"])
    with pytest.raises(ConfigError, match="at least 3"):
        load_config(None, ["runtime.num_cpus=2", "embed.num_actors=2"])
    assert load_config(None, ["runtime.num_cpus=2"]).runtime.num_cpus == 2
    assert load_config(None, ["runtime.num_cpus=1", "runtime.address=ray://head:10001"]).runtime.num_cpus == 1  # a cluster's own


def test_gpu_actors_on_a_local_ray_without_a_gpu_are_refused_before_work(monkeypatch):
    import torch

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ConfigError, match=r"embed.num_gpus=1 but this machine has 0 GPU"):
        load_config(None, ["embed.num_gpus=1"])
    assert load_config(None, ["embed.num_gpus=1", "runtime.address=ray://head:10001"]).embed.num_gpus == 1  # the cluster's
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert load_config(None, ["embed.num_gpus=1"]).embed.num_gpus == 1


@pytest.mark.parametrize("setting", ["analysis.outlier_max_share=0", "analysis.near_duplicate_threshold=5",
                                     "analysis.outlier_scales=[0]", "analysis.outlier_mad_k=-1", "analysis.outlier_mad_k=0",
                                     "analysis.outlier_tail_share=0.5", "analysis.outlier_tail_share=0"])
def test_analysis_ranges_are_refused_at_load_not_after_embedding(setting):
    with pytest.raises(ConfigError, match=setting.split("=")[0]):
        load_config(None, [setting])


def test_every_numeric_setting_has_a_range_and_each_range_refuses():
    import dataclasses
    import typing

    from enrich_ray.config import RANGES, Config

    checked_elsewhere = {"vae.seed", "selection.random_seed", "selection.smi_eta", "selection.logdet_eta",
                         "selection.smi_lambda", "selection.smi_pool",  # seeds take any integer; SMI: __post_init__
                         "selection.quota"}  # a mapping of counts: __post_init__
    numeric = []
    for section in dataclasses.fields(Config):
        if section.name in ("analysis", "evaluate"):  # check_analysis; pipelines/evaluate.check_evaluate_config
            continue
        hints = typing.get_type_hints(type(getattr(Config(), section.name)))
        for name, hint in hints.items():
            args = set(typing.get_args(hint)) or {hint}
            if args & {int, float}:
                numeric.append(f"{section.name}.{name}")
    missing = [key for key in numeric if key not in RANGES and key not in checked_elsewhere]
    assert not missing, missing
    for key, (low, high, open_low) in RANGES.items():
        bad = high * 2 + 1 if low is None else (low if open_low else low - 1)
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(None, [f"{key}={bad}"])


def test_every_setting_is_read_by_the_code():
    """A setting nobody reads is a promise the tool does not keep: each field of each section appears as an
    attribute read (`.name`) in the package outside config.py, or in a getattr by its name."""
    import dataclasses
    import re

    package = Path(__file__).resolve().parents[2] / "enrich_ray"
    code = "\n".join(p.read_text(encoding="utf-8") for p in package.rglob("*.py") if p.name != "config.py")
    unread = [f"{section.name}.{field.name}" for section in dataclasses.fields(Config)
              for field in dataclasses.fields(getattr(Config(), section.name))
              if not re.search(rf"\.{field.name}\b|[\"']{field.name}[\"']", code)]
    assert not unread, unread
