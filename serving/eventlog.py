"""The durable event log between the API workers and the single DuckDB writer.

DuckDB lets one process hold the store read-write and shuts every other process out, so API
workers never write the store.  They append validated events here and answer 2xx only after the
append is durable.  The log is a SQLite database in WAL mode with ``synchronous=FULL``:

* a batch is one transaction, so it is logged whole or not at all, and the commit fsyncs the WAL
  before ``append`` returns (an acknowledged event survives ``kill -9`` and power loss);
* SQLite serialises writers from any number of processes on one host (gunicorn workers), and
  ``event_id`` is the primary key, so a repeated event id is reported as a duplicate at once,
  whichever worker saw it first - JSONL segment files would only find that out at ingest;
* ``seq`` grows in commit order, so the writer consumes ``seq > checkpoint`` and moves the
  checkpoint only after the store transaction committed (at-least-once delivery into an
  idempotent ingest = each event lands exactly once).

All statements are parameterized.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from recsys.core.errors import RecsysError
from serving.errors import redact_paths

log = logging.getLogger(__name__)

LOG_FILE = "events.sqlite3"
_BUSY_TIMEOUT_S = 30.0

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS event_log (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id    TEXT NOT NULL UNIQUE,
        payload     TEXT NOT NULL,
        received_at REAL NOT NULL,
        worker_pid  INTEGER NOT NULL
    )""",
    "CREATE TABLE IF NOT EXISTS log_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # team-draft interleaved lists (serving.interleave_challenger), one row per served list
    """CREATE TABLE IF NOT EXISTS interleaving_log (
        seq               INTEGER PRIMARY KEY AUTOINCREMENT,
        recommendation_id TEXT NOT NULL UNIQUE,
        payload           TEXT NOT NULL
    )""",
)
_CHECKPOINT_KEY = "ingested_seq"
_LISTS_CHECKPOINT_KEY = "interleaving_seq"
# a served list is recorded on the request thread: wait this long at most for the write lock
_LIST_BUSY_TIMEOUT_S = 0.25


class EventLogUnavailableError(RecsysError):
    """The event log cannot take events now (unwritable, full disk); nothing was acknowledged."""

    code = "event_log_unavailable"
    http_status = 503


@dataclass(frozen=True)
class LoggedEvent:
    seq: int
    event_id: str
    record: dict[str, Any]


