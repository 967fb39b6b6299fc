"""Nightly curation over three nights of real BUSI ultrasound PNGs on a local Ray cluster."""
from __future__ import annotations

import io
import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from enrich_ray.config import load_config
from enrich_ray.io.pack import pack
from enrich_ray.pipelines import nightly as nightly_mod
from enrich_ray.config import ConfigError
from enrich_ray.embed.checkpoint import load_model
from enrich_ray.pipelines.curate import train_model
from enrich_ray.pipelines.nightly import CatalogBusy, nightly, reembed
from enrich_ray.selection import enrich_greedy

pytestmark = pytest.mark.ray

NIGHTS = ["2026-11-18", "2026-11-19", "2026-11-20"]
SETTINGS = ["vae.max_epochs=2", "vae.latent_dim=16", "embed.batch_size=32", "decode.batch_size=8", "selection.k=5"]


def _night_folder(root, name, files):
    folder = root / name
    folder.mkdir(parents=True)
    for f in files:
        shutil.copy(f, folder / f.name)
    return folder


@pytest.fixture(scope="module")
def nights(busi_dir, tmp_path_factory):
    """Three nights of archives; night 3 re-sends three of night 1, re-encodes two others and brings a
    photograph (scikit-image's astronaut, in colour): a foreign frame."""
    import skimage.data

    root = tmp_path_factory.mktemp("nights")
    files = sorted((busi_dir / "normal").glob("*.png"))[:30]
    n1, n2, n3 = files[:12], files[12:22], files[22:30]
    folders = [_night_folder(root, "n1", n1), _night_folder(root, "n2", n2), _night_folder(root, "n3", n3)]
    for f in n1[:3]:
        shutil.copy(f, folders[2] / f"resent {f.name}")
    for f in n1[3:5]:  # same pixels, other bytes
        buf = io.BytesIO()
        Image.open(f).save(buf, format="PNG", compress_level=1)
        assert buf.getvalue() != f.read_bytes()
        (folders[2] / f"reencoded {f.name}").write_bytes(buf.getvalue())
    Image.fromarray(skimage.data.astronaut()).save(folders[2] / "astronaut.png")
    archives = []
    for i, folder in enumerate(folders):
        pack([str(folder)], str(root / f"archive{i}"), progress=False)
        archives.append(str(root / f"archive{i}"))
    return archives, [f.name for f in n1[:3]], [f.name for f in n1[3:5]]


def _catalog_json(catalog) -> str:
    return (catalog / "catalog.json").read_text()


