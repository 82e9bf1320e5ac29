"""Opening the DuckDB store: the one place that opens database files.

DuckDB allows one writing process at a time.  Writers (ingest, scoring, the event-log consumer)
open the file read-write; serving workers open it read-only (see README, "Stores and
concurrency").  A connection is not thread-safe: use ``con.cursor()`` per thread or request.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path

import duckdb

from feature_store.task import ensure_macros
from recsys.core.errors import RecsysError

log = logging.getLogger(__name__)

EVENT_TYPES: tuple[str, ...] = (
    "impression",
    "click",
    "view",
    "rate",
    "like",
    "comment",
    "share",
    "purchase",
    "tag",
)

_LOCK_RETRY_SECONDS = 30.0


class StoreLockedError(RecsysError):
    """Another process holds the DuckDB write lock."""

    code = "store_locked"
    http_status = 503


def connect(
    db_path: Path | str, *, read_only: bool = False, threads: int | None = None
) -> duckdb.DuckDBPyConnection:
    """Open (and, read-write, create) the store at ``db_path`` with its schema in place.

    A read-write open waits up to 30 s for another writer to release the file lock.
    """
    path = Path(db_path)
    if read_only and not path.exists():
        raise RecsysError(f"store {path} does not exist; run `recsys ingest` first")
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + (0 if read_only else _LOCK_RETRY_SECONDS)
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() >= deadline:
                raise StoreLockedError(
                    f"cannot open store {path}: {exc}. Another process is writing to it; wait "
                    "for it to finish (the server's event writer is the only long-lived writer)."
                ) from exc
            time.sleep(0.5)
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    if not read_only:
        init_schema(con)
    return con


def init_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create every table that does not exist yet (idempotent)."""
    ddl = resources.files("feature_store").joinpath("schema.sql").read_text(encoding="utf-8")
    con.execute(ddl)
    ensure_macros(con)


@contextlib.contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """All-or-nothing: a batch either lands whole or leaves the store as it was."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    else:
        con.execute("COMMIT")


def table_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Row counts of the main tables, for summaries and readiness checks."""
    out: dict[str, int] = {}
    for table in ("items", "users", "events", "quarantine"):
        row = con.execute(f"SELECT count(*) FROM {table}").fetchone()
        out[table] = int(row[0]) if row else 0
    return out


def checkpoint(con: duckdb.DuckDBPyConnection) -> None:
    """Write everything committed into the main database file (the WAL is then empty)."""
    con.execute("CHECKPOINT")


def existing_items(cur: duckdb.DuckDBPyConnection, item_ids: Iterable[str]) -> set[str]:
    """Which of ``item_ids`` the store's catalog has."""
    ids = list(dict.fromkeys(item_ids))
    if not ids:
        return set()
    rows = cur.execute(
        "SELECT DISTINCT item_id FROM items WHERE item_id IN (SELECT unnest($ids))", {"ids": ids}
    ).fetchall()
    return {str(r[0]) for r in rows}


def existing_event_ids(cur: duckdb.DuckDBPyConnection, event_ids: Iterable[str]) -> set[str]:
    """Which of ``event_ids`` the store's events table already holds."""
    ids = list(dict.fromkeys(event_ids))
    if not ids:
        return set()
    rows = cur.execute(
        "SELECT DISTINCT event_id FROM events WHERE event_id IN (SELECT unnest($ids))", {"ids": ids}
    ).fetchall()
    return {str(r[0]) for r in rows}
