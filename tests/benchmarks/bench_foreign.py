"""The foreign-frame table alone, without Ray or curate: a planted archive (enrich_ray.truth.planted)
packed, decoded by the decode stage, embedded by the raw-pixel embedder, grouped into near twins,
then `outlier_table`; prints the share of foreign and blank frames in the top 5% and flagged, and
the share of clean frames (base, copies, near-duplicates, cine) flagged, with the misses.

    .venv/bin/python tests/benchmarks/bench_foreign.py --base busi --seeds 0,1
    .venv/bin/python tests/benchmarks/bench_foreign.py --base synthetic --scales 1,10,50
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from enrich_ray import schema
from enrich_ray.analysis.duplicates import near_duplicates, thumbnails
from enrich_ray.analysis.outliers import appearance_features, outlier_table
from enrich_ray.config import AnalysisConfig, DecodeConfig, EmbedConfig
from enrich_ray.decode.stage import decode_batch
from enrich_ray.embed.registry import fit_state, make_embedder
from enrich_ray.index.knn import exact_knn_graph
from enrich_ray.io.pack import archive_table, pack
from enrich_ray.pipelines.curate import duplicate_group_of_rows
from enrich_ray.truth.planted import BASES, plant_archive


def run(base: str, seed: int, cfg: AnalysisConfig) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        src, arch = Path(tmp, "src"), Path(tmp, "archive")
        truth = plant_archive(src, base=base, seed=seed)
        pack([str(src)], str(arch), progress=False)
        frames, _ = decode_batch(archive_table(str(arch), schema.ARCHIVE.names), DecodeConfig())
    meta = frames.drop_columns(["pixels"]).to_pandas()
    pixels = np.asarray(frames.column("pixels").combine_chunks().flatten(), np.float32).reshape(len(meta), 64, 64)
    embed = EmbedConfig(embedder="pixels")
    emb = make_embedder(embed, DecodeConfig(), state=fit_state(embed, DecodeConfig(), pixels)).embed_array(pixels)
    graph = exact_knn_graph(emb, 10)
    dups = near_duplicates(graph, cfg.near_duplicate_threshold, emb, meta["pixel_hash"].tolist(), thumbs=thumbnails(pixels),
                           content_threshold=cfg.near_duplicate_content_threshold)
    group = duplicate_group_of_rows(dups, len(meta))
    table = outlier_table(graph, emb, appearance_features(pixels), meta, group, cfg)

    roles = truth.set_index(["path", "frame_index"])["role"]
    rel = [uri.split("/src/", 1)[1] for uri in meta["source_uri"]]
    role = np.array([roles[(p, int(f))] for p, f in zip(rel, meta["frame_index"])])
    foreign = np.isin(role, ["foreign", "blank"])
    top = table.head(int(np.ceil(0.05 * len(table))))
    flagged = table.set_index("row")["flagged"].sort_index().to_numpy()
    in_top = np.zeros(len(meta), bool)
    in_top[top["row"].to_numpy()] = True
    return {
        "frames": len(meta), "foreign": int(foreign.sum()),
        "top5_and_flagged": float((foreign & in_top & flagged).sum() / foreign.sum()),
        "clean_flagged": float(flagged[~foreign].mean()), "clean_flagged_n": int(flagged[~foreign].sum()),
        "missed": [rel[i] for i in np.flatnonzero(foreign & ~(in_top & flagged))],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", choices=BASES, default="synthetic")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--scales", default=None, help="analysis.outlier_scales, e.g. 10,50 (default: the config's)")
    args = ap.parse_args()
    cfg = AnalysisConfig() if args.scales is None else AnalysisConfig(outlier_scales=[int(k) for k in args.scales.split(",")])
    print("| base | seed | frames | foreign | foreign in top 5% and flagged | clean flagged |")
    print("|---|---|---|---|---|---|")
    for seed in (int(s) for s in args.seeds.split(",")):
        r = run(args.base, seed, cfg)
        print(f"| {args.base} | {seed} | {r['frames']} | {r['foreign']} | {100 * r['top5_and_flagged']:.1f}% "
              f"| {100 * r['clean_flagged']:.2f}% ({r['clean_flagged_n']}) |")
        for path in r["missed"]:
            print(f"  missed: {path}")


if __name__ == "__main__":
    main()
