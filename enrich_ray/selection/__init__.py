"""Selection: rank frames for labeling (ENRICH, random, EXAMINE, targeted SMI, TypiClust) and the manifest."""
from enrich_ray.selection.baseline import random_ranking
from enrich_ray.selection.enrich import (
    CoverageIndex,
    coverage_curve,
    enrich_greedy,
    max_similarity,
)
from enrich_ray.selection.examine import examine_ranking, examine_scores
from enrich_ray.selection.manifest import build_manifest
from enrich_ray.selection.rankers import RANKERS, rank
from enrich_ray.selection.ranking import Ranking
from enrich_ray.selection.seeds import seed_rows
from enrich_ray.selection.smi import smi_ranking
from enrich_ray.selection.typiclust import typiclust_ranking

__all__ = [
    "RANKERS",
    "CoverageIndex",
    "Ranking",
    "build_manifest",
    "coverage_curve",
    "enrich_greedy",
    "examine_ranking",
    "examine_scores",
    "max_similarity",
    "random_ranking",
    "rank",
    "seed_rows",
    "smi_ranking",
    "typiclust_ranking",
]
