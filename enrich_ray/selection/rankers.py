"""One interface over every ranker, chosen by name (SelectionConfig.ranker)."""
from __future__ import annotations

import numpy as np

from enrich_ray.config import RANKER_NAMES, SelectionConfig
from enrich_ray.selection.baseline import random_ranking
from enrich_ray.selection.enrich import enrich_greedy
from enrich_ray.selection.quota import Quotas
from enrich_ray.selection.examine import examine_ranking
from enrich_ray.selection.ranking import Ranking
from enrich_ray.selection.smi import smi_ranking
from enrich_ray.selection.typiclust import typiclust_ranking

RANKERS = RANKER_NAMES  # one list, in config.Ranker


def rank(
    name: str,
    embeddings: np.ndarray,
    seed: np.ndarray | list[int],
    k: int | None,
    cfg: SelectionConfig,
    query: np.ndarray | list[int] | None = None,
    progress: bool = False,
    quotas: Quotas | None = None,
) -> Ranking:
    """Rank frames with the ranker `name`: the seed rows first, then k picks (None: all it ranks).

    `query` (row indices of exemplar frames) is required by `smi` and ignored by the others;
    `progress` shows a bar of ENRICH's picks (the others take one pass); `quotas`
    (selection.quota, quota.quotas_for) are ENRICH's alone.
    """
    if quotas is not None and name != "enrich":
        raise ValueError(f"selection.quota holds for the enrich ranker only, not {name}")
    if name == "enrich":
        return enrich_greedy(embeddings, seed, k, progress=progress, quotas=quotas)
    if name == "random":
        return random_ranking(np.asarray(embeddings).shape[0], seed, k, cfg.random_seed)
    if name == "examine":
        return examine_ranking(
            embeddings,
            seed,
            k,
            exact=cfg.examine_exact,
            most_valuable_first=cfg.examine_most_valuable_first,
            exponential=cfg.examine_exponential,
        )
    if name == "typiclust":
        return typiclust_ranking(embeddings, seed, k, random_seed=cfg.random_seed)
    if name == "typiclust_enrich":
        return typiclust_then_enrich(embeddings, seed, k, cfg, progress=progress)
    if name == "smi":
        if query is None:
            raise ValueError("the smi ranker needs a query set (selection.smi_query): none was given")
        return smi_ranking(
            embeddings,
            seed,
            query,
            k,
            function=cfg.smi_function,
            eta=cfg.logdet_eta if cfg.smi_function == "logdetmi" else cfg.smi_eta,
            lam=cfg.smi_lambda,
            pool=cfg.smi_pool,
        )
    raise ValueError(f"unknown ranker {name!r}: choose one of {', '.join(RANKERS)}")


def typiclust_then_enrich(embeddings: np.ndarray, seed: np.ndarray | list[int], k: int | None, cfg: SelectionConfig,
                          progress: bool = False) -> Ranking:
    """TypiClust's first round (cfg.typiclust_fraction of the frames, at least as many as the seed set
    holds, so a one-frame seed set still gets a round of typical frames), then ENRICH from all of them:
    the dense middle first, where small budgets gained in the evaluation, then coverage to the edge.
    Score: typicality on TypiClust's picks, ENRICH's similarity after."""
    seed = np.asarray(seed, dtype=np.int64)
    n = np.asarray(embeddings).shape[0]
    k = n - seed.size if k is None else k
    typical = max(1, seed.size, int(round(cfg.typiclust_fraction * n)))
    first = typiclust_ranking(embeddings, seed, min(k, typical), random_seed=cfg.random_seed)
    rest = enrich_greedy(embeddings, first.order, k - (first.order.size - seed.size), progress=progress)
    score = rest.score.copy()
    score[seed.size : first.order.size] = first.score[seed.size :]
    return Ranking(ranker="typiclust_enrich", order=rest.order, score=score, n_seed=int(seed.size),
                   info={"typiclust_picks": int(first.order.size - seed.size)})


def rank_toward_exemplars(emb: np.ndarray, seed: np.ndarray, exemplars: np.ndarray, k: int | None,
                          cfg: SelectionConfig) -> Ranking:
    """Targeted ranking with external exemplars: they join as query rows that are never ranked."""
    n = len(emb)
    query = np.arange(n, n + len(exemplars), dtype=np.int64)
    both = rank("smi", np.vstack([emb, exemplars]), np.concatenate([seed, query]), k, cfg, query=query)
    keep = both.order < n
    return Ranking(ranker="smi", order=both.order[keep], score=both.score[keep], n_seed=len(seed))
