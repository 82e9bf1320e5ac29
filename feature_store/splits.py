"""The evaluation split (protocol v1 and its generalization to any log), materialized in the store.

Two kinds, chosen by ``Settings.split`` (:class:`recsys.core.config.SplitSettings`):

- ``user_time`` (protocol v1 on MovieLens): per user, the user's *split events* sorted by
  (timestamp, numeric item id, item id, event id); the last ``test_percent`` % (ceil) are
  ``test``; the end of the remaining train part (``val_percent`` % of it, ceil) is ``val``; the
  rest is ``fit``.  A user's split events are their ``rate`` events when they have any (so
  MovieLens figures are unchanged), else all their interaction events (every type but the
  exposure types, e.g. impressions).  Each user's ``val_start`` / ``test_start`` is the first
  timestamp of their val / test part; every other event of the user counts for training only
  strictly before that cut.
- ``global_time``: one cut for every user; ``test`` is every event at or after ``test_start``
  (the last ``test_days`` days when not given), ``val`` the ``val_days`` days before it.

Tables and views written (names kept from protocol v1):

- ``split_v1(event_id, user_id, item_id, ts, rating, rn, part, event_type, value)``: every
  split event; ``rating`` is the value of ``rate`` events, NULL for other types; a test
  positive is ``feature_store.rules_sql.positive_sql`` over these rows (the store's task);
- ``split_v1_users(user_id, n_ratings, n_fit, n_val, n_test, val_start, test_start)``
  (``n_ratings`` counts split events);
- ``split_v1_spec(spec, kind, val_start, test_start)``: the settings the split was built with;
- view ``events_train_v1``: the events anything scoring a *test* user may see;
- view ``events_fit_v1``: likewise for validation.

Features, candidates and pairs for evaluation and training read these views, never ``events``.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta

import duckdb

from recsys.core.config import SplitSettings
from recsys.core.errors import DataValidationError
from recsys.core.rules import FIT_SCOPE, TRAIN_SCOPE

log = logging.getLogger(__name__)

TEST_PERCENT = 20
DEFAULT_VAL_PERCENT = 20

_ORDER = "ts, TRY_CAST(item_id AS BIGINT) NULLS LAST, item_id, event_id"

SPLIT_LAYOUT = 2  # split_v1 columns; a store split with an older layout is rebuilt
PROTOCOL_TABLES: tuple[str, ...] = (
    "split_v1",
    "split_v1_users",
    "split_v1_spec",
    TRAIN_SCOPE.events,
    FIT_SCOPE.events,
)


def materialize_protocol_split(
    con: duckdb.DuckDBPyConnection,
    val_percent: int | None = None,
    *,
    split: SplitSettings | None = None,
) -> dict[str, int]:
    """(Re)build the split tables and views; returns counts per part.

    ``val_percent`` overrides ``split.val_percent`` (kept for protocol v1 callers).
    """
    spec = split or SplitSettings()
    if val_percent is not None:
        if not 0 < val_percent < 100:
            raise ValueError(f"val_percent must be in 1..99, got {val_percent}")
        spec = SplitSettings(**{**spec.__dict__, "val_percent": int(val_percent)})
    scoped = _scoped_events_sql(spec.exposure_event_types)
    if spec.kind == "global_time":
        val_cut, test_cut = _global_cuts(con, spec)
        part_sql = (
            f"CASE WHEN ts >= TIMESTAMP '{test_cut.isoformat()}' THEN 'test' "
            f"WHEN ts >= TIMESTAMP '{val_cut.isoformat()}' THEN 'val' ELSE 'fit' END"
        )
        _build_split_table(con, scoped, part_sql)
        _build_users_table(con)
        for view, cut in ((TRAIN_SCOPE.events, test_cut), (FIT_SCOPE.events, val_cut)):
            con.execute(
                f"CREATE OR REPLACE VIEW {view} AS SELECT * FROM events "
                f"WHERE ts < TIMESTAMP '{cut.isoformat()}'"
            )
        cuts: tuple[datetime | None, datetime | None] = (val_cut, test_cut)
    else:
        # Integer ceil: float ceil(0.2 * 35) is 8, not 7.
        part_sql = (
            f"CASE WHEN rn > n - (n * {int(spec.test_percent)} + 99) // 100 THEN 'test' "
            f"WHEN rn > (n - (n * {int(spec.test_percent)} + 99) // 100) "
            f"- ((n - (n * {int(spec.test_percent)} + 99) // 100) * {int(spec.val_percent)} "
            f"+ 99) // 100 THEN 'val' ELSE 'fit' END"
        )
        _build_split_table(con, scoped, part_sql)
        _build_users_table(con)
        _build_user_time_views(con)
        cuts = (None, None)
    _write_spec(con, spec, cuts)
    rows = con.execute("SELECT part, count(*) FROM split_v1 GROUP BY part").fetchall()
    counts = {str(part): int(n) for part, n in rows}
    log.info("%s split: %s", spec.kind, counts)
    return counts


def ensure_split(con: duckdb.DuckDBPyConnection, split: SplitSettings | None = None) -> bool:
    """Materialize the split when missing or built with other settings; True when (re)built."""
    spec = split or SplitSettings()
    if _current_spec(con) == _spec_json(spec):
        return False
    log.info("split not found or built with other settings; materializing it (%s)", spec.kind)
    materialize_protocol_split(con, split=spec)
    return True


def _scoped_events_sql(exposure: tuple[str, ...]) -> str:
    """Each user's split events: their ratings when they have any, else their interactions."""
    excluded = ", ".join(_quote(t) for t in exposure) or "NULL"
    return f"""
        SELECT e.* FROM events e
        WHERE e.event_type = 'rate'
           OR (e.event_type NOT IN ({excluded})
               AND e.user_id NOT IN (SELECT user_id FROM events WHERE event_type = 'rate'))
    """


