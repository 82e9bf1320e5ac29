"""The store's task (``recsys.core.rules.Task``): resolved from settings and the log, recorded
in ``task_spec`` and installed as the SQL macros of ``feature_store.rules_sql``.

``task.preset = "auto"`` picks ``ratings`` when the log has ``rate`` events, ``impressions``
when it has served lists (impressions with a request id), else ``events``; each field of
``[task]`` overrides the preset's.
"""

from __future__ import annotations

import json
import logging

import duckdb

from feature_store.rules_sql import MACROS, macro_statements
from recsys.core import rules
from recsys.core.config import TaskSettings
from recsys.core.rules import DEFAULT_TASK, Task

log = logging.getLogger(__name__)


def detect_preset(con: duckdb.DuckDBPyConnection) -> str:
    """The preset ``auto`` means for the events in the store."""
    row = con.execute(
        f"""SELECT list(DISTINCT event_type),
                  bool_or(event_type = '{rules.EXPOSURE_EVENT_TYPE}' AND request_id IS NOT NULL)
           FROM events"""
    ).fetchone()
    types = {str(t) for t in (row[0] or [])} if row else set()
    return rules.detect_preset(types, bool(row and row[1]))


def resolve_task(con: duckdb.DuckDBPyConnection, settings: TaskSettings) -> Task:
    """``settings`` applied to its preset (``auto``: detected from the store)."""
    preset = detect_preset(con) if settings.preset == "auto" else settings.preset
    return rules.make_task(
        preset,
        positive_event_types=settings.positive_event_types,
        positive_rating=settings.positive_rating if settings.positive_rating >= 0 else None,
        negative_rating=settings.negative_rating if settings.negative_rating >= 0 else None,
        grades=settings.grades,
        impression_negatives=settings.impression_negatives,
    )


def apply_task(con: duckdb.DuckDBPyConnection, settings: TaskSettings) -> Task:
    """Resolve the task, record it and install its macros (only when it changed)."""
    task = resolve_task(con, settings)
    spec = json.dumps(task.to_dict(), sort_keys=True)
    if _stored_spec(con) != spec or not _has_macros(con):
        install_task(con, task)
        log.info("%s", task.describe())
    return task


def install_task(con: duckdb.DuckDBPyConnection, task: Task) -> None:
    """Write ``task_spec`` and (re)create the macros."""
    con.execute("CREATE OR REPLACE TABLE task_spec (spec VARCHAR)")
    con.execute("INSERT INTO task_spec VALUES (?)", [json.dumps(task.to_dict(), sort_keys=True)])
    for statement in macro_statements(task):
        con.execute(statement)


def stored_task(con: duckdb.DuckDBPyConnection) -> Task:
    """The task the store was last prepared with (the default before any job ran)."""
    spec = _stored_spec(con)
    if spec is None:
        return DEFAULT_TASK
    data = json.loads(spec)
    return rules.make_task(
        str(data["preset"]),
        positive_event_types=tuple(data["positive_event_types"]),
        positive_rating=data["positive_rating"],
        negative_rating=data["negative_rating"],
        grades=tuple(data["grades"]),
        impression_negatives=bool(data["impression_negatives"]),
    )


def ensure_macros(con: duckdb.DuckDBPyConnection) -> None:
    """Install the stored (or default) task's macros when the store has none yet."""
    if not _has_macros(con):
        install_task(con, stored_task(con))


def _has_macros(con: duckdb.DuckDBPyConnection) -> bool:
    row = con.execute(
        "SELECT count(DISTINCT function_name) FROM duckdb_functions() "
        f"WHERE function_name IN ({', '.join('?' for _ in MACROS)})",
        list(MACROS),
    ).fetchone()
    return bool(row and row[0] == len(MACROS))


def _stored_spec(con: duckdb.DuckDBPyConnection) -> str | None:
    found = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'task_spec'"
    ).fetchone()
    if not found or not found[0]:
        return None
    row = con.execute("SELECT spec FROM task_spec").fetchone()
    return str(row[0]) if row else None
