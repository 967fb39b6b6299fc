"""Are the near-duplicate pairs a planted-truth run makes between two base files one scene? Decided by
an independent pixel criterion (enrich_ray.truth.scene: the second file registered onto the first by
phase correlation and affine ECC, then the mean SSIM at full resolution), calibrated here:

- true: every planted near-duplicate against its original (JPEG, resizes, crops, brightness and
  contrast, rotations, burned-in text);
- false: for each base file, the most similar base file of another class by the thumbnails
  (duplicates.thumbnails of 64 px frames: the hardest pairs of two different lesions), and seeded
  random pairs of two classes. A pair of two classes that scores as one picture is listed: BUSI
  files one image under two classes.

SAME_SCENE (enrich_ray/truth/scene.py) must lie between the highest false score (the two-class pairs
that are not one picture: those below the gap) and the lowest true one; the script prints both, the
run's unplanted pairs judged, the false-pair share with its 95% Wilson interval (planted false pairs
plus the unplanted pairs of two scenes, of every member-to-representative pair, as bench_truth
counts them), how it moves across the gap, and draws a sheet of the pairs it calls two scenes
(representative, member, member registered onto it, |difference| x 3) for a person to check:

    .venv/bin/python tests/benchmarks/truth_same_scene.py runs/bench_truth/busi --embedder vae \\
        --sheet runs/bench_truth/busi/other_scene.png

--decoded also scores the same pairs on the run's own decoded frames (decode.size, 64 px), as a
check inside the product could: whether registration at that size still separates them.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from enrich_ray.analysis.duplicates import thumbnails
from enrich_ray.truth.planted import read_truth
from enrich_ray.truth.scene import SAME_SCENE, read_grey, register, same_scene_score
from enrich_ray.truth.scoring import score_near, wilson_interval

ONE_PICTURE = 0.95  # a two-class pair scoring this high is shown as one picture filed twice, not as a false pair


def calibration(truth: pd.DataFrame, root: Path, negatives: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(true pairs, false pairs), each with the SSIM of scene_similarity."""
    near = truth[truth["role"] == "near_dup"]
    true = pd.DataFrame({"a": near["original"], "b": near["path"], "transform": near["transform"]})
    true["ssim"] = [same_scene_score(root / a, root / b)["ssim"] for a, b in zip(true["a"], true["b"])]
    base = truth[truth["role"] == "base"].drop_duplicates("path").reset_index(drop=True)
    parts = base["path"].str.split("/")
    cls = np.where(parts.str.len() > 2, parts.str[1], base["path"]).astype(str)  # BUSI: base/<class>/<file>
    grey = np.stack([cv2.resize(read_grey(root / p), (64, 64), interpolation=cv2.INTER_AREA) for p in base["path"]])
    thumb = thumbnails(grey).astype(np.float32)
    sim = thumb @ thumb.T
    sim[cls[:, None] == cls[None, :]] = -np.inf  # two classes only (or, without classes, two files)
    hardest = {tuple(sorted((i, int(j)))) for i, j in enumerate(sim.argmax(axis=1))}
    hard = sorted(hardest, key=lambda p: -sim[p])[:negatives]
    rng = np.random.default_rng(seed)
    rand = set()
    while len(rand) < negatives and len(base) > 1:
        i, j = rng.choice(len(base), size=2, replace=False)
        if np.isfinite(sim[i, j]):
            rand.add(tuple(sorted((int(i), int(j)))))
    rows = [(kind, base["path"][i], base["path"][j], float(sim[i, j])) for kind, pairs in (("hardest", hard), ("random", sorted(rand)))
            for i, j in pairs]
    false = pd.DataFrame(rows, columns=["kind", "a", "b", "content"])
    false["ssim"] = [same_scene_score(root / a, root / b)["ssim"] for a, b in zip(false["a"], false["b"])]
    return true, false


