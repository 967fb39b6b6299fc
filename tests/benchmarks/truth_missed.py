"""Why a planted near-duplicate was not grouped with its original: for each one a planted-truth run
missed (not in one family with its original, as score_near counts it), the two checks of
analysis/duplicates.py between the pair (the embeddings' exact cosine and the thumbnails'
cross-correlation, against the run's thresholds), the groups each is in, and the region the decode
stage's border trim keeps of each file (rows x columns of the full image: burned-in text in a black
margin widens it).

    .venv/bin/python tests/benchmarks/truth_missed.py runs/bench_truth/synthetic --embedder vae
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from enrich_ray.config import load_config
from enrich_ray.decode.preprocess import trim_borders
from enrich_ray.pipelines.curate import frame_evidence, load_embeddings
from enrich_ray.pipelines.run_folder import RunFolder
from enrich_ray.truth.planted import read_truth
from enrich_ray.truth.scoring import _UnionFind


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", help="a bench_truth.py output folder for one base (holds planted/ and run_<embedder>/)")
    ap.add_argument("--embedder", default="vae")
    args = ap.parse_args()
    bench = Path(args.bench)
    truth = read_truth(bench / "planted")
    run_dir = bench / f"run_{args.embedder}"
    cfg = load_config(run_dir / "config.yaml")
    run = RunFolder(str(run_dir))
    frames, emb = load_embeddings(run)
    thumbs = frame_evidence(run, frames)["thumbnail"].astype(np.float32)
    row_of = {(i, int(k)): r for r, (i, k) in enumerate(zip(frames["image_id"], frames["frame_index"]))}
    key_of = dict(zip(truth["path"], zip(truth["image_id"], truth["frame_index"].astype(int))))
    dups = pd.read_parquet(run_dir / "duplicates.parquet")
    groups: dict = {}
    for g, i, k in zip(dups["group_id"], dups["image_id"], dups["frame_index"].astype(int)):
        groups.setdefault((i, k), set()).add(int(g))
    family = _UnionFind()  # a near group with the exact groups of its members, as score_near counts it found
    for gs in groups.values():
        for g in gs:
            family.union(g, min(gs))
    a = cfg.analysis
    print(f"thresholds: cosine >= {a.near_duplicate_threshold} and content >= {a.near_duplicate_content_threshold}, "
          f"or content >= {a.near_duplicate_content_alone}")
    near = truth[truth["role"] == "near_dup"]
    missed = 0
    for rec in near.itertuples():
        u, v = key_of[rec.path], key_of[rec.original]
        if {family.find(g) for g in groups.get(u, set())} & {family.find(g) for g in groups.get(v, set())}:
            continue
        missed += 1
        i, j = row_of[u], row_of[v]
        shapes = [trim_borders(cv2.imread(str(bench / "planted" / p), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255,
                               cfg.decode.trim_tolerance, cfg.decode.size).shape for p in (rec.original, rec.path)]
        print(f"{rec.transform:16s} {rec.path}: cosine {float(emb[i] @ emb[j]):.3f}, content {float(thumbs[i] @ thumbs[j]):.3f}; "
              f"groups {sorted(groups.get(u, []))} / original's {sorted(groups.get(v, []))}; trim keeps "
              f"{shapes[0][0]}x{shapes[0][1]} of the original, {shapes[1][0]}x{shapes[1][1]} of the copy")
    print(f"{missed} of {len(near)} planted near-duplicates missed")


if __name__ == "__main__":
    main()
