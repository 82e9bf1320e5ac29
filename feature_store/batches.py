"""Ingest batches: the result types, one transaction per batch, and the steps every batch shares
(user upsert, quarantine reason counts, the ``ingest_batches`` record)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
from tqdm.auto import tqdm

from feature_store.db import transaction
from recsys.errors import DataValidationError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecordStatus:
    """What happened to one record of :func:`ingest_event_records`."""

    index: int
    event_id: str | None
    status: str  # 'accepted' | 'duplicate' | 'rejected'
    reason: str | None


@dataclass(frozen=True)
class IngestResult:
    """Counts of one batch; ``reasons`` maps each quarantine reason to its count."""

    batch_id: str
    kind: str
    source: str
    rows_read: int
    rows_written: int
    rows_duplicate: int
    rows_quarantined: int
    reasons: dict[str, int]
    statuses: tuple[RecordStatus, ...] = ()


@dataclass
class Batch:
    """An open batch inside a transaction: its id, kind, source and temp-table prefix."""

    con: duckdb.DuckDBPyConnection
    batch_id: str
    kind: str
    source: str
    started_at: datetime
    progress: tqdm

    def tmp(self, name: str) -> str:
        """A temp-table name private to this batch."""
        return f"_ingest_{self.batch_id[:12]}_{name}"

    def step(self, description: str) -> None:
        """Advance the progress bar by one step."""
        self.progress.set_postfix_str(description, refresh=False)
        self.progress.update(1)

    def record(self, result: IngestResult, sha256: str | None = None) -> None:
        """Write the ``ingest_batches`` row (part of the same transaction)."""
        self.con.execute(
            "INSERT INTO ingest_batches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                result.batch_id,
                result.kind,
                result.source,
                sha256,
                result.rows_read,
                result.rows_written,
                result.rows_duplicate,
                result.rows_quarantined,
                self.started_at,
                now_utc(),
            ],
        )


@contextmanager
def open_batch(
    con: duckdb.DuckDBPyConnection,
    kind: str,
    source: str,
    *,
    steps: int,
    progress: bool,
    own_transaction: bool = True,
) -> Iterator[Batch]:
    """One atomic batch: BEGIN ... COMMIT, or ROLLBACK on any error (temp tables included).

    With ``own_transaction=False`` the caller holds the transaction (an adapter writing several
    batches all-or-nothing).
    """
    bar = tqdm(
        total=steps,
        desc=f"ingest {kind} {Path(source).name}",
        unit="step",
        disable=not progress,
        leave=False,
    )
    batch = Batch(con, uuid.uuid4().hex, kind, source, now_utc(), bar)
    con.execute("SET enable_progress_bar = false")  # our own bar; DuckDB's writes to stdout
    try:
        if own_transaction:
            with transaction(con):
                yield batch
        else:
            yield batch
    finally:
        bar.close()


def upsert_users(batch: Batch, new_events_sql: str) -> None:
    """Add users first seen in this batch; move ``created_at`` back when an older event came."""
    con = batch.con
    firsts = f"SELECT user_id, min(ts) AS first_ts FROM ({new_events_sql}) GROUP BY user_id"
    con.execute(f"""UPDATE users SET created_at = f.first_ts FROM ({firsts}) f
        WHERE users.user_id = f.user_id
          AND (users.created_at IS NULL OR f.first_ts < users.created_at)""")
    con.execute(
        f"""INSERT INTO users SELECT user_id, first_ts, $source FROM ({firsts}) f
        WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.user_id = f.user_id)""",
        {"source": batch.source},
    )


def bad_reasons(con: duckdb.DuckDBPyConnection, typed: str) -> dict[str, int]:
    rows = con.execute(
        f"SELECT reason, count(*) FROM {typed} WHERE reason IS NOT NULL GROUP BY reason "
        "ORDER BY count(*) DESC, reason"
    ).fetchall()
    return {str(r): int(n) for r, n in rows}


def raise_first_bad(
    con: duckdb.DuckDBPyConnection, typed: str, path: str, row: str = "_row"
) -> None:
    found = con.execute(
        f"SELECT {row}, bad_column, reason FROM {typed} WHERE reason IS NOT NULL ORDER BY _row "
        "LIMIT 1"
    ).fetchone()
    if found is not None:
        raise DataValidationError(
            f"{found[2]} (--strict: the whole batch was rejected; nothing was written)",
            path=path,
            row=int(found[0]),
            column=str(found[1]),
        )


def count_of(cursor: duckdb.DuckDBPyConnection) -> int:
    row = cursor.fetchone()
    return int(row[0]) if row else 0


def log_result(result: IngestResult) -> None:
    log.info(
        "ingest %s %s: read %d, wrote %d, duplicate %d, quarantined %d%s",
        result.kind,
        result.source,
        result.rows_read,
        result.rows_written,
        result.rows_duplicate,
        result.rows_quarantined,
        f" {result.reasons}" if result.reasons else "",
    )


def now_utc() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)
