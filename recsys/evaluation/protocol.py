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
from recsys.evaluation.protocol_data import ProtocolData, generator_rankings, load_protocol
from recsys.evaluation.protocol_models import (
    ranker_rankings,
    text_only_rankings,
    tfidf_rankings,
)

log = logging.getLogger(__name__)

PROTOCOL = "movielens-v1"
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


def score_rankings(rankings: Mapping[str, Sequence[str]], data: ProtocolData) -> dict[str, Any]:
    """The protocol metrics of one system's top lists (missing users count as empty lists)."""
    lists = [list(rankings.get(u, ())) for u in data.users]
    ndcg = np.array(
        [ndcg_at_k(r, data.truth[u], 10) for u, r in zip(data.users, lists, strict=True)]
    )
    cold_users = [u for u in data.users if u in data.cold_truth]
    cold = [ndcg_at_k(list(rankings.get(u, ())), data.cold_truth[u], 10) for u in cold_users]
    metrics: dict[str, Any] = {
        "ndcg@10": float(ndcg.mean()) if len(ndcg) else 0.0,
        "recall@10": float(
            np.mean(
                [recall_at_k(r, data.truth[u], 10) for u, r in zip(data.users, lists, strict=True)]
            )
        ),
        "recall@50": float(
            np.mean(
                [recall_at_k(r, data.truth[u], 50) for u, r in zip(data.users, lists, strict=True)]
            )
        ),
        "mrr@10": float(
            np.mean(
                [mrr_at_k(r, data.truth[u], 10) for u, r in zip(data.users, lists, strict=True)]
            )
        ),
        "coverage@10": coverage_at_k(lists, data.catalog_size, 10),
        "cold_ndcg@10": float(np.mean(cold)) if cold else 0.0,
        "cold_users": len(cold_users),
        "users": len(data.users),
    }
    metrics["ndcg@10_by_history"] = _by_history(ndcg, data)
    return metrics


def _by_history(ndcg: np.ndarray, data: ProtocolData) -> dict[str, dict[str, float]]:
    hist = np.array([data.history.get(u, 0) for u in data.users])
    out = {}
    for lo, hi in HISTORY_BUCKETS:
        mask = (hist >= lo) & (hist < hi)
        label = f"{lo}-{hi - 1}" if hi < 10**9 else f"{lo}+"
        out[label] = {
            "ndcg@10": float(ndcg[mask].mean()) if mask.any() else 0.0,
            "users": int(mask.sum()),
        }
    return out


def run_protocol(
    settings: Settings, con: duckdb.DuckDBPyConnection, systems: Sequence[str] = SYSTEMS
) -> dict[str, Any]:
    """Evaluate ``systems`` on protocol v1; systems that cannot run are listed under ``skipped``."""
    data = load_protocol(con, settings)
    report: dict[str, Any] = {"protocol": PROTOCOL, "systems": {}, "skipped": {}, "timings_s": {}}
    builders = _builders(settings, con, data, report)
    for name in systems:
        if name not in builders:
            report["skipped"][name] = f"unknown system; choose from {', '.join(SYSTEMS)}"
            continue
        started = time.perf_counter()
        rankings, reason = builders[name]()
        if rankings is None:
            log.warning("system %s skipped: %s", name, reason)
            report["skipped"][name] = reason
            continue
        report["systems"][name] = score_rankings(rankings, data)
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
