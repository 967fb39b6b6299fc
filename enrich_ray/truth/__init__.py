"""Archives of known truth (planted copies, near-duplicates, foreign frames, cine clips) and the scoring of a curate run against them."""
from enrich_ray.truth.planted import ROLES, TRUTH_COLUMNS, plant_archive, read_truth
from enrich_ray.truth.scoring import score_exact, score_foreign, score_near, score_run

__all__ = ["ROLES", "TRUTH_COLUMNS", "plant_archive", "read_truth", "score_exact", "score_foreign", "score_near", "score_run"]