def sheet(pairs: list[tuple[str, str, str]], root: Path, out: str) -> None:
    """Rows of representative, member, member registered onto it and |difference| x 3 (160 px tiles), labelled."""
    rows = []
    for a, b, label in pairs:
        fixed, moving = read_grey(root / a), read_grey(root / b)
        warped, _, _ = register(fixed, moving)
        tiles = [fixed, moving, warped, np.clip(3 * np.abs(warped - fixed), 0, 1)]
        row = np.hstack([np.pad(cv2.resize((255 * t).astype(np.uint8), (160, 160)), 3, constant_values=255) for t in tiles])
        text = np.full((18, row.shape[1]), 255, np.uint8)
        cv2.putText(text, label, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, 0, 1, cv2.LINE_AA)
        rows.append(np.vstack([row, text]))
    if rows:
        cv2.imwrite(out, np.vstack(rows))
        print(f"sheet: {out} ({len(rows)} pairs)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", help="a bench_truth.py output folder for one base (holds planted/ and run_<embedder>/)")
    ap.add_argument("--embedder", default="vae")
    ap.add_argument("--negatives", type=int, default=200, help="two-class pairs of each kind (hardest, random)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sheet", help="PNG of the unplanted pairs called two scenes")
    ap.add_argument("--sheet-one-picture", help="PNG of the two-class pairs that score as one picture")
    ap.add_argument("--decoded", action="store_true", help="score the pairs on the run's decoded frames too")
    args = ap.parse_args()
    bench = Path(args.bench)
    root = bench / "planted"
    truth = read_truth(root)

    true, false = calibration(truth, root, args.negatives, args.seed)
    print(f"true: {len(true)} planted near-duplicates, SSIM min {true['ssim'].min():.3f}; lowest by transform:")
    print("  " + ", ".join(f"{t} {v:.3f}" for t, v in true.groupby("transform")["ssim"].min().sort_values().items()))
    one = false[false["ssim"] >= ONE_PICTURE]
    rest = false[false["ssim"] < ONE_PICTURE]
    for kind, part in rest.groupby("kind"):
        print(f"false, {kind} two-class pairs: {len(part)} below {ONE_PICTURE}, SSIM max {part['ssim'].max():.3f}, "
              f"99th percentile {part['ssim'].quantile(0.99):.3f}")
    print(f"two-class pairs that score as one picture (SSIM >= {ONE_PICTURE}): {len(one)}")
    for rec in one.itertuples():
        print(f"  {rec.a} ~ {rec.b}: SSIM {rec.ssim:.3f} (thumbnails {rec.content:.3f})")
    low, high = float(rest["ssim"].max()), float(true["ssim"].min())
    inside = low < SAME_SCENE < high
    print(f"gap between false and true: ({low:.3f}, {high:.3f}); SAME_SCENE {SAME_SCENE} {'lies in it' if inside else 'DOES NOT lie in it'}")

    dups = pd.read_parquet(bench / f"run_{args.embedder}" / "duplicates.parquet")
    near = score_near(truth, dups, str(root), judge_scene=True)
    total, false_planted = near["pairs"], near["pairs_by_relation"]["false"]
    unplanted = near["pairs_by_relation"]["unplanted"]
    other = near["unplanted_other_scene"]
    lo, hi = near["false_pair_rate_scene_interval"] or (float("nan"), float("nan"))
    print(f"\nrun_{args.embedder}: {total} member-representative pairs, {unplanted} unplanted (two base files), "
          f"{false_planted} false by the planted truth")
    print(f"unplanted pairs of two scenes (SSIM < {SAME_SCENE}): {other}; false pairs "
          f"{false_planted + other} of {total} = {100 * near['false_pair_rate_scene']:.1f}% (95% interval {100 * lo:.1f}-{100 * hi:.1f}%)")
    ssims = [p["ssim"] for p in near["scene_other_pairs"]]
    families = [(p["representative"], p["member"]) for p in near["scene_other_pairs"]]
    # the same pairs at either end of the gap: how much the share depends on where in it the threshold lies
    all_pairs = np.array(near["unplanted_ssim"])
    for t in (low, high):
        k = false_planted + int((all_pairs < t).sum())
        a, b = wilson_interval(k, total)
        print(f"  at threshold {t:.3f}: {k} of {total} = {100 * k / total:.1f}% ({100 * a:.1f}-{100 * b:.1f}%)")
    for (a, b), s in zip(families, ssims):
        print(f"  two scenes: {a} ~ {b}: SSIM {s:.3f}")
    if args.decoded:
        decoded_separation(bench / f"run_{args.embedder}", truth, true, rest, near)
    if args.sheet:
        sheet([(a, b, f"{Path(a).name} ~ {Path(b).name}: SSIM {s:.2f}") for (a, b), s in zip(families, ssims)], root, args.sheet)
    if args.sheet_one_picture:
        sheet([(r.a, r.b, f"{Path(r.a).name} ~ {Path(r.b).name}: SSIM {r.ssim:.2f}") for r in one.itertuples()], root, args.sheet_one_picture)


def decoded_separation(run_dir: Path, truth: pd.DataFrame, true: pd.DataFrame, false: pd.DataFrame, near: dict) -> None:
    """The registered SSIM of the same pairs on the run's decoded frames: min, median and max per set."""
    from enrich_ray.pipelines.run_folder import RunFolder
    from enrich_ray.truth.scene import scene_similarity

    table = RunFolder(str(run_dir)).read_table("decoded", columns=["image_id", "frame_index", "pixels"]).to_pandas()
    side = int(round(np.sqrt(len(table["pixels"].iloc[0]))))
    frame = {(i, int(k)): np.asarray(p, np.float32).reshape(side, side)
             for i, k, p in zip(table["image_id"], table["frame_index"], table["pixels"])}
    key = dict(zip(truth["path"], zip(truth["image_id"], truth["frame_index"].astype(int))))

    def ssim(a: str, b: str) -> float:
        return scene_similarity(frame[key[a]], frame[key[b]])["ssim"]

    two = {(p["representative"], p["member"]) for p in near["scene_other_pairs"]}
    unplanted = list(dict.fromkeys(near.get("unplanted_pairs", [])))
    sets = {"true (planted near-duplicates)": [ssim(a, b) for a, b in zip(true["a"], true["b"])],
            "false (two-class pairs)": [ssim(a, b) for a, b in zip(false["a"], false["b"])],
            "unplanted, one scene at full resolution": [ssim(a, b) for a, b in unplanted if (a, b) not in two],
            "unplanted, two scenes at full resolution": [ssim(a, b) for a, b in unplanted if (a, b) in two]}
    print(f"\nregistered SSIM on the run's decoded {side} px frames:")
    for name, values in sets.items():
        if values:
            print(f"  {name}: {len(values)} pairs, min {min(values):.3f}, median {np.median(values):.3f}, max {max(values):.3f}")


if __name__ == "__main__":
    main()
