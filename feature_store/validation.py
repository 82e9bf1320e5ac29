"""Event and item validation rules, written once for SQL (files) and once for Python (the API).

The two paths must agree row for row: ``tests/unit/test_ingest_validation.py`` runs the same
records through both.  A rule returns a short, stable reason string; the first failing rule wins.

Rules for an event (column contract in docs/ingest.md):

- ``user_id``, ``item_id``, ``event_type``, ``ts`` are required;
- ``event_type`` is one of :data:`feature_store.db.EVENT_TYPES` (case-insensitive);
- ``ts`` is unix seconds or ISO-8601 (an offset converts to UTC; no offset means UTC), between
  1970-01-01 and 2100-01-01;
- ``value`` is numeric (at most 1e12 in magnitude) or empty; ``rate`` events need a value in
  [0, 10];
- ``position`` is an integer from 0 to 2**31 - 1 (the store's INTEGER) or empty;
- ``item_id`` names an item in the store (or in the same batch).

The Python path also rejects what a file cannot contain but JSON can: strings that are not valid
Unicode (a lone UTF-16 surrogate such as ``"\\ud83d"``, sent by a client that cut an emoji in
half), numbers too large for the store, and non-ASCII digits.  Whatever this accepts, the store
can hold: the API answers ``accepted`` only for such events.
"""

from __future__ import annotations

import hashlib
import math
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from feature_store.db import EVENT_TYPES

EVENT_COLUMNS = (
    "event_id",
    "user_id",
    "item_id",
    "event_type",
    "ts",
    "value",
    "text",
    "request_id",
    "position",
)
# Accepted on records (the HTTP API) besides EVENT_COLUMNS: the uuid of the served list
# (GET /v1/users/{id}/recommendations, POST /v1/rank) the event reacts to.
RECORD_ONLY_COLUMNS = ("recommendation_id",)
EVENT_REQUIRED = ("user_id", "item_id", "event_type", "ts")
ITEM_LIST_COLUMNS = ("keywords", "genres", "tags")
ITEM_COLUMNS = (
    "item_id",
    "title",
    "year",
    "description",
    "tagline",
    "keywords",
    "genres",
    "category",
    "director",
    "actors",
    "tags",
    "url",
    "created_at",
)
ITEM_REQUIRED = ("item_id", "title")

POSITION_MAX = 2**31 - 1  # events.position is an INTEGER (int32)
VALUE_MAX = 1e12  # |value|; the content hash takes round(value * 1e6) as a BIGINT
TS_MIN = datetime(1970, 1, 1)
TS_MAX = datetime(2100, 1, 1)
RATING_MIN, RATING_MAX = 0.0, 10.0
UNKNOWN_ITEM = "unknown item id"
_SEP = "\x1f"  # unit separator between hashed fields
# what DuckDB's CAST(... AS DOUBLE) accepts for a finite number
_NUMERIC = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_OFFSET = re.compile(r".*[T ][0-9]{2}:[0-9]{2}.*(Z|[+-][0-9]{2}(:?[0-9]{2})?)")
_EPOCH = datetime(1970, 1, 1)

# ---------------------------------------------------------------------------------------------
# SQL: applied to a staged table of text columns (see feature_store.sources.stage_file)
# ---------------------------------------------------------------------------------------------


def ts_sql(column: str) -> str:
    """SQL turning the text ``column`` into a UTC TIMESTAMP (NULL when it does not parse)."""
    x = f"trim({column})"
    # A number never contains ':' (DuckDB's DOUBLE cast rejects it), so ISO date-times skip the
    # failing number cast: the same result, about half the cost per row.
    return f"""CASE
    WHEN NOT contains({x}, ':') AND abs(TRY_CAST({x} AS DOUBLE)) < 5e9
        THEN make_timestamp(CAST(round(TRY_CAST({x} AS DOUBLE) * 1e6) AS BIGINT))
    WHEN regexp_full_match({x}, '{_OFFSET.pattern}')
        THEN timezone('UTC', TRY_CAST({x} AS TIMESTAMPTZ))
    ELSE TRY_CAST({x} AS TIMESTAMP)
END"""


_TYPES_SQL = ", ".join(f"'{t}'" for t in EVENT_TYPES)