class EventLog:
    """Append-only, durable, multi-process event log under ``directory``.

    One instance per process (and per thread: a SQLite connection is opened per call, which
    costs ~50 µs and keeps the object safe to share between gunicorn threads).
    """

    def __init__(self, directory: Path | str, *, strict: bool = True) -> None:
        """Open (creating) the log; with ``strict=False`` a log that cannot be opened now is
        only logged, and ``append`` retries (an API worker keeps serving recommendations)."""
        self.directory = Path(directory)
        self.path = self.directory / LOG_FILE
        self._ready = False
        try:
            self._ensure_schema()
        except (OSError, sqlite3.Error) as exc:
            if strict:
                raise
            log.error("event log %s unavailable: %s; POST /v1/events answers 503", self.path, exc)

    def _ensure_schema(self) -> None:
        if self._ready:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            for statement in _SCHEMA:
                con.execute(statement)
        self._ready = True

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            # FULL: every commit fsyncs the WAL, so a commit that returned is on disk.
            con.execute("PRAGMA synchronous=FULL")
            yield con
        finally:
            con.close()

    def append(self, records: Sequence[Mapping[str, Any]]) -> set[str]:
        """Durably log ``records`` (each with an ``event_id``); return the ids already logged.

        The whole batch is one transaction; when this returns, the new events are on disk.
        """
        if not records:
            return set()
        try:
            return self._append(records)
        except (OSError, sqlite3.Error) as exc:
            log.error("cannot append %d events to %s: %s", len(records), self.path, exc)
            raise EventLogUnavailableError(
                f"the event log cannot take events now ({exc}); nothing was recorded, retry "
                "later (the operator must make the log writable: see docs/serving.md)"
            ) from exc

    def _append(self, records: Sequence[Mapping[str, Any]]) -> set[str]:
        self._ensure_schema()
        now = time.time()
        pid = os.getpid()
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")  # takes the write lock: no other worker interleaves
            try:
                # known ids are not offered to INSERT OR IGNORE, which would burn a seq each
                duplicates = self._known(con, [str(r["event_id"]) for r in records])
                for record in records:
                    event_id = str(record["event_id"])
                    if event_id in duplicates:
                        continue
                    cur = con.execute(
                        "INSERT OR IGNORE INTO event_log (event_id, payload, received_at,"
                        " worker_pid) VALUES (?, ?, ?, ?)",
                        (event_id, json.dumps(record, default=_json_default), now, pid),
                    )
                    if cur.rowcount == 0:
                        duplicates.add(event_id)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return duplicates

    def append_list(self, record: Mapping[str, Any]) -> bool:
        """Record one interleaved list (with its ``recommendation_id``); False when the log
        cannot take it now (logged, never raised: the list is served all the same).

        Not fsynced (``synchronous=NORMAL``, durable at the next WAL checkpoint) and waiting
        at most ``_LIST_BUSY_TIMEOUT_S`` for the lock, so the request stays fast; a list lost
        in a crash only leaves its clicks out of the online evaluation.
        """
        try:
            self._ensure_schema()
            con = sqlite3.connect(self.path, timeout=_LIST_BUSY_TIMEOUT_S, isolation_level=None)
            try:
                con.execute("PRAGMA journal_mode=WAL")
                con.execute("PRAGMA synchronous=NORMAL")
                con.execute(
                    "INSERT OR IGNORE INTO interleaving_log (recommendation_id, payload) "
                    "VALUES (?, ?)",
                    (str(record["recommendation_id"]), json.dumps(record, default=_json_default)),
                )
            finally:
                con.close()
        except (OSError, sqlite3.Error) as exc:
            log.warning("interleaved list not recorded (%s); its clicks will not count", exc)
            return False
        return True

    def pending_lists(self, limit: int = 50_000) -> list[tuple[int, dict[str, Any]]]:
        """Interleaved lists the writer has not stored yet: ``(seq, record)`` in order."""
        with self._connect() as con:
            rows = con.execute(
                "SELECT seq, payload FROM interleaving_log WHERE seq > ? ORDER BY seq LIMIT ?",
                (self._checkpoint(con, _LISTS_CHECKPOINT_KEY), int(limit)),
            ).fetchall()
        return [(int(seq), json.loads(payload)) for seq, payload in rows]

    def mark_lists_stored(self, seq: int) -> None:
        """Move the lists' checkpoint (only after the store transaction committed)."""
        self._set_meta(_LISTS_CHECKPOINT_KEY, seq)

    def known_ids(self, event_ids: Iterable[str]) -> set[str]:
        """Which of ``event_ids`` are already in the log."""
        with self._connect() as con:
            return self._known(con, event_ids)

    @staticmethod
    def _known(con: sqlite3.Connection, event_ids: Iterable[str]) -> set[str]:
        ids = list(dict.fromkeys(event_ids))
        found: set[str] = set()
        for start in range(0, len(ids), 500):  # SQLite's host-parameter limit
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = con.execute(
                f"SELECT event_id FROM event_log WHERE event_id IN ({marks})", chunk
            ).fetchall()
            found.update(row[0] for row in rows)
        return found

    def pending(self, limit: int = 50_000) -> list[LoggedEvent]:
        """Logged events the writer has not ingested yet, in commit order."""
        with self._connect() as con:
            rows = con.execute(
                "SELECT seq, event_id, payload FROM event_log WHERE seq > ? ORDER BY seq LIMIT ?",
                (self._checkpoint(con), int(limit)),
            ).fetchall()
        return [LoggedEvent(int(seq), str(eid), json.loads(payload)) for seq, eid, payload in rows]

    def backlog(self) -> int:
        """How many logged events are waiting for the writer."""
        with self._connect() as con:
            row = con.execute(
                "SELECT count(*) FROM event_log WHERE seq > ?", (self._checkpoint(con),)
            ).fetchone()
        return int(row[0])

    def checkpoint(self) -> int:
        """The highest ``seq`` known to be committed into the store."""
        with self._connect() as con:
            return self._checkpoint(con)

    def mark_ingested(self, seq: int) -> None:
        """Move the checkpoint to ``seq`` (call only after the store transaction committed)."""
        self._set_meta(_CHECKPOINT_KEY, seq)

    def _set_meta(self, key: str, seq: int) -> None:
        with self._connect() as con:
            con.execute(
                "INSERT INTO log_meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, str(int(seq))),
            )

    def health(self) -> dict[str, Any]:
        """For /readyz: whether the log takes writes now, its backlog and the oldest's age."""
        # no file path: /readyz is unauthenticated (GET /v1/admin/status adds the path)
        out: dict[str, Any] = {"ok": True, "state": "writable"}
        try:
            self._ensure_schema()
            con = sqlite3.connect(self.path, timeout=0.5, isolation_level=None)
            try:
                try:
                    con.execute("BEGIN IMMEDIATE")  # the write lock: fails on a read-only log
                    con.execute("ROLLBACK")
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) and "busy" not in str(exc):
                        raise  # locked = another worker is appending: writable, just busy
                checkpoint = self._checkpoint(con)
                count, oldest = con.execute(
                    "SELECT count(*), min(received_at) FROM event_log WHERE seq > ?",
                    (checkpoint,),
                ).fetchone()
            finally:
                con.close()
        except (OSError, sqlite3.Error) as exc:
            return {
                **out,
                "ok": False,
                "state": "unwritable",
                "error": redact_paths(f"{type(exc).__name__}: {exc}"),
            }
        age = max(0.0, time.time() - float(oldest)) if oldest is not None else 0.0
        return {**out, "backlog": int(count), "oldest_age_s": round(age, 3)}

    def total(self) -> int:
        with self._connect() as con:
            return int(con.execute("SELECT count(*) FROM event_log").fetchone()[0])

    @staticmethod
    def _checkpoint(con: sqlite3.Connection, key: str = _CHECKPOINT_KEY) -> int:
        row = con.execute("SELECT value FROM log_meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"cannot log a value of type {type(value).__name__}")
