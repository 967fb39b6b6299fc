"""Contact sheet of the near-duplicate pairs a planted-truth run made between two base images, for a
person to judge: the pairs bench_truth.py cannot score (two BUSI files that may be one scan).

    .venv/bin/python tests/benchmarks/truth_pairs_sheet.py runs/bench_truth/busi --embedder vae \\
        --low 0.95 --high 0.99 --out runs/bench_truth/busi/pairs.png

Each row of the sheet: the representative and the member side by side (as files), with the pair's
content similarity (16x16 thumbnails) and embedding cosine; a seeded sample of at most --pairs.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from enrich_ray.truth.planted import read_truth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", help="a bench_truth.py output folder for one base (holds planted/ and run_<embedder>/)")
    ap.add_argument("--embedder", default="vae")
    ap.add_argument("--low", type=float, default=0.95, help="lowest content similarity shown")
    ap.add_argument("--high", type=float, default=0.99, help="content similarity shown below this")
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="PNG to write")
    args = ap.parse_args()

    bench = Path(args.bench)
    truth = read_truth(bench / "planted" / "truth.csv")
    base = truth[truth["role"] == "base"].drop_duplicates("image_id").set_index("image_id")["path"]
    dups = pd.read_parquet(bench / f"run_{args.embedder}" / "duplicates.parquet")
    near = dups[dups["kind"] == "near"]
    reps = near[near["is_representative"]].set_index("group_id")["image_id"]
    members = near[~near["is_representative"]].assign(rep=lambda d: d["group_id"].map(reps))
    pairs = members[members["image_id"].isin(base.index) & members["rep"].isin(base.index)
                    & members["content_similarity"].between(args.low, args.high, inclusive="left")]
    print(f"{len(pairs)} pairs of two base images with content similarity in [{args.low}, {args.high})")
    pairs = pairs.sample(min(args.pairs, len(pairs)), random_state=args.seed) if len(pairs) else pairs
    rows = []
    for rec in pairs.itertuples():
        tiles = [cv2.resize(cv2.imread(str(bench / "planted" / base[i]), cv2.IMREAD_GRAYSCALE), (160, 160)) for i in (rec.rep, rec.image_id)]
        row = np.hstack([tiles[0], np.full((160, 8), 255, np.uint8), tiles[1]])
        label = f"content {rec.content_similarity:.3f}  cosine {rec.similarity:.2f}"
        row = np.vstack([row, np.full((18, row.shape[1]), 255, np.uint8)])
        cv2.putText(row, label, (4, 172), cv2.FONT_HERSHEY_SIMPLEX, 0.4, 0, 1, cv2.LINE_AA)
        rows.append(row)
        print(f"  {base[rec.rep]}  ~  {base[rec.image_id]}: {label}")
    if rows:
        cv2.imwrite(args.out, np.vstack(rows))
        print(f"sheet: {args.out}")


if __name__ == "__main__":
    main()