# (condition, reason, column), in order; conditions read the typed columns of events_typed_sql.
_EVENT_RULES_SQL: tuple[tuple[str, str, str], ...] = (
    ("user_id IS NULL", "missing user_id", "user_id"),
    ("item_id IS NULL", "missing item_id", "item_id"),
    ("event_type IS NULL", "missing event_type", "event_type"),
    (f"event_type NOT IN ({_TYPES_SQL})", "unknown event type", "event_type"),
    ("raw_ts IS NULL", "missing ts", "ts"),
    ("ts IS NULL", "bad timestamp", "ts"),
    (f"ts < TIMESTAMP '{TS_MIN}' OR ts >= TIMESTAMP '{TS_MAX}'", "timestamp out of range", "ts"),
    (
        "raw_value IS NOT NULL AND (value IS NULL OR isnan(value) OR isinf(value))",
        "non-numeric value",
        "value",
    ),
    (f"abs(value) > {VALUE_MAX:.0f}", "value out of range", "value"),
    ("event_type = 'rate' AND value IS NULL", "rate without value", "value"),
    (
        f"event_type = 'rate' AND (value < {RATING_MIN} OR value > {RATING_MAX})",
        "rating out of range",
        "value",
    ),
    ("raw_position IS NOT NULL AND (position IS NULL OR position < 0)", "bad position", "position"),
)


def events_typed_sql(source: str, passthrough: str = "") -> str:
    """SELECT over ``source`` (text event columns): typed columns, raw text kept for the rules
    and for quarantine; ``passthrough`` (e.g. ``", line"``) adds source columns as they are."""
    return f"""
    SELECT nullif(trim(event_id), '') AS event_id_in{passthrough},
        nullif(trim(user_id), '') AS user_id,
        nullif(trim(item_id), '') AS item_id,
        event_type AS raw_event_type,
        nullif(lower(trim(event_type)), '') AS event_type,
        nullif(trim(ts), '') AS raw_ts,
        {ts_sql("ts")} AS ts,
        nullif(trim(value), '') AS raw_value,
        TRY_CAST(nullif(trim(value), '') AS DOUBLE) AS value,
        nullif(text, '') AS text,
        nullif(trim(request_id), '') AS request_id,
        nullif(trim(position), '') AS raw_position,
        TRY_CAST(nullif(trim(position), '') AS INTEGER) AS position
    FROM {source}"""


# The row as read, for quarantine (column names of the contract, values as text).
EVENT_RAW_JSON_SQL = (
    "to_json({'event_id': event_id_in, 'user_id': user_id, 'item_id': item_id, "
    "'event_type': raw_event_type, 'ts': raw_ts, 'value': raw_value, 'text': text, "
    "'request_id': request_id, 'position': raw_position})::VARCHAR"
)


def events_reason_sql(known_items: str) -> tuple[str, str]:
    """(reason, column) expressions; ``known_items`` is a table/subquery with ``item_id``.

    The rules are evaluated once, in ``reason``; ``column`` reads the column off the reason
    (every reason belongs to one column), so it must be evaluated where ``reason`` is in scope.
    """
    rules = [
        *_EVENT_RULES_SQL,
        (f"item_id NOT IN (SELECT item_id FROM {known_items})", UNKNOWN_ITEM, "item_id"),
    ]
    reason = "CASE " + " ".join(f"WHEN {c} THEN '{r}'" for c, r, _ in rules) + " END"
    column = "CASE reason " + " ".join(f"WHEN '{r}' THEN '{col}'" for _, r, col in rules) + " END"
    return reason, column


EVENT_ID_SQL = (
    "coalesce(event_id_in, 'h:' || md5(concat_ws(chr(31), user_id, item_id, event_type, "
    "CAST(epoch_us(ts) AS VARCHAR), "
    "coalesce(CAST(TRY_CAST(round(value * 1e6) AS BIGINT) AS VARCHAR), ''), "
    "coalesce(text, ''), coalesce(request_id, ''), coalesce(CAST(position AS VARCHAR), ''))))"
)


def events_checked_sql(source: str, known_items: str, line: str = "NULL::BIGINT") -> str:
    """SELECT over ``source`` (text event columns) giving what a batch stages per row.

    Columns: ``_line`` (the expression ``line``, a source row number or NULL), the typed
    ``events`` columns with ``event_id`` filled in, ``reason`` / ``bad_column`` (NULL when the
    row is valid) and ``raw``, the row as read as JSON, for bad rows only: valid rows, nearly
    all of a real file, carry no copy of their raw text.
    """
    reason, column = events_reason_sql(known_items)
    return f"""
    SELECT _line, event_id, user_id, item_id, event_type, value, text, ts, request_id, position,
        reason, {column} AS bad_column,
        CASE WHEN reason IS NOT NULL THEN {EVENT_RAW_JSON_SQL} END AS raw
    FROM (SELECT *, {EVENT_ID_SQL} AS event_id, {reason} AS reason
          FROM ({events_typed_sql(source, f", {line} AS _line")}))"""