def test_three_nights(ray_cluster, nights, tmp_path, monkeypatch):
    archives, resent_names, reencoded_names = nights
    catalog = tmp_path / "catalog"
    cfg = load_config(None, SETTINGS)

    r1 = nightly(str(catalog), archives[0], NIGHTS[0], cfg)
    s1 = json.loads((catalog / "nights" / NIGHTS[0] / "summary.json").read_text())
    assert r1.exit_code == 0 and s1["counts"]["frames_embedded"] == 12 and s1["counts"]["labeled_seed_frames"] == 0
    # The same embedding figures as curate's (stages.embedding_summary), the model's active units with them.
    assert {"content_correlation", "distinct_frames", "participation_ratio", "active_units"} <= set(s1["embedding"])
    top1 = pd.read_csv(catalog / "nights" / NIGHTS[0] / "top.csv")
    # The first night has no labeled set: the seed frame drawn tonight leads the list, then k = 5 picks.
    assert len(top1) == 6 and top1["rank"].tolist() == list(range(1, 7)) and top1["is_seed"].tolist() == [True] + [False] * 5
    assert {"sop_uid", "duplicate_group", "outlier_flag", "cumulative_label_hours_classification"} <= set(top1.columns)
    (catalog / "labeled").mkdir()
    top1[["image_id"]].head(4).to_csv(catalog / "labeled" / "batch1.csv", index=False)

    # Night 2 is killed during its commit: the catalog stays as it was, the rerun completes it.
    before = _catalog_json(catalog)
    real_commit = nightly_mod.Catalog.commit

    def crash(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(nightly_mod.Catalog, "commit", crash)
    with pytest.raises(KeyboardInterrupt):
        nightly(str(catalog), archives[1], NIGHTS[1], cfg)
    assert _catalog_json(catalog) == before and not (catalog / "_lock").exists()
    monkeypatch.setattr(nightly_mod.Catalog, "commit", real_commit)
    nightly(str(catalog), archives[1], NIGHTS[1], cfg)
    s2 = json.loads((catalog / "nights" / NIGHTS[1] / "summary.json").read_text())
    assert s2["counts"]["frames_embedded"] == 10 and s2["counts"]["labeled_seed_frames"] == 4
    pd.read_csv(catalog / "nights" / NIGHTS[1] / "top.csv")[["image_id"]].head(3).to_csv(catalog / "labeled" / "batch2.csv", index=False)

    nightly(str(catalog), archives[2], NIGHTS[2], cfg)
    s3 = json.loads((catalog / "nights" / NIGHTS[2] / "summary.json").read_text())
    # No image is embedded twice: the three re-sent images are recognised by content hash.
    assert s3["counts"]["resent_images"] == 3 and s3["counts"]["frames_embedded"] == 8 + 2 + 1
    emb = pd.read_parquet(catalog / "embeddings")
    assert len(emb) == emb["image_id"].nunique() == 12 + 10 + 11

    dups = pd.read_parquet(catalog / "nights" / NIGHTS[2] / "duplicates.parquet")
    resent = dups[dups["kind"] == "resent"]
    assert sorted(resent["source_uri"].str.rsplit("/", n=1).str[-1]) == sorted(resent_names)
    assert set(resent["night"]) == {NIGHTS[0]}
    for name in reencoded_names:  # re-encoded: an exact group with its night-1 original (the catalog keeps pixel hashes)
        original = dups[dups["source_uri"].str.endswith("/" + name) & ~dups["source_uri"].str.contains("reencoded")]
        copy = dups[dups["source_uri"].str.endswith("reencoded " + name)]
        assert len(original) == len(copy) == 1 and original["group_id"].iloc[0] == copy["group_id"].iloc[0]
        assert set(original["kind"]) == set(copy["kind"]) == {"exact"} and original["night"].iloc[0] == NIGHTS[0]
    # Tonight's outliers are judged as curate judges an archive (outlier_table, among a sample of earlier
    # frames): the photograph is flagged, first, with its reason; no ultrasound frame of the night is.
    outl = pd.read_parquet(catalog / "nights" / NIGHTS[2] / "outliers.parquet")
    assert len(outl) == 11 and outl["rank"].tolist() == list(range(1, 12))
    assert outl["source_uri"].iloc[0].endswith("astronaut.png") and outl["flagged"].tolist() == [True] + [False] * 10
    assert "colour" in outl["reason"].iloc[0]
    night3 = pd.read_parquet(catalog / "nights" / NIGHTS[2] / "manifest.parquet")
    photo = night3["source_uri"].str.endswith("astronaut.png")
    assert night3.loc[photo, "outlier_flag"].tolist() == [True] and not night3.loc[~photo & ~night3["is_seed"], "outlier_flag"].any()
    for name in reencoded_names:  # the re-encoded copy shares a duplicate group with its original
        copy = night3[night3["source_uri"].str.endswith("reencoded " + name)]
        assert copy["duplicate_group"].notna().all()
    page = (catalog / "nights" / NIGHTS[2] / "report.html").read_text()
    assert "What the night added to the catalog" in page
    added = re.search(r"exactly duplicate a frame of an earlier night.{0,200}?>\s*(\d+)\s*<", page, re.S)
    assert added and int(added.group(1)) == 2, page[page.find("What the night added"):][:3000]  # the two re-encoded copies
    evidence = pd.read_parquet(catalog / "evidence")
    assert len(evidence) == 33 and evidence["pixel_hash"].notna().all() and len(evidence["thumbnail"].iloc[0]) == 256

    # The night's ranking equals a full recompute seeded by the same labeled set.
    manifest = pd.read_parquet(catalog / "nights" / NIGHTS[2] / "manifest.parquet")
    labeled = set(pd.concat([pd.read_csv(p) for p in (catalog / "labeled").glob("*.csv")])["image_id"])
    assert manifest["is_seed"].sum() == len(labeled) == 7
    assert set(manifest.loc[manifest["is_seed"], "image_id"]) == labeled
    tonight = emb[emb["image_id"].isin(set(manifest["image_id"]) - labeled)]
    seeds = emb[emb["image_id"].isin(labeled)].sort_values(["image_id", "frame_index"])
    tonight = tonight.sort_values(["image_id", "frame_index"])
    table = pd.concat([seeds, tonight], ignore_index=True)
    x = np.stack(table["embedding"].to_numpy()).astype(np.float32)
    ref = enrich_greedy(x, np.arange(len(seeds)))
    picks = ref.order[len(seeds):]
    assert list(table["image_id"].iloc[picks]) == list(manifest.loc[~manifest["is_seed"], "image_id"])
    np.testing.assert_allclose(ref.score[len(seeds):], manifest.loc[~manifest["is_seed"], "score"], atol=1e-6)

    # Rerunning a completed night changes nothing; a held catalog is refused.
    before = _catalog_json(catalog)
    again = nightly(str(catalog), archives[2], NIGHTS[2], cfg)
    assert "already in catalog" in again.message and _catalog_json(catalog) == before

    # A model change never mixes embeddings: refused until the catalog is re-embedded explicitly.
    other = tmp_path / "model-v2"
    train_model(archives[1], str(other), load_config(None, [*SETTINGS, "vae.seed=7"]))
    assert not (other / "_decoded").exists()  # its scratch frames, under the model folder while it trained
    new_hash = load_model(str(other)).model_hash
    with pytest.raises(ConfigError, match="reembed"):
        nightly(str(catalog), archives[2], "2026-11-21", cfg, model=str(other))
    reembed(str(catalog), str(other), cfg)
    state = json.loads(_catalog_json(catalog))
    assert state["model_hash"] == new_hash and [n["night"] for n in state["nights"]] == NIGHTS
    again = pd.read_parquet(catalog / state["embeddings"])
    assert len(again) == 33 and set(again["model_hash"]) == {new_hash}
    assert sorted(again["image_id"]) == sorted(emb["image_id"])
    assert not (catalog / "embeddings").exists() and not (catalog / "model").exists()

    held = {"host": "other", "pid": 1, "run_id": "r1", "started": "2026-11-21T02:30:00Z", "expires": "2999-01-01T00:00:00Z"}
    (catalog / "_lock").write_text(json.dumps(held))
    with pytest.raises(CatalogBusy, match=r"is held by run r1 on host other \(pid 1\)"):
        nightly(str(catalog), archives[2], "2026-11-21", cfg)
    (catalog / "_lock").write_text(json.dumps({**held, "expires": "2026-11-21T14:30:00Z"}))  # a crashed run's, expired
    assert "already in catalog" in nightly(str(catalog), archives[2], NIGHTS[2], cfg).message
    assert not (catalog / "_lock").exists()
