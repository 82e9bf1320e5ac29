"""Store deltas: what changed since a full snapshot, as a small DuckDB file, and the overlay
that reads a base snapshot and its delta as one store.

Serving publishes a full copy of the store (a *base*) now and then, and in between only a
*delta*: the rows the event writer added since the base.  What the writer changes is narrow:

* ``events`` and ``interleaved_items`` only grow (no process deletes or updates their rows), so
  the rows past the base's last ``rowid`` are exactly the new ones (``table_marks``);
* ``users`` rows and the ``live`` rows of ``user_embeddings`` / ``text_scores`` are rewritten for
  the users whose events arrived; the delta carries those users' complete current rows and the
  list of the users (``changed_users``), and the overlay hides the base's rows of those users.

Anything else (a batch job's writes, another scope's vectors, items) changes only with a new base.
A delta is cumulative (everything since its base), so a reader needs the base and one delta.

The overlay: the delta is ATTACHed read-only to the connection that has the base open, and each
cursor gets TEMP views named like the tables (``overlay_statements``); a temp view shadows the
base table of the same name, so every query and macro of the feature code runs unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import duckdb

from recsys.core.rules import LIVE_SCOPE

APPEND_TABLES: tuple[str, ...] = ("events", "interleaved_items")
# table -> extra condition on the base rows the delta replaces (besides the user being changed)
USER_TABLES: dict[str, str] = {
    "users": "TRUE",
    "user_embeddings": f"scope = '{LIVE_SCOPE.name}'",
    "text_scores": f"scope = '{LIVE_SCOPE.name}'",
}
CHANGED_USERS = "changed_users"
_ALIAS = "recsys_delta_out"


def table_marks(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """The last ``rowid`` of every append-only table (-1 when empty): a base's watermarks."""
    marks = {}
    for table in APPEND_TABLES:
        row = con.execute(f"SELECT coalesce(max(rowid), -1) FROM {table}").fetchone()
        marks[table] = int(row[0]) if row else -1
    return marks


def write_delta(
    con: duckdb.DuckDBPyConnection, path: Path, marks: dict[str, int], users: Iterable[str]
) -> int:
    """Write the rows added since ``marks`` and the current rows of ``users`` to a new DuckDB
    file ``path`` (which must not exist); returns the number of events in it."""
    if path.exists():
        raise FileExistsError(f"delta {path} exists already")
    con.execute(f"ATTACH '{_quoted(path)}' AS {_ALIAS}")
    try:
        con.execute(
            f"CREATE TABLE {_ALIAS}.{CHANGED_USERS} AS "
            "SELECT DISTINCT unnest($users::VARCHAR[]) AS user_id",
            {"users": sorted(set(users))},
        )
        for table in APPEND_TABLES:
            con.execute(
                f"CREATE TABLE {_ALIAS}.{table} AS SELECT * FROM {table} WHERE rowid > $mark",
                {"mark": marks.get(table, -1)},
            )
        for table, condition in USER_TABLES.items():
            con.execute(
                f"CREATE TABLE {_ALIAS}.{table} AS SELECT * FROM {table} WHERE {condition} "
                f"AND user_id IN (SELECT user_id FROM {_ALIAS}.{CHANGED_USERS})"
            )
        row = con.execute(f"SELECT count(*) FROM {_ALIAS}.events").fetchone()
    finally:
        con.execute(f"DETACH {_ALIAS}")
    return int(row[0]) if row else 0


def attach_delta(con: duckdb.DuckDBPyConnection, path: str, alias: str) -> list[str]:
    """ATTACH the delta at ``path`` read-only as ``alias`` to ``con`` (a base snapshot's
    connection); returns the statements that make a cursor of ``con`` read base + delta."""
    base = con.execute("SELECT current_database()").fetchone()
    if base is None:
        raise RuntimeError("the connection has no database")
    con.execute(f"ATTACH '{_quoted(Path(path))}' AS {alias} (READ_ONLY)")
    return overlay_statements(str(base[0]), alias)


def detach_delta(con: duckdb.DuckDBPyConnection, alias: str) -> None:
    con.execute(f"DETACH DATABASE IF EXISTS {alias}")


def overlay_statements(base: str, alias: str) -> list[str]:
    """TEMP views (one per table the writer changes) over database ``base`` and delta ``alias``."""
    src = f'"{base}".main'
    views = [
        f"CREATE OR REPLACE TEMP VIEW {table} AS SELECT * FROM {src}.{table} "
        f"UNION ALL BY NAME SELECT * FROM {alias}.{table}"
        for table in APPEND_TABLES
    ]
    views += [
        f"CREATE OR REPLACE TEMP VIEW {table} AS SELECT * FROM {src}.{table} "
        f"WHERE NOT ({condition} AND user_id IN (SELECT user_id FROM {alias}.{CHANGED_USERS})) "
        f"UNION ALL BY NAME SELECT * FROM {alias}.{table}"
        for table, condition in USER_TABLES.items()
    ]
    return views


def apply_overlay(cursor: duckdb.DuckDBPyConnection, statements: list[str]) -> None:
    """Make ``cursor`` read base + delta (the statements of ``attach_delta``)."""
    for statement in statements:
        cursor.execute(statement)


def _quoted(path: Path) -> str:
    return str(path).replace("'", "''")