def items_typed_sql(staged: str) -> str:
    """SELECT over a staged items table: typed columns (lists already lists)."""
    return f"""
    SELECT _row,
        nullif(trim(item_id), '') AS item_id,
        nullif(trim(title), '') AS title,
        nullif(trim(year), '') AS raw_year,
        TRY_CAST(TRY_CAST(nullif(trim(year), '') AS DOUBLE) AS INTEGER) AS year,
        nullif(description, '') AS description,
        nullif(tagline, '') AS tagline,
        list_filter(list_transform(keywords, x -> trim(x)), x -> x <> '') AS keywords,
        list_filter(list_transform(genres, x -> trim(x)), x -> x <> '') AS genres,
        nullif(trim(category), '') AS category,
        nullif(director, '') AS director,
        nullif(actors, '') AS actors,
        list_filter(list_transform(tags, x -> trim(x)), x -> x <> '') AS tags,
        nullif(trim(url), '') AS url,
        nullif(trim(created_at), '') AS raw_created_at,
        {ts_sql("created_at")} AS created_at
    FROM {staged}"""


ITEM_RULES_SQL: tuple[tuple[str, str, str], ...] = (
    ("item_id IS NULL", "missing item_id", "item_id"),
    ("title IS NULL", "missing title", "title"),
    ("raw_year IS NOT NULL AND (year IS NULL OR year < 1800 OR year > 2100)", "bad year", "year"),
    ("raw_created_at IS NOT NULL AND created_at IS NULL", "bad timestamp", "created_at"),
)


def items_reason_sql() -> tuple[str, str]:
    """(reason, column) CASE expressions for items."""
    reason = "CASE " + " ".join(f"WHEN {c} THEN '{r}'" for c, r, _ in ITEM_RULES_SQL) + " END"
    column = "CASE " + " ".join(f"WHEN {c} THEN '{col}'" for c, _, col in ITEM_RULES_SQL) + " END"
    return reason, column


# ---------------------------------------------------------------------------------------------
# Python: one record at a time (serving's POST /v1/events, ingest_event_records)
# ---------------------------------------------------------------------------------------------


def validate_event_record(
    record: Mapping[str, Any], known_item: Callable[[str], bool] | None = None
) -> tuple[dict[str, Any] | None, str | None]:
    """Validate one event: ``(normalized row, None)`` or ``(None, reason)``.

    The normalized row has every column of ``events`` except ``source``/``batch_id``; ``ts`` is a
    naive UTC datetime and ``event_id`` is filled with the content hash when absent.  The rules
    are those of the file path (module docstring); ``known_item`` (when given) checks item ids.
    """
    if not isinstance(record, Mapping):
        return None, "record is not an object"
    unknown = sorted(map(printable, set(record) - set(EVENT_COLUMNS) - set(RECORD_ONLY_COLUMNS)))
    if unknown:
        return None, f"unknown field(s) {', '.join(unknown)}"
    for name in (*EVENT_COLUMNS, *RECORD_ONLY_COLUMNS):
        value = record.get(name)
        if isinstance(value, str) and not is_valid_unicode(value):
            return None, f"{name} is not valid Unicode (a lone UTF-16 surrogate?)"
    ids: dict[str, str | None] = {}
    for name in ("event_id", "user_id", "item_id", "request_id"):
        ids[name], bad = _id(record.get(name))
        if bad:
            return None, f"{name} must be a string"
    event_type = record.get("event_type")
    if event_type is not None and not isinstance(event_type, str):
        return None, "unknown event type"
    event_type = event_type.strip().lower() or None if isinstance(event_type, str) else None
    ts, ts_reason = (None, "missing ts") if _blank(record.get("ts")) else _parse_ts(record["ts"])
    value, value_bad = _number(record.get("value"))
    position, position_bad = _position(record.get("position"))
    recommendation_id, recommendation_bad = _uuid(record.get("recommendation_id"))
    text = record.get("text")
    if text is not None and not isinstance(text, str):
        return None, "text must be a string"
    checks = (
        (ids["user_id"] is None, "missing user_id"),
        (ids["item_id"] is None, "missing item_id"),
        (event_type is None, "missing event_type"),
        (event_type not in EVENT_TYPES, "unknown event type"),
        (ts_reason is not None, ts_reason),
        (value_bad, "non-numeric value"),
        (value is not None and abs(value) > VALUE_MAX, "value out of range"),
        (event_type == "rate" and value is None, "rate without value"),
        (
            event_type == "rate" and value is not None and not RATING_MIN <= value <= RATING_MAX,
            "rating out of range",
        ),
        (position_bad, "bad position"),
        (recommendation_bad, "recommendation_id must be the uuid of a served list"),
        (known_item is not None and not known_item(str(ids["item_id"])), UNKNOWN_ITEM),
    )
    for failed, reason in checks:
        if failed:
            return None, reason
    row = {
        "user_id": ids["user_id"],
        "item_id": ids["item_id"],
        "event_type": event_type,
        "ts": ts,
        "value": value,
        "text": text or None,
        "request_id": ids["request_id"],
        "position": position,
    }
    row["event_id"] = ids["event_id"] or content_event_id(row)
    if recommendation_id is not None:  # not part of the content id: the event is the same
        row["recommendation_id"] = recommendation_id
    return row, None


