"""Point-in-time behavioral features: the one definition training and serving both call.

``compute_features(con, requests)`` takes rows of (user_id, item_id, as_of) and returns, in the
same order, the features of each row computed only from events strictly before its ``as_of``.
The ranker's training set and the HTTP request path call this same function, so a feature can
never mean one thing offline and another online.  The SQL lives in ``features_sql``; this module
validates inputs, runs the query and shapes the result.  See docs/features.md for definitions.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

import duckdb
import polars as pl

from feature_store import features_frames as ff
from feature_store import features_sql
from recsys.config import RankerSettings
from recsys.errors import DataValidationError, RecsysError

log = logging.getLogger(__name__)

FEATURE_COLUMNS: tuple[str, ...] = (
    "item_events_7d",
    "item_events_30d",
    "item_events_365d",
    "item_events_all",
    "item_trend_7d_30d",
    "item_trend_30d_365d",
    "item_positives_all",
    "item_positive_rate",
    "item_rating_count",
    "item_mean_rating",
    "item_ctr",
    "item_age_days",
    "item_days_since_last",
    "user_events_30d",
    "user_events_all",
    "user_positives_all",
    "user_positive_rate",
    "user_rating_count",
    "user_mean_rating",
    "user_days_since_last",
    "user_item_events",
    "user_genre_affinity",
    "user_genre_affinity_max",
    "user_category_affinity",
    "covisit_strength",
    "covisit_max",
)
REQUEST_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "as_of")
# The event relations features may read: the live table and the protocol v1 views.
EVENT_RELATIONS: tuple[str, ...] = ("events", "events_train_v1", "events_fit_v1")
DEFAULT_COVISIT_WINDOW_DAYS: float = RankerSettings().covisit_window_days
_EVENT_COLUMNS = {"event_id", "user_id", "item_id", "event_type", "value", "ts"}
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class UnknownRelationError(RecsysError):
    """The event relation asked for is not allowed or does not exist in the store."""

    code = "unknown_relation"
    http_status = 400


def compute_features(
    con: duckdb.DuckDBPyConnection,
    requests: pl.DataFrame,
    *,
    events: str = "events",
    covisit_window_days: float = DEFAULT_COVISIT_WINDOW_DAYS,
) -> pl.DataFrame:
    """Features of each (user_id, item_id, as_of) row from events with ``ts < as_of``.

    ``requests`` needs ``user_id`` and ``item_id`` (Utf8) and ``as_of`` (Datetime, UTC; a
    time-zone-aware column is converted to naive UTC).  Returns the same rows in the same order
    (duplicates kept): ``user_id, item_id, as_of`` followed by ``FEATURE_COLUMNS`` as Float64.
    Counts of an unknown user or item are 0; rates, means, affinities and recencies that have
    nothing to average over are null.  ``events`` names the relation to read: one of
    ``EVENT_RELATIONS`` (the protocol views must have been materialized).  Pass
    ``settings.ranker.covisit_window_days`` as ``covisit_window_days`` when it is configured.
    Use a ``con.cursor()`` per thread: a DuckDB connection is not thread-safe.
    """
    req = validate_requests(requests)
    relation = resolve_event_relation(con, events)
    if covisit_window_days <= 0:
        raise RecsysError(f"covisit_window_days must be > 0, got {covisit_window_days}")
    if req.height == 0:
        empty = pl.DataFrame(schema={c: pl.Float64 for c in FEATURE_COLUMNS})
        return pl.concat([req, empty], how="horizontal")
    started = time.perf_counter()
    out = _compute(con, req.with_row_index("rid"), relation, covisit_window_days)
    log.debug(
        "features for %d rows from %s in %.1f ms",
        req.height,
        relation,
        (time.perf_counter() - started) * 1e3,
    )
    return pl.concat([req, out], how="horizontal")


def _compute(
    con: duckdb.DuckDBPyConnection, req: pl.DataFrame, relation: str, window_days: float
) -> pl.DataFrame:
    """Read the requested entities' events (DuckDB), then build every feature (polars)."""
    name = f"_fs_req_{uuid.uuid4().hex}"
    con.register(name, req.select("user_id", "item_id").to_arrow())
    try:
        item_events = con.execute(features_sql.item_events_sql(relation, name)).pl()
        seq = ff.user_sequence(con.execute(features_sql.user_events_sql(relation, name)).pl())
        items = pl.concat([seq.select("item_id"), req.select("item_id")]).unique()
        con.register(f"{name}_items", items.to_arrow())
        keys = ff.item_keys(con.execute(features_sql.item_keys_sql(f"{name}_items")).pl())
        users = ff.user_features(req, seq)
        recent = ff.recent_items(users, seq)
        sequences = seq.select("user_id", "item_id", "event_id", "ts").clear()
        if recent.height:  # users without history before as_of need no co-visitation read
            recent_items = recent.select(item_id="recent_item").unique()
            con.register(f"{name}_recent", recent_items.to_arrow())
            sequences = con.execute(features_sql.sequences_sql(relation, f"{name}_recent")).pl()
    finally:
        for suffix in ("", "_items", "_recent"):
            con.unregister(name + suffix)
    parts = [
        ff.item_features(req, item_events),
        users.drop("user_id", "item_id", "as_of", "c_n", "c_pos"),
        ff.user_item_features(req, seq),
        ff.affinity_features(users, seq, keys),
        ff.covisit_features(recent, sequences, window_days),
    ]
    out = req.select("rid")
    for part in parts:
        out = out.join(part, on="rid", how="left")
    out = out.sort("rid").with_columns(pl.col("covisit_strength", "covisit_max").fill_null(0))
    return out.select(pl.col(FEATURE_COLUMNS).cast(pl.Float64))


