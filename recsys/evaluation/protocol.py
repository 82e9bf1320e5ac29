"""Evaluation protocol v1 (ARCHITECTURE.md), every system in one run on one split.

Definitions (see docs/ranking.md): positives are positive test ratings
(``recsys.core.rules``); a user counts when they have >= 1 test positive; each system ranks
the catalog minus the user's train items from train events only (``events_train_v1``), top 50
kept; items a system never proposes are misses.  ``coverage@10`` = distinct items in all top-10
lists / catalog size.  The cold slice keeps test positives whose item has at most
``COLD_ITEM_MAX_EVENTS`` train ratings: ``cold_ndcg@10`` is NDCG@10 with only those as
relevant, averaged over users with >= 1 cold test positive.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import duckdb
import numpy as np

from recsys.algorithms.baselines import ALS, ItemKNN
from recsys.algorithms.candidates import Popularity
from recsys.algorithms.metrics import coverage_at_k, mrr_at_k, ndcg_at_k, recall_at_k
from recsys.core.config import Settings
from recsys.core.errors import EvaluationError
from recsys.evaluation.protocol_data import ProtocolData, generator_rankings, load_protocol
from recsys.evaluation.protocol_models import (
    ranker_rankings,
    text_only_rankings,
    tfidf_rankings,
)
from recsys.evaluation.uncertainty import (
    DEFAULT_RESAMPLES,
    USER_METRICS,
    PerUser,
    add_intervals,
    bucket_masks,
)

log = logging.getLogger(__name__)

SYSTEMS: tuple[str, ...] = (
    "popularity",
    "item_knn",
    "als",
    "tfidf",
    "text_only",
    "ranker_no_text",
    "ranker",
)
HISTORY_BUCKETS: tuple[tuple[int, int], ...] = (
    (0, 30),
    (30, 60),
    (60, 120),
    (120, 300),
    (300, 10**9),
)


def per_user_metrics(rankings: Mapping[str, Sequence[str]], data: ProtocolData) -> PerUser:
    """Each evaluated user's metric values (missing users count as empty lists)."""
    lists = [list(rankings.get(u, ())) for u in data.users]
    pairs = list(zip(data.users, lists, strict=True))
    values = {
        "ndcg@10": np.array([ndcg_at_k(r, data.truth[u], 10) for u, r in pairs]),
        "recall@10": np.array([recall_at_k(r, data.truth[u], 10) for u, r in pairs]),
        "recall@50": np.array([recall_at_k(r, data.truth[u], 50) for u, r in pairs]),
        "mrr@10": np.array([mrr_at_k(r, data.truth[u], 10) for u, r in pairs]),
    }
    cold = [ndcg_at_k(r, data.cold_truth[u], 10) for u, r in pairs if u in data.cold_truth]
    return PerUser(values, np.array(cold, dtype=np.float64))


def score_rankings(
    rankings: Mapping[str, Sequence[str]], data: ProtocolData, per_user: PerUser | None = None
) -> dict[str, Any]:
    """The protocol metrics of one system's top lists (missing users count as empty lists)."""
    pu = per_user or per_user_metrics(rankings, data)
    lists = [list(rankings.get(u, ())) for u in data.users]

    def mean(x: np.ndarray) -> float:
        return float(x.mean()) if len(x) else 0.0

    metrics: dict[str, Any] = {k: mean(pu.values[k]) for k in USER_METRICS}
    metrics["coverage@10"] = coverage_at_k(lists, data.catalog_size, 10)
    metrics["cold_ndcg@10"] = mean(pu.cold)
    metrics["cold_users"] = len(pu.cold)
    metrics["users"] = len(data.users)
    masks = bucket_masks(data.users, data.history, HISTORY_BUCKETS)
    metrics["ndcg@10_by_history"] = {
        label: {"ndcg@10": mean(pu.values["ndcg@10"][mask]), "users": int(mask.sum())}
        for label, mask in masks.items()
    }
    return metrics


def check_systems(systems: Sequence[str]) -> None:
    """Refuse unknown system names before anything is read or logged."""
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise EvaluationError(
            f"unknown system(s) {', '.join(repr(s) for s in unknown)}; "
            f"choose from {', '.join(SYSTEMS)}"
        )
    if not systems:
        raise EvaluationError(f"no system to evaluate; choose from {', '.join(SYSTEMS)}")


def run_protocol(
    settings: Settings,
    con: duckdb.DuckDBPyConnection,
    systems: Sequence[str] = SYSTEMS,
    bootstrap: int = DEFAULT_RESAMPLES,
) -> dict[str, Any]:
    """Evaluate ``systems`` on protocol v1; systems that cannot run are listed under ``skipped``.

    ``bootstrap`` > 0 adds bootstrap intervals over users (``recsys.evaluation.uncertainty``).
    """
    check_systems(systems)
    data = load_protocol(con, settings)
    report: dict[str, Any] = {
        "protocol": data.extra["protocol"],
        "systems": {},
        "skipped": {},
        "timings_s": {},
    }
    builders = _builders(settings, con, data, report)
    per_user: dict[str, PerUser] = {}
    for name in systems:
        started = time.perf_counter()
        rankings, reason = builders[name]()
        if rankings is None:
            log.warning("system %s skipped: %s", name, reason)
            report["skipped"][name] = reason
            continue
        per_user[name] = per_user_metrics(rankings, data)
        report["systems"][name] = score_rankings(rankings, data, per_user[name])
        report["timings_s"][name] = round(time.perf_counter() - started, 2)
        m = report["systems"][name]
        log.info(
            "%-15s NDCG@10 %.4f  recall@10 %.4f  cold NDCG@10 %.4f  (%d users, %.1fs)",
            name,
            m["ndcg@10"],
            m["recall@10"],
            m["cold_ndcg@10"],
            m["users"],
            report["timings_s"][name],
        )
    if bootstrap > 0 and per_user:
        masks = bucket_masks(data.users, data.history, HISTORY_BUCKETS)
        # a champion ranker without text features is its own ablation: no text effect to measure
        uses_text = data.extra.get("text_model_version") is not None
        add_intervals(report, per_user, masks, bootstrap, settings.seed, text_effect_too=uses_text)
    report.update(data.extra)
    return report


Builder = Callable[[], tuple[dict[str, list[str]] | None, str]]


def _builders(
    settings: Settings, con: duckdb.DuckDBPyConnection, data: ProtocolData, report: dict[str, Any]
) -> dict[str, Builder]:

    state: dict[str, Any] = {}
    return {
        "popularity": lambda: (generator_rankings(Popularity(), data), ""),
        "item_knn": lambda: (generator_rankings(ItemKNN(), data), ""),
        "als": lambda: (generator_rankings(ALS(seed=settings.seed), data), ""),
        "tfidf": lambda: tfidf_rankings(con, data),
        "text_only": lambda: text_only_rankings(settings, con, data),
        "ranker_no_text": lambda: ranker_rankings(settings, con, data, state, ablation=True),
        "ranker": lambda: ranker_rankings(settings, con, data, state, ablation=False),
    }
