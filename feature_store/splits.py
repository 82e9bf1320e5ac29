"""Evaluation protocol v1 split (see ARCHITECTURE.md), materialized in the store.

Per user, rate events sorted by (timestamp, movieId): the last 20% (ceil) are ``test``; the
end of the remaining train part (``val_percent`` of it, ceil) is ``val``; the rest is ``fit``.
Train = fit + val.  Tables and views written:

- ``split_v1(event_id, user_id, item_id, ts, rating, rn, part)``: every rate event, its part;
- ``split_v1_users(user_id, n_ratings, n_fit, n_val, n_test, val_start, test_start)``;
- view ``events_train_v1``: the events anything scoring a *test* user may see: train ratings
  of every user and other event types strictly before their user's first test rating;
- view ``events_fit_v1``: likewise for validation (fit ratings, other events before ``val_start``).

Features and candidates for protocol evaluation read these views instead of ``events``.
"""

from __future__ import annotations

import logging

import duckdb

from recsys.core.rules import FIT_SCOPE, TRAIN_SCOPE

log = logging.getLogger(__name__)

PROTOCOL = "movielens-v1"
TEST_PERCENT = 20
DEFAULT_VAL_PERCENT = 20


PROTOCOL_TABLES: tuple[str, ...] = (
    "split_v1",
    "split_v1_users",
    TRAIN_SCOPE.events,
    FIT_SCOPE.events,
)


def ensure_split(con: duckdb.DuckDBPyConnection) -> None:
    """Materialize protocol v1 when any of its tables or views is missing."""
    present = {
        str(r[0])
        for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_name IN "
            f"({', '.join('?' for _ in PROTOCOL_TABLES)})",
            list(PROTOCOL_TABLES),
        ).fetchall()
    }
    missing = [t for t in PROTOCOL_TABLES if t not in present]
    if missing:
        log.info("protocol v1 split: %s missing; materializing it", ", ".join(missing))
        materialize_protocol_split(con)


def materialize_protocol_split(
    con: duckdb.DuckDBPyConnection, val_percent: int = DEFAULT_VAL_PERCENT
) -> dict[str, int]:
    """(Re)build the protocol v1 split tables and views; returns counts per part."""
    if not 0 < val_percent < 100:
        raise ValueError(f"val_percent must be in 1..99, got {val_percent}")
    # Integer ceil: float ceil(0.2 * 35) is 8, not 7.
    con.execute(
        f"""
        CREATE OR REPLACE TABLE split_v1 AS
        WITH r AS (
            SELECT event_id, user_id, item_id, ts, value AS rating,
                   row_number() OVER (
                       PARTITION BY user_id
                       ORDER BY ts, TRY_CAST(item_id AS BIGINT) NULLS LAST, item_id, event_id
                   ) AS rn,
                   count(*) OVER (PARTITION BY user_id) AS n
            FROM events WHERE event_type = 'rate'
        ), s AS (
            SELECT *, n - (n * {TEST_PERCENT} + 99) // 100 AS n_train FROM r
        )
        SELECT event_id, user_id, item_id, ts, rating, rn,
               CASE WHEN rn > n_train THEN 'test'
                    WHEN rn > n_train - (n_train * {int(val_percent)} + 99) // 100 THEN 'val'
                    ELSE 'fit' END AS part
        FROM s
        """
    )
    con.execute(
        """
        CREATE OR REPLACE TABLE split_v1_users AS
        SELECT user_id,
               count(*) AS n_ratings,
               count(*) FILTER (WHERE part = 'fit') AS n_fit,
               count(*) FILTER (WHERE part = 'val') AS n_val,
               count(*) FILTER (WHERE part = 'test') AS n_test,
               min(ts) FILTER (WHERE part = 'val') AS val_start,
               min(ts) FILTER (WHERE part = 'test') AS test_start
        FROM split_v1 GROUP BY user_id
        """
    )
    for view, parts, start in (
        (TRAIN_SCOPE.events, "('fit', 'val')", "test_start"),
        (FIT_SCOPE.events, "('fit')", "val_start"),
    ):
        con.execute(
            f"""
            CREATE OR REPLACE VIEW {view} AS
            SELECT e.* FROM events e
            JOIN split_v1 s ON s.event_id = e.event_id
            WHERE s.part IN {parts}
            UNION ALL
            SELECT e.* FROM events e
            LEFT JOIN split_v1_users u ON u.user_id = e.user_id
            WHERE e.event_type <> 'rate' AND (u.{start} IS NULL OR e.ts < u.{start})
            """
        )
    rows = con.execute("SELECT part, count(*) FROM split_v1 GROUP BY part").fetchall()
    counts = {str(part): int(n) for part, n in rows}
    log.info("protocol v1 split: %s", counts)
    return counts
