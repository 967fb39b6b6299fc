"""Planted-truth benchmark: how well curate's judgments match an archive of known truth, per embedder.

Builds a planted archive (enrich_ray.truth.planted: byte and pixel copies, near-duplicates, foreign
frames alone and in groups, cine clips), packs it, runs curate once per embedder on a local Ray and
prints a markdown table of exact/near-duplicate precision and recall, foreign-frame detection and
the ENRICH ranks of the foreign frames; the same figures go to <out>/truth_scores.json.

    .venv/bin/python tests/benchmarks/bench_truth.py --base synthetic --n-base 200
    .venv/bin/python tests/benchmarks/bench_truth.py --base busi --embedders vae,pixels
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from enrich_ray.config import load_config
from enrich_ray.io.pack import pack
from enrich_ray.pipelines.curate import curate
from enrich_ray.truth.planted import BASES, plant_archive
from enrich_ray.truth.scoring import score_run


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def table(scores: dict[str, dict]) -> str:
    """A markdown table, one column per embedder."""
    names = list(scores)
    lines = ["| judgment | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]

    def row(label: str, get) -> None:
        lines.append(f"| {label} | " + " | ".join(get(scores[n]) for n in names) + " |")

    row("exact: pair precision", lambda s: _pct(s["exact"]["precision"]))
    row("exact: pair recall", lambda s: _pct(s["exact"]["recall"]))
    for role in ("byte_copy", "pixel_copy"):
        row(f"exact: {role.replace('_', ' ')[:-1]}ies in an exact group with their original (in any group)",
            lambda s, r=role: f"{_pct(s['exact'][f'{r}_recall'])} ({_pct(s['exact'][f'{r}_listed'])}) of {s['exact'][f'{r}_planted']}")
    row("near: planted near-dups grouped with original", lambda s: f"{_pct(s['near']['recall'])} of {s['near']['planted']}")
    row("near: cine frames grouped", lambda s: f"{_pct(s['near']['cine_grouped'])} of {s['near']['cine_frames']}")
    row("near: false pairs (of member-representative pairs)", lambda s: f"{_pct(s['near']['false_pair_rate'])} of {s['near']['pairs']}")
    row("near: unplanted base pairs", lambda s: _pct(s["near"]["unplanted_pair_rate"]))
    row("near: false pairs, worst case (unplanted pairs whose thumbnails correlate < 0.99 counted false)",
        lambda s: _pct(s["near"]["false_pair_rate_worst"]))
    row("near: false pairs, unplanted pairs judged by full-resolution registration (truth/scene.py; 95% interval)",
        lambda s: "n/a" if s["near"].get("false_pair_rate_scene") is None else
        f"{_pct(s['near']['false_pair_rate_scene'])} ({_pct(s['near']['false_pair_rate_scene_interval'][0])}-"
        f"{_pct(s['near']['false_pair_rate_scene_interval'][1])}), {s['near']['unplanted_other_scene']} two scenes")
    f = lambda s: s["foreign"]  # noqa: E731
    row("foreign: in top 5% of outliers", lambda s: f"{_pct(f(s)['in_top_share'])} of {f(s)['foreign_frames']}")
    row("foreign: flagged", lambda s: _pct(f(s)["flagged_share"]))
    row("clean frames flagged", lambda s: f"{_pct(f(s)['clean_flagged_share'])} ({f(s)['clean_flagged']})")
    row("foreign groups flagged whole / partly / not", lambda s: f"{f(s)['groups_whole']} / {f(s)['groups_partly']} / {f(s)['groups_none']}")
    row("foreign: ENRICH min / median rank", lambda s: f"{f(s)['enrich_min_rank']} / {f(s)['enrich_median_rank']}")
    row("foreign: in ENRICH's first 24", lambda s: str(f(s)["enrich_in_first_24"]))
    row("foreign: left out of the ranking", lambda s: str(f(s)["enrich_excluded"]))
    row("near: recall by transform", lambda s: ", ".join(f"{t} {_pct(v)}" for t, v in sorted(s["near"]["recall_by_transform"].items())))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", choices=BASES, default="synthetic")
    ap.add_argument("--n-base", type=int, default=None, help="base images (default: the generator's per base)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--foreign-share", type=float, default=0.03)
    ap.add_argument("--embedders", default="vae,pixels", help="comma-separated: vae, pixels")
    ap.add_argument("--out", default="runs/bench_truth", help="keeps the planted archive, the packed archive and every run")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value, as curate --set")
    args = ap.parse_args()

    out = Path(args.out) / args.base
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    truth = plant_archive(out / "planted", args.base, args.n_base, args.seed, args.foreign_share)
    print(f"planted {len(truth)} frames in {time.perf_counter() - t0:.1f} s: {truth['role'].value_counts().to_dict()}")
    pack([str(out / "planted")], str(out / "archive"), progress=False)
    scores, seconds = {}, {}
    for embedder in [e.strip() for e in args.embedders.split(",") if e.strip()]:
        cfg = load_config(None, ["runtime.num_cpus=2", f"embed.embedder={embedder}", *args.overrides])
        t0 = time.perf_counter()
        curate(str(out / "archive"), str(out / f"run_{embedder}"), cfg, force=True)
        seconds[embedder] = round(time.perf_counter() - t0, 1)
        scores[embedder] = score_run(truth, str(out / "planted"), str(out / f"run_{embedder}"))
    text = table(scores)
    print(f"\nbase {args.base}, {len(truth)} frames, seed {args.seed}; curate wall time (s): {seconds}\n")
    print(text)
    (out / "truth_scores.json").write_text(json.dumps({"base": args.base, "frames": len(truth), "seed": args.seed,
                                                       "overrides": args.overrides, "seconds": seconds, "scores": scores},
                                                      indent=2, default=str))
    print(f"\nscores: {out / 'truth_scores.json'}")


if __name__ == "__main__":
    main()
