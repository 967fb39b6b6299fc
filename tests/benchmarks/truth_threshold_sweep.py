"""What a higher near-duplicate content threshold would do to a planted-truth run, without rerunning it:
near members whose content similarity to their representative falls below each threshold are dropped
from the run's duplicates.parquet, and the near-duplicate scores are recomputed (an approximation: a
real run would also regroup them).

    .venv/bin/python tests/benchmarks/truth_threshold_sweep.py runs/bench_truth/busi --embedder vae
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from enrich_ray.truth.planted import read_truth
from enrich_ray.truth.scoring import score_near


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", help="a bench_truth.py output folder for one base (holds planted/ and run_<embedder>/)")
    ap.add_argument("--embedder", default="vae")
    ap.add_argument("--thresholds", default="0.95,0.955,0.96,0.965,0.97")
    args = ap.parse_args()
    bench = Path(args.bench)
    truth = read_truth(bench / "planted" / "truth.csv")
    dups = pd.read_parquet(bench / f"run_{args.embedder}" / "duplicates.parquet")
    print("| content threshold | near-dups grouped | false pairs | unplanted pairs | worst case false |")
    print("|---|---|---|---|---|")
    for t in (float(x) for x in args.thresholds.split(",")):
        kept = dups[(dups["kind"] != "near") | dups["is_representative"] | (dups["content_similarity"] >= t)]
        size = kept.groupby("group_id")["row"].transform("size")
        kept = kept[(kept["kind"] != "near") | (size > 1)]
        s = score_near(truth, kept, str(bench / "planted"))
        print(f"| {t} | {100 * s['recall']:.1f}% | {100 * s['false_pair_rate']:.1f}% | {s['pairs_by_relation']['unplanted']} | "
              f"{100 * s['false_pair_rate_worst']:.1f}% |")


if __name__ == "__main__":
    main()
