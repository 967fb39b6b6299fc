"""`enrich-ray select` ranks an existing embeddings table; the manifest matches the library call."""
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from enrich_ray.cli import main
from enrich_ray.selection import enrich_greedy


def _embeddings(pneumonia_npz, path, n=400):
    images = np.load(pneumonia_npz)["train_images"][:n].reshape(n, -1).astype(np.float32)
    x = images - images.mean(axis=0)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = [f"img{i:04d}" for i in range(n)]
    table = pa.table({"image_id": ids, "frame_index": pa.array(np.zeros(n, np.int32)),
                      "source_uri": [f"npz://train/{i}" for i in range(n)],
                      "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])})
    pq.write_table(table, path)
    return ids, x


def test_select_matches_enrich_greedy(pneumonia_npz, tmp_path, capsys):
    ids, x = _embeddings(pneumonia_npz, tmp_path / "emb.parquet")
    assert main(["select", "--embeddings", str(tmp_path / "emb.parquet"), "--out", str(tmp_path / "out"),
                 "--seed", "3", "--k", "50", "--set", "selection.random_seed=7"]) == 0
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    assert len(manifest) == 53 and list(manifest["rank"]) == list(range(1, 54))
    seeds = [ids.index(i) for i in manifest.loc[manifest["is_seed"], "image_id"]]
    assert len(seeds) == 3 and manifest["is_seed"].iloc[:3].all()
    ref = enrich_greedy(x, np.array(seeds), k=50)
    assert list(manifest["image_id"]) == [ids[i] for i in ref.order]
    np.testing.assert_allclose(manifest["score"].to_numpy()[3:], ref.score[3:], atol=1e-6)
    assert len(pd.read_csv(tmp_path / "out" / "manifest.csv")) == 53
    assert "ranked 53 frames" in capsys.readouterr().out


def test_select_builds_on_the_labeled_set(pneumonia_npz, tmp_path):
    ids, x = _embeddings(pneumonia_npz, tmp_path / "emb.parquet")
    pd.DataFrame({"image_id": ids[10:15]}).to_csv(tmp_path / "labeled.csv", index=False)
    assert main(["select", "--embeddings", str(tmp_path / "emb.parquet"), "--out", str(tmp_path / "out"),
                 "--seed", str(tmp_path / "labeled.csv"), "--k", "20"]) == 0
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    assert set(manifest.loc[manifest["is_seed"], "image_id"]) == set(ids[10:15])
    assert not manifest.loc[~manifest["is_seed"], "image_id"].isin(ids[10:15]).any()


def test_select_bad_input_is_one_line(tmp_path, capsys):
    assert main(["select", "--embeddings", str(tmp_path / "none.parquet"), "--out", str(tmp_path / "o")]) == 2
    assert "embeddings not found" in capsys.readouterr().err


def test_select_smi_ranks_toward_the_query_file(tmp_path):
    from enrich_ray.config import SelectionConfig
    from enrich_ray.selection import rank

    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = [f"img{i:03d}" for i in range(60)]
    pq.write_table(pa.table({"image_id": ids, "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 8)}),
                   tmp_path / "emb.parquet")
    pd.DataFrame({"image_id": ids[5:8]}).to_csv(tmp_path / "query.csv", index=False)
    assert main(["select", "--embeddings", str(tmp_path / "emb.parquet"), "--out", str(tmp_path / "out"),
                 "--ranker", "smi", "--seed-set", "2", "--k", "10",
                 "--set", f"selection.smi_query={tmp_path / 'query.csv'}"]) == 0
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    seeds = [ids.index(i) for i in manifest.loc[manifest["is_seed"], "image_id"]]
    ref = rank("smi", x, np.array(seeds), 10, SelectionConfig(), query=np.arange(5, 8))
    assert len(manifest) == 12 and set(manifest["ranker"]) == {"smi:flvmi"}
    assert list(manifest["image_id"]) == [ids[i] for i in ref.order]


def test_select_under_a_quota_keeps_every_cap(tmp_path, capsys):
    """selection.quota.patient_key=2 over 12 patients of 10 frames (4 frames with no patient key): two of
    each patient, the seed's included, then every unkeyed frame; the ranking ends there and says so."""
    rng = np.random.default_rng(4)
    n = 120
    x = rng.normal(size=(n, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = [f"img{i:03d}" for i in range(n)]
    patients = [None if i % 30 == 0 else f"p{i % 12}" for i in range(n)]
    pq.write_table(pa.table({"image_id": ids, "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 8),
                             "patient_key": pa.array(patients, pa.string())}), tmp_path / "emb.parquet")
    args = ["select", "--embeddings", str(tmp_path / "emb.parquet"), "--out", str(tmp_path / "out"), "--seed-set", "1",
            "--set", "selection.quota.patient_key=2"]
    assert main(args) == 0
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    assert len(manifest) == 12 * 2 + 4 and manifest["patient_key"].value_counts().max() == 2
    assert manifest["patient_key"].isna().sum() == 4
    assert manifest["patients_covered"].iloc[-1] == 12 and manifest["coverage_similarity"].iloc[-1] < 1
    assert "(quota reached (patient_key=2): 28 frames ranked of the 120 asked for)" in capsys.readouterr().out
    assert main([*args, "--ranker", "random"]) == 2
    assert "selection.quota holds for the enrich ranker only" in capsys.readouterr().err