def validate_requests(requests: pl.DataFrame) -> pl.DataFrame:
    """The request frame reduced to ``user_id, item_id, as_of`` with checked dtypes.

    Raises ``DataValidationError`` naming the column to fix.
    """
    if not isinstance(requests, pl.DataFrame):
        raise DataValidationError(
            f"requests must be a polars DataFrame, got {type(requests).__name__}"
        )
    missing = [c for c in REQUEST_COLUMNS if c not in requests.columns]
    if missing:
        raise DataValidationError(
            f"requests lack column(s) {', '.join(missing)}; need {', '.join(REQUEST_COLUMNS)}"
        )
    for col in ("user_id", "item_id"):
        if requests.schema[col] != pl.Utf8:
            raise DataValidationError(
                f"must be Utf8 (string ids), got {requests.schema[col]}; cast ids to str",
                column=col,
            )
    as_of = requests.schema["as_of"]
    if not isinstance(as_of, pl.Datetime):
        raise DataValidationError(
            f"must be a Datetime (UTC), got {as_of}; parse timestamps first", column="as_of"
        )
    req = requests.select(REQUEST_COLUMNS)
    if as_of.time_zone is not None:
        utc = pl.col("as_of").dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        req = req.with_columns(utc)
    req = req.with_columns(pl.col("as_of").dt.cast_time_unit("us"))
    nulls = [c for c in REQUEST_COLUMNS if req[c].null_count()]
    if nulls:
        raise DataValidationError(
            f"requests have nulls in {', '.join(nulls)}; every row needs a user, an item and a time"
        )
    return req


def resolve_event_relation(con: duckdb.DuckDBPyConnection, events: str) -> str:
    """The quoted name of an allowed, existing event relation with the needed columns."""
    if events not in EVENT_RELATIONS or not _IDENTIFIER.match(events):
        raise UnknownRelationError(
            f"events relation {events!r} is not allowed; use one of {', '.join(EVENT_RELATIONS)}"
        )
    rows = con.execute(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_name = ? AND table_schema = current_schema()",
        [events],
    ).fetchall()
    if not rows:
        hint = (
            "; materialize the protocol split first "
            "(feature_store.splits.materialize_protocol_split)"
            if events != "events"
            else ""
        )
        raise UnknownRelationError(f"events relation {events!r} does not exist in the store{hint}")
    missing = _EVENT_COLUMNS - {str(r[0]) for r in rows}
    if missing:
        raise UnknownRelationError(
            f"events relation {events!r} lacks column(s) {', '.join(sorted(missing))}"
        )
    return f'"{events}"'
