"""What protocol v1 reads from the store, and the top lists of fitted generators."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import duckdb

from feature_store.interactions import Interactions
from feature_store.rules_sql import positive_sql
from feature_store.splits import describe_split, ensure_split
from feature_store.task import apply_task, stored_task
from recsys.core import rules
from recsys.core.config import Settings
from recsys.core.errors import EvaluationError
from recsys.core.rules import COLD_ITEM_MAX_EVENTS

log = logging.getLogger(__name__)

TOP = 50


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


def load_protocol(con: duckdb.DuckDBPyConnection, settings: Settings | None = None) -> ProtocolData:
    """Read the split of ``settings.split`` (materializing it when missing or stale)."""
    if settings is not None:
        apply_task(con, settings.task)
    ensure_split(con, settings.split if settings is not None else None)
    train = Interactions.from_store(con, rules.TRAIN_SCOPE.events)
    rows = con.execute(
        f"""
        WITH counts AS (SELECT item_id, count(*) AS n FROM split_v1
                        WHERE part IN ('fit', 'val') GROUP BY item_id)
        SELECT s.user_id, s.item_id, coalesce(c.n, 0) <= {COLD_ITEM_MAX_EVENTS} AS cold
        FROM split_v1 s LEFT JOIN counts c USING (item_id)
        WHERE s.part = 'test' AND {positive_sql("s")}
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
    sampled: dict[str, Any] = {}
    if settings is not None and len(users) > settings.ranker.max_eval_users:
        # a fixed seeded sample bounds evaluation time and memory on large stores
        everyone = len(users)
        users = rules.sample_users(users, settings.ranker.max_eval_users, settings.seed)
        truth = {u: truth[u] for u in users}
        cold = {u: cold[u] for u in users if u in cold}
        log.info("protocol v1: evaluating a seeded sample of %d of %d users", len(users), everyone)
        sampled = {"users_sampled": f"{len(users)} of {everyone} (seed {settings.seed})"}
    if not users:
        raise EvaluationError(_no_users_reason(con))
    log.info(
        "protocol v1: %d users with test positives (%d with cold positives), catalog %d",
        len(users),
        len(cold),
        train.n_items,
    )
    task = stored_task(con)
    split = describe_split(con)
    extra: dict[str, Any] = {
        "protocol": evaluation_name(task, split),
        "task": task.describe(),
        "task_preset": task.preset,
        "split": split,
        **sampled,
    }
    return ProtocolData(train, users, truth, cold, history, train.n_items, extra)


def evaluation_name(task: rules.Task, split: dict[str, str]) -> str:
    """What a report is headed with: the task preset and the split actually used, plus
    "protocol v1" when that is the instance (ratings >= 4.0, per-user time split, last 20%)."""
    name = f"task {task.preset}, {split.get('description', 'no split')}"
    v1 = (
        task.preset == "ratings"
        and task.positive_rating == rules.POSITIVE_RATING
        and split.get("kind") == "user_time"
        and split.get("test_percent") == "20"
    )
    return name + (" = protocol v1" if v1 else "")


def _no_users_reason(con: duckdb.DuckDBPyConnection) -> str:
    row = con.execute(
        """SELECT count(DISTINCT user_id), count(*) FILTER (WHERE part = 'test'),
                  count(*) FILTER (WHERE part = 'test' AND rating IS NOT NULL),
                  (SELECT any_value(kind) FROM split_v1_spec)
           FROM split_v1"""
    ).fetchone()
    users, test, rated, kind = row if row is not None else (0, 0, 0, None)
    return (
        f"nothing to evaluate: no user has a positive in the test part of the "
        f"{kind or 'user_time'} split ({users} users with split events, {test} test events, "
        f"{rated} of them ratings; {stored_task(con).describe()}). Ingest more events, set "
        "[task] positive_event_types / positive_rating to match the log, or, for an impression "
        "log, `recsys evaluate --replay store` scores the logged lists."
    )


def generator_rankings(gen: Any, data: ProtocolData) -> dict[str, list[str]]:
    """Fit a generator/baseline on train events and take its top 50 per evaluated user."""
    gen.fit(data.train)
    results = gen.generate(data.users, TOP)
    return {u: list(ids) for u, (ids, _) in zip(data.users, results, strict=True)}
