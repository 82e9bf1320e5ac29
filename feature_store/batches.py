"""Ingest batches: the result types, one transaction per batch, and the steps every batch shares
(user upsert, quarantine reason counts, the ``ingest_batches`` record)."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
from tqdm.auto import tqdm

from feature_store.db import transaction
from recsys.core.errors import DataValidationError

log = logging.getLogger(__name__)

# A file batch stages the whole file in a temporary table and builds hash tables over its ids;
# above this DuckDB spills them to its temp directory, so 10 million events ingest within
# 4 GiB resident (measured in docs/ingest.md, "Throughput and memory").  A connection whose
# memory_limit is already lower keeps it.
BATCH_MEMORY_LIMIT = 3 << 30
_SIZE = re.compile(r"([0-9.]+)\s*([KMGTPE]?)(i?)B(?:ytes)?", re.IGNORECASE)


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
    memory_limit: int | None = BATCH_MEMORY_LIMIT,
) -> Iterator[Batch]:
    """One atomic batch: BEGIN ... COMMIT, or ROLLBACK on any error (temp tables included).

    With ``own_transaction=False`` the caller holds the transaction (an adapter writing several
    batches all-or-nothing).  DuckDB's memory limit is at most ``memory_limit`` bytes meanwhile
    (None: unchanged), see :data:`BATCH_MEMORY_LIMIT`.
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
        with batch_settings(con, memory_limit):
            if own_transaction:
                with transaction(con):
                    yield batch
            else:
                yield batch
    finally:
        bar.close()


@contextmanager
def batch_settings(con: duckdb.DuckDBPyConnection, memory_limit: int | None) -> Iterator[None]:
    """DuckDB settings a batch relies on, for the block, then the caller's values again.

    - ``preserve_insertion_order`` on: staged rows keep the file's order, which is what
      numbers them (``_row``: quarantine row numbers, the first of repeated ids);
    - ``memory_limit`` at most ``memory_limit`` bytes (never raised; None: unchanged).

    DuckDB settings are per database instance and not transactional: hence the restore.  When
    the block fails inside a caller's transaction that DuckDB has aborted, no statement runs
    until the caller rolls back: the settings stay as the batch set them (logged) and the
    original error propagates.
    """
    restore: list[str] = []
    order = _setting(con, "preserve_insertion_order")
    if order.lower() != "true":
        restore.append(f"SET preserve_insertion_order = {order}")
        con.execute("SET preserve_insertion_order = true")
    current = _setting(con, "memory_limit")
    size = _parse_size(current)
    if memory_limit is not None and (size is None or size > memory_limit):
        restore.append(f"SET memory_limit = '{current}'")
        con.execute(f"SET memory_limit = '{memory_limit >> 20}MiB'")
    try:
        yield
    except BaseException:
        _restore(con, restore, failing=True)
        raise
    _restore(con, restore, failing=False)


def _restore(con: duckdb.DuckDBPyConnection, statements: list[str], *, failing: bool) -> None:
    for statement in statements:
        try:
            con.execute(statement)
        except duckdb.Error as exc:
            if not failing:
                raise
            log.warning(
                "could not restore a DuckDB setting (%s) after a failed batch: %s", statement, exc
            )


def _setting(con: duckdb.DuckDBPyConnection, name: str) -> str:
    row = con.execute("SELECT current_setting(?)", [name]).fetchone()
    return str(row[0]) if row else ""


def _parse_size(text: str) -> int | None:
    """Bytes of a DuckDB size such as ``'18.7 GiB'`` or ``'500 KB'``; None if unreadable."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        return None
    number, prefix, binary = match.groups()
    base = 1024 if binary or not prefix else 1000
    return int(float(number) * base ** " KMGTPE".index(prefix.upper() or " "))


def upsert_users(batch: Batch, new_events_sql: str) -> None:
    """Add users first seen in this batch; move ``created_at`` back when an older event came."""
    con, firsts = batch.con, batch.tmp("user_firsts")
    con.execute(f"""CREATE OR REPLACE TEMP TABLE {firsts} AS
        SELECT user_id, min(ts) AS first_ts FROM ({new_events_sql}) GROUP BY user_id""")
    con.execute(f"""UPDATE users SET created_at = f.first_ts FROM {firsts} f
        WHERE users.user_id = f.user_id
          AND (users.created_at IS NULL OR f.first_ts < users.created_at)""")
    con.execute(
        f"""INSERT INTO users SELECT f.user_id, f.first_ts, $source
        FROM {firsts} f ANTI JOIN users u ON u.user_id = f.user_id""",
        {"source": batch.source},
    )
    con.execute(f"DROP TABLE {firsts}")


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
