"""Evaluation protocol v1 (ARCHITECTURE.md), every system in one run on one split.

Definitions (see docs/ranking.md): positives are test ratings >= 4; a user counts when they
have >= 1 test positive; each system ranks the catalog minus the user's train items from train
events only (``events_train_v1``), top 50 kept; items a system never proposes are misses.
``coverage@10`` = distinct items in all top-10 lists / catalog size.  The cold slice keeps test
positives whose item has <= 5 train ratings: ``cold_ndcg@10`` is NDCG@10 with only those as
relevant, averaged over users with >= 1 cold test positive.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np

from feature_store.interactions import Interactions
from recsys.algorithms.metrics import coverage_at_k, mrr_at_k, ndcg_at_k, recall_at_k
from recsys.core.config import Settings

log = logging.getLogger(__name__)

PROTOCOL = "movielens-v1"
SYSTEMS: tuple[str, ...] = (
    "popularity",
    "item_knn",
    "als",
    "text_only",
    "ranker_no_text",
    "ranker",
)
COLD_MAX_TRAIN_RATINGS = 5
TOP = 50
HISTORY_BUCKETS: tuple[tuple[int, int], ...] = (
    (0, 30),
    (30, 60),
    (60, 120),
    (120, 300),
    (300, 10**9),
)


@dataclass
class ProtocolData:
    """Everything the protocol needs from the store, read once."""

    train: Interactions
    users: list[str]  # users with >= 1 test positive
    truth: dict[str, set[str]]
    cold_truth: dict[str, set[str]]
    history: dict[str, int]  # train ratings per user
    catalog_size: int
    extra: dict[str, Any] = field(default_factory=dict)


def load_protocol(con: duckdb.DuckDBPyConnection) -> ProtocolData:
    """Read the protocol v1 split (materializing it when missing)."""
    from training.ranker.run import ensure_split

    ensure_split(con)
    train = Interactions.from_store(con, "events_train_v1")
    rows = con.execute(
        f"""
        WITH counts AS (SELECT item_id, count(*) AS n FROM split_v1
                        WHERE part IN ('fit', 'val') GROUP BY item_id)
        SELECT s.user_id, s.item_id, coalesce(c.n, 0) <= {COLD_MAX_TRAIN_RATINGS} AS cold
        FROM split_v1 s LEFT JOIN counts c USING (item_id)
        WHERE s.part = 'test' AND s.rating >= 4.0
        """
    ).fetchall()
    truth: dict[str, set[str]] = {}
    cold: dict[str, set[str]] = {}
    for user, item, is_cold in rows:
        truth.setdefault(user, set()).add(item)
        if is_cold:
            cold.setdefault(user, set()).add(item)
    history = dict(con.execute("SELECT user_id, n_fit + n_val FROM split_v1_users").fetchall())
    users = sorted(truth)
    log.info(
        "protocol v1: %d users with test positives (%d with cold positives), catalog %d",
        len(users),
        len(cold),
        train.n_items,
    )
    return ProtocolData(train, users, truth, cold, history, train.n_items)


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


def generator_rankings(gen: Any, data: ProtocolData) -> dict[str, list[str]]:
    """Fit a generator/baseline on train events and take its top 50 per evaluated user."""
    gen.fit(data.train)
    results = gen.generate(data.users, TOP)
    return {u: list(ids) for u, (ids, _) in zip(data.users, results, strict=True)}


def run_protocol(
    settings: Settings, con: duckdb.DuckDBPyConnection, systems: Sequence[str] = SYSTEMS
) -> dict[str, Any]:
    """Evaluate ``systems`` on protocol v1; systems that cannot run are listed under ``skipped``."""
    data = load_protocol(con)
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
    from recsys.algorithms.baselines import ALS, ItemKNN
    from recsys.algorithms.candidates import Popularity
    from recsys.evaluation.protocol_models import ranker_rankings, text_only_rankings

    state: dict[str, Any] = {}
    return {
        "popularity": lambda: (generator_rankings(Popularity(), data), ""),
        "item_knn": lambda: (generator_rankings(ItemKNN(), data), ""),
        "als": lambda: (generator_rankings(ALS(seed=settings.seed), data), ""),
        "text_only": lambda: text_only_rankings(settings, con, data),
        "ranker_no_text": lambda: ranker_rankings(settings, con, data, state, ablation=True),
        "ranker": lambda: ranker_rankings(settings, con, data, state, ablation=False),
    }
