"""Generic ingest: files or records -> validated rows in ``events``/``items``/``users``.

One call is one *batch*: it runs in one transaction (killing the process mid-batch leaves the
store as it was), is recorded in ``ingest_batches`` and writes its bad rows to ``quarantine``
with a reason, the column and the raw row.  Valid rows are never dropped; re-ingesting the same
data adds nothing (events are keyed by ``event_id``, or a content hash when the source has none;
items are replaced in place by ``item_id``).  The work happens in DuckDB SQL: the file is read
once into a typed staging table, then bad rows go to ``quarantine`` and new valid ones to
``events`` in one INSERT each.  Column contract, exit codes and measured throughput (10
million events in well under a minute of CPU): docs/ingest.md.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from feature_store.batches import (
    Batch,
    IngestResult,
    RecordStatus,
    bad_reasons,
    count_of,
    log_result,
    now_utc,
    open_batch,
    raise_first_bad,
    upsert_users,
)
from feature_store.sources import drop_stage, file_select, infer_format, stage_file, stage_query
from feature_store.validation import (
    EVENT_COLUMNS,
    EVENT_REQUIRED,
    ITEM_COLUMNS,
    ITEM_LIST_COLUMNS,
    ITEM_REQUIRED,
    events_checked_sql,
    item_ids_to_look_up,
    items_reason_sql,
    items_typed_sql,
    printable,
    validate_event_record,
)

log = logging.getLogger(__name__)

# What storing a record that passed validation may still raise when the record itself is at
# fault (a value the store cannot hold), as opposed to the store (I/O, locks, a full disk).
RECORD_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    OverflowError,
    UnicodeError,
    pa.ArrowException,
    duckdb.DataError,
    duckdb.ConstraintException,
    duckdb.InvalidInputException,
)

__all__ = [
    "IngestResult",
    "RecordStatus",
    "open_batch",
    "write_events",
    "write_items",
    "ingest_event_records",
    "ingest_events_file",
    "ingest_items_file",
    "validate_event_record",
]


def ingest_events_file(
    con: duckdb.DuckDBPyConnection,
    path: str | Path,
    *,
    fmt: str | None = None,
    source: str | None = None,
    strict: bool = False,
    progress: bool = True,
) -> IngestResult:
    """Ingest an events file (CSV, TSV, Parquet, JSONL) as one atomic batch.

    Raises :class:`DataValidationError` (nothing written) when the file cannot be read as a
    table or lacks a required column, and, with ``strict``, on the first bad row.
    """
    path = Path(path)
    fmt = infer_format(path, fmt)
    with open_batch(con, "events", source or str(path), steps=4, progress=progress) as batch:
        select, sha = file_select(con, path, fmt, required=EVENT_REQUIRED, known=EVENT_COLUMNS)
        result = write_events(batch, select, strict=strict, path=str(path))
        batch.record(result, sha)
    log_result(result)
    return result


def ingest_items_file(
    con: duckdb.DuckDBPyConnection,
    path: str | Path,
    *,
    fmt: str | None = None,
    source: str | None = None,
    strict: bool = False,
    progress: bool = True,
) -> IngestResult:
    """Ingest an items file as one atomic batch; an existing ``item_id`` is replaced in place."""
    path = Path(path)
    fmt = infer_format(path, fmt)
    with open_batch(con, "items", source or str(path), steps=3, progress=progress) as batch:
        staged = stage_file(
            con,
            path,
            fmt,
            batch.tmp("raw"),
            required=ITEM_REQUIRED,
            known=ITEM_COLUMNS,
            list_columns=ITEM_LIST_COLUMNS,
        )
        batch.step(f"read {staged.rows} rows")
        result = write_items(
            batch, staged.table, rows_read=staged.rows, strict=strict, path=str(path)
        )
        batch.record(result, staged.sha256)
        drop_stage(con, staged.table)
    log_result(result)
    return result


def write_events(
    batch: Batch,
    source_sql: str,
    *,
    strict: bool = False,
    path: str | None = None,
    known_items: str = "items",
    source_row: str | None = None,
) -> IngestResult:
    """Validate the text rows of the SELECT ``source_sql`` and write them (inside ``batch``).

    ``source_sql`` yields the text columns of :data:`EVENT_COLUMNS` in source order; it is read
    once, straight into a typed temp table.  ``known_items`` is the table (or subquery) of item
    ids events may reference; ``source_row`` names a column of ``source_sql`` holding the row
    number in the source file (when several events come from one line), else rows count 1, 2, ...
    """
    con, typed = batch.con, batch.tmp("typed")
    line = source_row or "NULL::BIGINT"
    rows_read = stage_query(
        con,
        events_checked_sql(f"({source_sql})", known_items, line),
        typed,
        path=Path(path) if path else None,
    )
    batch.step(f"read {rows_read} rows")
    reasons = bad_reasons(con, typed)
    if strict and reasons:
        raise_first_bad(con, typed, path or batch.source, row="coalesce(_line, _row)")
    if reasons:
        _quarantine_events(batch, typed)
    quarantined = sum(reasons.values())
    batch.step(f"quarantined {quarantined}")
    written = _insert_new_events(batch, typed)
    batch.step(f"wrote {written} events")
    upsert_users(batch, f"SELECT user_id, ts FROM {typed} WHERE reason IS NULL")
    batch.step("users")
    drop_stage(con, typed)
    return IngestResult(
        batch.batch_id,
        batch.kind,
        batch.source,
        rows_read,
        written,
        rows_read - quarantined - written,
        quarantined,
        reasons,
    )


def _insert_new_events(batch: Batch, typed: str) -> int:
    """Insert valid rows whose id is not stored yet (first of repeated ids); returns the count."""
    con = batch.con
    # Keeping the first of repeated ids costs a window over the batch: only pay when needed.
    # Counting distinct 64-bit hashes is cheaper than distinct strings and never misses a
    # repeat (equal ids hash equal); a collision only costs the window, never a wrong row.
    repeats = con.execute(
        f"SELECT count(*) <> count(DISTINCT hash(event_id)) FROM {typed} WHERE reason IS NULL"
    ).fetchone()
    first_only = (
        "QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY _row) = 1"
        if repeats and repeats[0]
        else ""
    )
    # NOT IN builds one hash table of the stored ids alone and streams the batch past it
    # (``events.event_id`` is NOT NULL, so NOT IN is a plain anti-join).  A correlated NOT
    # EXISTS is planned as a delim join that first de-duplicates every incoming id: several
    # times slower, and it was most of the cost of re-ingesting a large file.
    return count_of(
        con.execute(
            f"""INSERT INTO events (event_id, user_id, item_id, event_type, value, text, ts,
                               request_id, position, source, batch_id)
        SELECT event_id, user_id, item_id, event_type, value, text, ts, request_id, position,
               $source, $batch_id
        FROM {typed}
        WHERE reason IS NULL AND event_id NOT IN (SELECT event_id FROM events)
        {first_only}""",
            {"source": batch.source, "batch_id": batch.batch_id},
        )
    )


def _quarantine_events(batch: Batch, typed: str) -> None:
    """Copy bad event rows into ``quarantine`` (once per source row and raw content)."""
    batch.con.execute(
        f"""INSERT INTO quarantine
        SELECT $batch_id, $source, coalesce(_line, _row), bad_column, raw, reason, $now
        FROM {typed} t
        WHERE reason IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM quarantine q WHERE q.source = $source
            AND q.row_number = coalesce(t._line, t._row) AND q.raw = t.raw)""",
        {"batch_id": batch.batch_id, "source": batch.source, "now": now_utc()},
    )


def write_items(
    batch: Batch, staged: str, *, rows_read: int, strict: bool = False, path: str | None = None
) -> IngestResult:
    """Validate staged item rows and upsert them (a later row for the same id wins)."""
    con, typed = batch.con, batch.tmp("items_typed")
    reason, column = items_reason_sql()
    con.execute(f"""CREATE OR REPLACE TEMP TABLE {typed} AS
        SELECT *, {reason} AS reason, {column} AS bad_column FROM ({items_typed_sql(staged)})""")
    reasons = bad_reasons(con, typed)
    if strict and reasons:
        raise_first_bad(con, typed, path or batch.source)
    if reasons:
        _quarantine(batch, typed, staged, ITEM_COLUMNS)
    quarantined = sum(reasons.values())
    batch.step(f"quarantined {quarantined}")
    latest = f"""SELECT * FROM {typed} WHERE reason IS NULL
        QUALIFY row_number() OVER (PARTITION BY item_id ORDER BY _row DESC) = 1"""
    con.execute(f"DELETE FROM items WHERE item_id IN (SELECT item_id FROM ({latest}))")
    written = count_of(
        con.execute(
            f"""INSERT INTO items
        SELECT item_id, title, year, description, tagline, keywords, genres,
               coalesce(category, genres[1]), director, actors, coalesce(tags, []), url,
               created_at, $source, $now
        FROM ({latest})""",
            {"source": batch.source, "now": now_utc()},
        )
    )
    batch.step(f"wrote {written} items")
    con.execute(f"DROP TABLE {typed}")
    return IngestResult(
        batch.batch_id,
        batch.kind,
        batch.source,
        rows_read,
        written,
        rows_read - quarantined - written,
        quarantined,
        reasons,
    )


def ingest_event_records(
    con: duckdb.DuckDBPyConnection, records: Sequence[Mapping[str, Any]], *, source: str = "api"
) -> IngestResult:
    """Validate and write a small batch of event records atomically, with a status per record.

    Used by serving's event-log consumer: the same rules as files, a content-hash id when a
    record has no ``event_id``; a record whose id is already stored (or earlier in the batch)
    is a ``duplicate``, a bad one is ``rejected`` and quarantined.
    """
    known = _known_items(con, records)
    checked = [validate_event_record(r, known.__contains__) for r in records]
    candidate_ids = [row["event_id"] for row, _ in checked if row is not None]
    existing = _existing_event_ids(con, candidate_ids)
    statuses: list[RecordStatus] = []
    accepted: list[dict[str, Any]] = []
    rejected: list[tuple[int, str]] = []
    for index, (row, reason) in enumerate(checked):
        if row is None:
            statuses.append(RecordStatus(index, _raw_event_id(records[index]), "rejected", reason))
            rejected.append((index, str(reason)))
        elif row["event_id"] in existing:
            statuses.append(RecordStatus(index, row["event_id"], "duplicate", None))
        else:
            existing.add(row["event_id"])
            accepted.append(row)
            statuses.append(RecordStatus(index, row["event_id"], "accepted", None))
    # A few records: no need to touch DuckDB's memory limit.
    with open_batch(con, "api", source, steps=1, progress=False, memory_limit=None) as batch:
        _insert_records(batch, accepted)
        for index, reason in rejected:
            _quarantine_record(batch, index, records[index], reason)
        result = IngestResult(
            batch.batch_id,
            "api",
            source,
            len(records),
            len(accepted),
            len(records) - len(accepted) - len(rejected),
            len(rejected),
            dict(Counter(reason for _, reason in rejected)),
            tuple(statuses),
        )
        batch.record(result)
    return result


def quarantine_event_records(
    con: duckdb.DuckDBPyConnection,
    records: Sequence[tuple[int, Any, str]],
    *,
    source: str = "api",
) -> IngestResult:
    """Quarantine ``(index, record, reason)`` triples as one batch, storing nothing else.

    For records that passed validation but still failed to store (the event writer isolates
    them); the raw record is kept as ASCII-escaped JSON, which any store can hold.
    """
    with open_batch(con, "api", source, steps=1, progress=False, memory_limit=None) as batch:
        for index, record, reason in records:
            _quarantine_record(batch, index, record, reason)
        reasons = Counter(reason for _, _, reason in records)
        result = IngestResult(
            batch.batch_id,
            "api",
            source,
            len(records),
            0,
            0,
            len(records),
            dict(reasons),
            tuple(
                RecordStatus(index, _raw_event_id(record), "rejected", reason)
                for index, record, reason in records
            ),
        )
        batch.record(result)
    return result


def _quarantine_record(batch: Batch, index: int, record: Any, reason: str) -> None:
    batch.con.execute(
        "INSERT INTO quarantine VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            batch.batch_id,
            batch.source,
            index + 1,
            None,
            json.dumps(record, default=str),  # ensure_ascii: lone surrogates become escapes
            printable(reason),
            now_utc(),
        ],
    )


def _insert_records(batch: Batch, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    table = pa.Table.from_pylist(
        [{**r, "source": batch.source, "batch_id": batch.batch_id} for r in rows],
        schema=pa.schema(
            [
                ("event_id", pa.string()),
                ("user_id", pa.string()),
                ("item_id", pa.string()),
                ("event_type", pa.string()),
                ("value", pa.float64()),
                ("text", pa.string()),
                ("ts", pa.timestamp("us")),
                ("request_id", pa.string()),
                ("position", pa.int32()),
                ("source", pa.string()),
                ("batch_id", pa.string()),
                ("recommendation_id", pa.string()),
            ]
        ),
    )
    name = batch.tmp("records")
    batch.con.register(name, table)
    try:
        batch.con.execute(f"INSERT INTO events BY NAME SELECT * FROM {name}")
        upsert_users(batch, f"SELECT user_id, ts FROM {name}")
    finally:
        batch.con.unregister(name)


def _quarantine(batch: Batch, typed: str, staged: str, columns: Sequence[str]) -> int:
    """Copy rows with a reason into ``quarantine`` with the raw staged row as JSON (once per
    source row); returns how many were new.  Call it only when there are bad rows."""
    raw = "to_json({" + ", ".join(f"'{c}': s.\"{c}\"" for c in columns) + "})::VARCHAR"
    return count_of(
        batch.con.execute(
            f"""INSERT INTO quarantine
        SELECT $batch_id, $source, s._row, t.bad_column, {raw}, t.reason,
               $now
        FROM (SELECT _row, bad_column, reason FROM {typed} WHERE reason IS NOT NULL) t
        JOIN {staged} s ON s._row = t._row
        -- the same bad row of the same source, quarantined before: keep one copy
        WHERE NOT EXISTS (SELECT 1 FROM quarantine q WHERE q.source = $source
                          AND q.row_number = s._row AND q.raw = {raw})""",
            {"batch_id": batch.batch_id, "source": batch.source, "now": now_utc()},
        )
    )


def _known_items(con: duckdb.DuckDBPyConnection, records: Sequence[Mapping[str, Any]]) -> set[str]:
    wanted = item_ids_to_look_up(records)
    if not wanted:
        return set()
    rows = con.execute(
        "SELECT item_id FROM items WHERE item_id IN (SELECT unnest($ids))", {"ids": wanted}
    ).fetchall()
    return {str(r[0]) for r in rows}


def _existing_event_ids(con: duckdb.DuckDBPyConnection, ids: list[str]) -> set[str]:
    if not ids:
        return set()
    rows = con.execute(
        "SELECT event_id FROM events WHERE event_id IN (SELECT unnest($ids))", {"ids": ids}
    ).fetchall()
    return {str(r[0]) for r in rows}


def _raw_event_id(record: Any) -> str | None:
    value = record.get("event_id") if isinstance(record, Mapping) else None
    return value if isinstance(value, str) and value.strip() else None
