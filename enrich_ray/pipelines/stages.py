"""The stage sequence curate and nightly both run, each stage ending in its marker.

A stage is a step that reads what the stages before it wrote and returns the facts of its marker
(the console prints one line from them, cli.stage_result). A rerun skips every stage whose
marker is written and resumes at the first that is not (docs/architecture.md §5).
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Mapping

from enrich_ray.pipelines.run_folder import RunFolder

log = logging.getLogger(__name__)

STAGES = ("decode", "train", "embed", "index", "analyze", "rank", "report")
RAY_STAGES = frozenset({"decode", "train", "embed"})  # the stages that run on the Ray cluster


def run_stages(run: RunFolder, steps: Mapping[str, Callable[[], dict]], outputs: Mapping[str, list[str]], force: bool,
               timings: dict[str, float], start_ray: Callable[[], None]) -> None:
    """Run the steps in order, each unless its marker in `run` says it is complete (or force): clear
    its outputs (names under `run`), start Ray first for a RAY_STAGES step, run it, write its marker
    with the seconds it took; timings gets each stage's seconds, a skipped one's from its marker."""
    for stage, step in steps.items():
        if run.is_done(stage) and not force:
            timings[stage] = run.marker(stage).get("seconds", 0.0)
            log.info("%s: complete, skipped", stage)
            continue
        run.clear(outputs.get(stage, []))
        if stage in RAY_STAGES:
            start_ray()
        t0 = time.perf_counter()
        log.info("%s: running", stage, extra={"stage": stage})
        info = step()
        timings[stage] = round(time.perf_counter() - t0, 3)
        marker = {"seconds": timings[stage], **info}
        run.mark(stage, marker)
        log.info("%s: done in %.1f s", stage, timings[stage], extra={"stage": stage, "marker": marker})  # the console's stage line
