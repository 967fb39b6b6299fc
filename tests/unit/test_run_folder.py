"""Run folders: markers written last, partial output cleared, a different config refused."""
import pytest

from enrich_ray.config import ConfigError, load_config
from enrich_ray.pipelines.run_folder import RunFolder, fingerprint


def test_markers_and_clear(tmp_path):
    run = RunFolder(str(tmp_path / "run"))
    run.open_run(load_config(), force=False)
    assert not run.is_done("decode")
    run.write_json("partial.json", {"half": True})
    run.clear(["partial.json", "never-written"])
    assert not (tmp_path / "run" / "partial.json").exists()
    run.mark("decode", {"seconds": 1.5, "frames": 3})
    assert run.is_done("decode") and run.marker("decode")["frames"] == 3


def test_other_settings_refused_unless_forced(tmp_path):
    run = RunFolder(str(tmp_path / "run"))
    run.open_run(load_config(), force=False)
    run.mark("decode", {})
    run.open_run(load_config(None, ["embed.num_actors=4", "report.thumbnails=false"]), force=False)  # same outputs
    with pytest.raises(ConfigError, match="other settings"):
        run.open_run(load_config(None, ["selection.ranker=random"]), force=False)
    run.open_run(load_config(None, ["selection.ranker=random"]), force=True)
    assert not run.is_done("decode")


def test_fingerprint_ignores_where_ray_runs_but_not_what_it_computes():
    base = fingerprint(load_config())
    assert fingerprint(load_config(None, ["runtime.num_cpus=8", "storage.endpoint_url=http://x"])) == base
    assert fingerprint(load_config(None, ["decode.size=32"])) != base


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("stopped mid-write")


def test_a_write_stopped_midway_leaves_no_marker_and_no_part_file(tmp_path):
    import pandas as pd
    import pyarrow as pa

    run = RunFolder(str(tmp_path / "run"))
    run.open_run(load_config(), force=False)
    with pytest.raises(RuntimeError, match="mid-write"):
        run.mark("decode", {"seconds": 1.0, "frames": _Unprintable()})
    assert not run.is_done("decode")  # a marker written in part would say the stage is complete
    run.write_table("table.parquet", pd.DataFrame({"a": [1, 2]}))
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        run.write_table("table.parquet", pd.DataFrame({"a": [1, "x"]}))  # cannot be converted: nothing written
    assert list(pd.read_parquet(tmp_path / "run" / "table.parquet")["a"]) == [1, 2]
    assert sorted(p.name for p in (tmp_path / "run").rglob("*")) == ["_run.json", "_stages", "table.parquet"]  # no part file
