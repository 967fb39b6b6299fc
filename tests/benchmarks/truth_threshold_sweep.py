"""What other judgment settings would do to a planted-truth run, without re-embedding it: the
duplicates and outlier steps are run again (curate's own, on the run's embeddings, kNN graph and
decoded frames) under each setting, and the near-duplicate and foreign-frame scores recomputed, the
unplanted pairs judged by enrich_ray.truth.scene (full-resolution registration; see
tests/benchmarks/truth_same_scene.py; --no-scene skips it).

    .venv/bin/python tests/benchmarks/truth_threshold_sweep.py runs/bench_truth/busi --embedder vae \\
        --set analysis.near_duplicate_threshold=0.85,0.95,0.97
    .venv/bin/python tests/benchmarks/truth_threshold_sweep.py runs/bench_truth/busi --no-scene \\
        --set analysis.outlier_mad_k=3.5,4,4.5

Each --set names one setting and the values to try (the others stay as the run's config.yaml has
them); several --set give every combination.
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import pandas as pd

from enrich_ray.config import load_config
from enrich_ray.pipelines.curate import _duplicates, _outliers, frame_evidence, load_embeddings, load_graph
from enrich_ray.pipelines.run_folder import RunFolder
from enrich_ray.truth.planted import read_truth
from enrich_ray.truth.scoring import score_foreign, score_near


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", help="a bench_truth.py output folder for one base (holds planted/, archive/ and run_<embedder>/)")
    ap.add_argument("--embedder", default="vae")
    ap.add_argument("--set", dest="sweeps", action="append", default=[], help="section.key=v1,v2,...")
    ap.add_argument("--no-scene", action="store_true", help="do not judge unplanted pairs by registration (faster)")
    args = ap.parse_args()
    bench = Path(args.bench)
    truth = read_truth(bench / "planted")
    run_dir = bench / f"run_{args.embedder}"
    run = RunFolder(str(run_dir))
    frames, emb = load_embeddings(run)
    graph = load_graph(run)
    evidence = frame_evidence(run, frames)
    manifest = pd.read_parquet(run_dir / "manifest.parquet")
    keys = [s.partition("=")[0] for s in args.sweeps]
    values = [s.partition("=")[2].split(",") for s in args.sweeps]
    print("| " + " | ".join(keys + ["near-dups grouped", "false pairs (planted)", "unplanted pairs",
                                    "two scenes", "false pairs (scene)", "95% interval", "foreign in top 5%",
                                    "foreign flagged", "clean flagged", "groups whole / partly / not"]) + " |")
    print("|---" * (len(keys) + 10) + "|")
    for combo in itertools.product(*values) if keys else [()]:
        cfg = load_config(run_dir / "config.yaml", [f"{k}={v}" for k, v in zip(keys, combo)])
        dups = _duplicates(str(bench / "archive"), cfg, frames, emb, graph, evidence)
        s = score_near(truth, dups, str(bench / "planted"), judge_scene=not args.no_scene)
        f = score_foreign(truth, _outliers(cfg, frames, emb, graph, evidence, dups), manifest)
        lo, hi = s.get("false_pair_rate_scene_interval") or (None, None)
        scene = s.get("false_pair_rate_scene")
        print("| " + " | ".join(list(combo) + [
            f"{100 * s['recall']:.1f}% of {s['planted']}", f"{s['pairs_by_relation']['false']} of {s['pairs']}",
            str(s["pairs_by_relation"]["unplanted"]), *(["n/a"] * 3 if scene is None else [
                str(s["unplanted_other_scene"]), f"{100 * scene:.1f}%", f"{100 * lo:.1f}-{100 * hi:.1f}%"]),
            f"{100 * f['in_top_share']:.1f}% of {f['foreign_frames']}", f"{100 * f['flagged_share']:.1f}%",
            f"{100 * f['clean_flagged_share']:.1f}% ({f['clean_flagged']})",
            f"{f['groups_whole']} / {f['groups_partly']} / {f['groups_none']}"]) + " |")


if __name__ == "__main__":
    main()