def _build_split_table(con: duckdb.DuckDBPyConnection, scoped: str, part_sql: str) -> None:
    con.execute(
        f"""
        CREATE OR REPLACE TABLE split_v1 AS
        WITH r AS (
            SELECT event_id, user_id, item_id, ts, event_type, value,
                   CASE WHEN event_type = 'rate' THEN value END AS rating,
                   row_number() OVER (PARTITION BY user_id ORDER BY {_ORDER}) AS rn,
                   count(*) OVER (PARTITION BY user_id) AS n
            FROM ({scoped})
        )
        SELECT event_id, user_id, item_id, ts, rating, rn, {part_sql} AS part, event_type, value
        FROM r
        """
    )


def _build_users_table(con: duckdb.DuckDBPyConnection) -> None:
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


def _build_user_time_views(con: duckdb.DuckDBPyConnection) -> None:
    """Split events by part, plus the user's other events strictly before the user's cut.

    A user without validation events (one split event) is cut at ``test_start`` for the fit
    view as well, so none of their test-period events reaches training.  Users with no split
    event at all (only exposures) have no test period; all their events pass.
    """
    for view, parts, start in (
        (TRAIN_SCOPE.events, "('fit', 'val')", "u.test_start"),
        (FIT_SCOPE.events, "('fit')", "coalesce(u.val_start, u.test_start)"),
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
            WHERE e.event_id NOT IN (SELECT event_id FROM split_v1)
              AND ({start} IS NULL OR e.ts < {start})
            """
        )


def describe_split(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """The materialized split in words: ``kind``, ``description`` and, for a global cut, the
    ``val_start`` / ``test_start`` times (ISO); empty when no split is materialized."""
    if _current_spec(con) is None:
        return {}
    row = con.execute("SELECT spec, kind, val_start, test_start FROM split_v1_spec").fetchone()
    if row is None:
        return {}
    spec, kind, val_start, test_start = json.loads(row[0]), str(row[1]), row[2], row[3]
    if kind == "global_time":
        return {
            "kind": kind,
            "description": f"global cut-off {test_start:%Y-%m-%d %H:%M} (test from it, "
            f"validation from {val_start:%Y-%m-%d %H:%M}, train before)",
            "val_start": val_start.isoformat(),
            "test_start": test_start.isoformat(),
        }
    return {
        "kind": kind,
        "test_percent": str(spec["test_percent"]),
        "description": f"per-user time split (each user's last {spec['test_percent']}% of "
        "events are test)",
    }


def _global_cuts(con: duckdb.DuckDBPyConnection, spec: SplitSettings) -> tuple[datetime, datetime]:
    if spec.test_start:
        test_cut = datetime.fromisoformat(spec.test_start)
    else:
        row = con.execute("SELECT max(ts) FROM events").fetchone()
        if row is None or row[0] is None:
            raise DataValidationError("no events to split; ingest events first (recsys ingest ...)")
        test_cut = row[0] - timedelta(days=spec.test_days)
    val_cut = test_cut - timedelta(days=spec.val_days)
    log.info("global time split: val from %s, test from %s", val_cut, test_cut)
    return val_cut, test_cut


def _spec_json(spec: SplitSettings) -> str:
    fields = {k: list(v) if isinstance(v, tuple) else v for k, v in spec.__dict__.items()}
    return json.dumps({**fields, "layout": SPLIT_LAYOUT}, sort_keys=True)


def _write_spec(
    con: duckdb.DuckDBPyConnection,
    spec: SplitSettings,
    cuts: tuple[datetime | None, datetime | None],
) -> None:
    con.execute(
        "CREATE OR REPLACE TABLE split_v1_spec "
        "(spec VARCHAR, kind VARCHAR, val_start TIMESTAMP, test_start TIMESTAMP)"
    )
    con.execute(
        "INSERT INTO split_v1_spec VALUES (?, ?, ?, ?)",
        [_spec_json(spec), spec.kind, cuts[0], cuts[1]],
    )


def _current_spec(con: duckdb.DuckDBPyConnection) -> str | None:
    found = con.execute(
        "SELECT count(DISTINCT table_name) FROM information_schema.tables WHERE table_name IN "
        f"({', '.join('?' for _ in PROTOCOL_TABLES)})",
        list(PROTOCOL_TABLES),
    ).fetchone()
    if not found or found[0] < len(PROTOCOL_TABLES):
        return None
    row = con.execute("SELECT spec FROM split_v1_spec").fetchone()
    return str(row[0]) if row else None


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
