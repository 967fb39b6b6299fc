"""Planted-truth scores of several bench_truth.py runs (other seeds of one base), one row each and
the runs pooled: a few hundred pairs a run cannot bound a false-pair rate below 1%, the pooled
counts come closer. Each run folder is scored afresh (enrich_ray.truth.scoring, unplanted pairs
judged by enrich_ray.truth.scene); the Wilson 95% intervals are over the pooled counts.

    .venv/bin/python tests/benchmarks/truth_pool.py runs/bench_truth_seed0/busi \\
        runs/bench_truth_seed1/busi runs/bench_truth_seed2/busi --embedder vae
"""
from __future__ import annotations

import argparse
from pathlib import Path

from enrich_ray.truth.planted import read_truth
from enrich_ray.truth.scoring import score_run, wilson_interval


def counts(scores: dict) -> dict[str, tuple[int, int]]:
    """(hits, out of) of each pooled judgment."""
    near, foreign = scores["near"], scores["foreign"]
    bad = near["pairs_by_relation"]["false"] + near["unplanted_other_scene"]
    return {
        "near-dups grouped": (round(near["recall"] * near["planted"]), near["planted"]),
        "false pairs (scene)": (bad, near["pairs"]),
        "foreign in top 5%": (round(foreign["in_top_share"] * foreign["foreign_frames"]), foreign["foreign_frames"]),
        "foreign flagged": (round(foreign["flagged_share"] * foreign["foreign_frames"]), foreign["foreign_frames"]),
        "clean flagged": (foreign["clean_flagged"], foreign["clean_listed"]),
    }


def _cell(k: int, n: int, interval: bool = False) -> str:
    text = f"{100 * k / n:.1f}% ({k} of {n})" if n else "n/a"
    if interval and n:
        lo, hi = wilson_interval(k, n)
        text += f" [{100 * lo:.1f}-{100 * hi:.1f}%]"
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("benches", nargs="+", help="bench_truth.py output folders of one base (each holds planted/ and run_<embedder>/)")
    ap.add_argument("--embedder", default="vae")
    args = ap.parse_args()
    rows = {}
    for bench in map(Path, args.benches):
        run = bench / f"run_{args.embedder}"
        if not (run / "duplicates.parquet").exists():
            raise SystemExit(f"truth_pool: {run} holds no finished curate run (no duplicates.parquet)")
        rows[str(bench)] = counts(score_run(read_truth(bench / "planted"), str(bench / "planted"), str(run)))
    names = list(next(iter(rows.values())))
    print("| run | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for bench, c in rows.items():
        print(f"| {bench} | " + " | ".join(_cell(*c[n]) for n in names) + " |")
    pooled = {n: tuple(map(sum, zip(*(c[n] for c in rows.values())))) for n in names}
    print(f"| pooled ({len(rows)} runs; 95% interval) | " + " | ".join(_cell(*pooled[n], interval=True) for n in names) + " |")


if __name__ == "__main__":
    main()