def is_valid_unicode(text: str) -> bool:
    """True when ``text`` encodes to UTF-8 (no lone surrogates), so a store can hold it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def item_ids_to_look_up(records: Sequence[Any]) -> list[str]:
    """The distinct item ids of raw event ``records`` worth a store look-up (valid strings)."""
    ids = {
        str(r["item_id"]).strip()
        for r in records
        if isinstance(r, Mapping)
        and isinstance(r.get("item_id"), str | int)
        and not isinstance(r.get("item_id"), bool)
    }
    return sorted(i for i in ids if i and is_valid_unicode(i))


def printable(value: Any) -> str:
    """``value`` as text that any store or log can hold (bad characters escaped)."""
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def content_event_id(row: Mapping[str, Any]) -> str:
    """The id of an event without one: md5 over its canonical fields (same as the SQL path)."""
    ts: datetime = row["ts"]
    epoch_us = (ts - _EPOCH) // timedelta(microseconds=1)
    value = row.get("value")
    parts = [
        row["user_id"],
        row["item_id"],
        row["event_type"],
        str(epoch_us),
        "" if value is None else str(int(round(value * 1e6))),
        row.get("text") or "",
        row.get("request_id") or "",
        "" if row.get("position") is None else str(row["position"]),
    ]
    return "h:" + hashlib.md5(_SEP.join(parts).encode("utf-8")).hexdigest()


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _uuid(value: Any) -> tuple[str | None, bool]:
    """(canonical lower-case uuid or None, bad)."""
    if _blank(value):
        return None, False
    if not isinstance(value, str):
        return None, True
    try:
        return str(uuid.UUID(value.strip())), False
    except ValueError:
        return None, True


def _id(value: Any) -> tuple[str | None, bool]:
    if _blank(value):
        return None, False
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None, True
    return str(value).strip(), False


def _parse_ts(value: Any) -> tuple[datetime | None, str | None]:
    parsed: datetime | None = None
    if isinstance(value, bool):
        return None, "bad timestamp"
    numeric_text = isinstance(value, str) and _NUMERIC.fullmatch(value.strip())
    if isinstance(value, int | float) or numeric_text:
        try:
            seconds = float(value)
        except OverflowError:  # an integer past the float range
            return None, "timestamp out of range"
        if math.isfinite(seconds) and abs(seconds) < 5e9:
            parsed = _EPOCH + timedelta(microseconds=round(seconds * 1e6))
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            try:
                parsed = parsed.astimezone(UTC).replace(tzinfo=None)
            except OverflowError:  # 9999-12-31T23:00-05:00 is past year 9999 in UTC
                return None, "timestamp out of range"
    if parsed is None:
        return None, "bad timestamp"
    if not TS_MIN <= parsed < TS_MAX:
        return None, "timestamp out of range"
    return parsed, None


def _number(value: Any) -> tuple[float | None, bool]:
    if _blank(value):
        return None, False
    if isinstance(value, bool) or (
        isinstance(value, str) and not _NUMERIC.fullmatch(value.strip())
    ):
        return None, True  # as the SQL cast: ASCII digits only, no "inf", "nan" or "1_0"
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None, True
    return (number, False) if math.isfinite(number) else (None, True)


def _position(value: Any) -> tuple[int | None, bool]:
    if _blank(value):
        return None, False
    number: int | None = None
    if isinstance(value, bool):
        return None, True
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        number = int(value.strip())
    if number is None or not 0 <= number <= POSITION_MAX:
        return None, True
    return number, False
