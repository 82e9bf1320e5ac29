"""Point-in-time behavioral features: the one definition training and serving both call.

``compute_features(con, requests)`` takes rows of (user_id, item_id, as_of) and returns, in the
same order, the features of each row computed only from events strictly before its ``as_of``.
The ranker's training set and the HTTP request path call this same function, so a feature can
never mean one thing offline and another online.  ``FeatureSnapshot`` is the serving fast path:
the same timelines built once over the whole store and evaluated per request from memory.  The
reads live in ``features_sql``, the definitions in ``features_snapshot`` (on the primitives of
``features_timeline``); this module validates inputs, reads, and shapes the result.  See
docs/features.md for the definitions and the serving fast path.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from datetime import datetime, timedelta

import duckdb
import numpy as np
import polars as pl

from feature_store import features_snapshot as fs
from feature_store import features_sql
from feature_store.ids import IdIndex
from recsys.core.config import RankerSettings
from recsys.core.errors import DataValidationError, RecsysError
from recsys.core.rules import SCOPES

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
EVENT_RELATIONS: tuple[str, ...] = tuple(s.events for s in SCOPES.values())
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
    snapshot: FeatureSnapshot | None = None,
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

    ``snapshot`` (the serving fast path): a ``FeatureSnapshot`` built from this store's
    ``events`` with the same window.  The features then come from its in-memory timelines
    without reading the store, with exactly the values the store gives for any ``as_of``, as
    long as the relation has not changed since the snapshot was built.
    """
    req = validate_requests(requests)
    if covisit_window_days <= 0:
        raise RecsysError(f"covisit_window_days must be > 0, got {covisit_window_days}")
    if snapshot is not None:
        if snapshot.relation != events or snapshot.covisit_window_days != covisit_window_days:
            raise RecsysError(
                f"the snapshot was built from {snapshot.relation!r} with a "
                f"{snapshot.covisit_window_days}-day co-visitation window, but {events!r} with "
                f"{covisit_window_days} days was asked for; build a snapshot with those settings"
            )
        return snapshot.evaluate(req)
    relation = resolve_event_relation(con, events)
    if req.height == 0:
        return _empty(req)
    started = time.perf_counter()
    out = FeatureSnapshot.read(con, events, covisit_window_days, requests=req).evaluate(req)
    log.debug(
        "features for %d rows from %s in %.1f ms",
        req.height,
        relation,
        (time.perf_counter() - started) * 1e3,
    )
    return out


def _empty(req: pl.DataFrame) -> pl.DataFrame:
    empty = pl.DataFrame(schema={c: pl.Float64 for c in FEATURE_COLUMNS})
    return pl.concat([req, empty], how="horizontal")


class FeatureSnapshot:
    """The features' timelines held in memory: build once, evaluate many requests.

    ``FeatureSnapshot.build(con, events="events")`` reads and indexes the whole relation;
    ``compute_features(con, req, snapshot=snap)`` or ``snap.compute(req)`` then answers a
    request without touching the store, with the values ``compute_features`` reads from it.
    Immutable after construction, so every thread of a worker can share one; rebuild it when
    the store changes (``newest_event`` and ``n_events`` tell what it holds).
    """

    def __init__(
        self,
        index: fs.FeatureIndex,
        users: _Codes,
        items: _Codes,
        *,
        relation: str,
        covisit_window_days: float,
        newest_event: datetime | None,
        n_events: int,
    ) -> None:
        self._index, self._users, self._items = index, users, items
        self.relation = relation
        self.covisit_window_days = covisit_window_days
        self.newest_event = newest_event
        self.n_events = n_events

    @classmethod
    def build(
        cls,
        con: duckdb.DuckDBPyConnection,
        *,
        events: str = "events",
        covisit_window_days: float = DEFAULT_COVISIT_WINDOW_DAYS,
    ) -> FeatureSnapshot:
        """A snapshot of every event of relation ``events`` (one of ``EVENT_RELATIONS``)."""
        if covisit_window_days <= 0:
            raise RecsysError(f"covisit_window_days must be > 0, got {covisit_window_days}")
        started = time.perf_counter()
        snap = cls.read(con, events, covisit_window_days)
        log.info(
            "feature snapshot of %s: %d events, newest %s, built in %.2f s",
            events,
            snap.n_events,
            snap.newest_event,
            time.perf_counter() - started,
        )
        return snap

    @classmethod
    def read(
        cls,
        con: duckdb.DuckDBPyConnection,
        events: str,
        covisit_window_days: float,
        *,
        requests: pl.DataFrame | None = None,
        full_read: bool | None = None,
    ) -> FeatureSnapshot:
        """Read the events (all, or what validated ``requests`` need) and index them.

        With ``requests`` the index covers only what those rows ask about, so it must answer
        only them (``compute_features`` is the usual way in).  ``full_read``
        forces one scan of the whole relation (True) or reading only the rows the requests can
        depend on (False); by default small request sets on large logs read less.
        """
        relation = resolve_event_relation(con, events)
        name = f"_fs_{uuid.uuid4().hex}"
        users_dict, items_dict = features_sql.users_sql(relation), features_sql.items_sql(relation)
        users = con.execute(f"{users_dict} ORDER BY u").pl()
        items = con.execute(f"{items_dict} ORDER BY i").pl()
        user_codes, item_codes = _Codes(users["user_id"]), _Codes(items["item_id"])
        try:
            if requests is None or _reads_everything(con, relation, requests, full_read):
                sql = features_sql.events_sql(relation, f"({users_dict})", f"({items_dict})")
            else:
                con.register(f"{name}_r", requests.to_arrow())
                sql = features_sql.restricted_events_sql(
                    relation, f"({users_dict})", f"({items_dict})", f"{name}_r"
                )
            # Sorted in from_frame: cheaper than DuckDB's ORDER BY on a string tie-breaker.
            arrays, times = fs.EventArrays.from_frame(con.execute(sql).pl())
            meta = con.execute(features_sql.item_keys_sql()).pl()
        finally:
            con.unregister(name + "_r")
        keys = fs.ItemKeys.build(
            meta.join(items, on="item_id").select("i", "genres", "category"), items.height
        )
        want = None if requests is None else _want(requests, user_codes, item_codes)
        window_us = int(round(covisit_window_days * fs.DAY_US))
        index = fs.FeatureIndex(arrays, times, keys, users.height, items.height, window_us, want)
        n_events = int(arrays.ts.size)
        newest = int(arrays.ts[-1]) if n_events else None
        del arrays  # the index holds what it needs; free the rest before returning
        return cls(
            index,
            user_codes,
            item_codes,
            relation=events,
            covisit_window_days=covisit_window_days,
            newest_event=None if newest is None else _from_us(newest),
            n_events=n_events,
        )

    def compute(self, requests: pl.DataFrame) -> pl.DataFrame:
        """``compute_features`` of ``requests`` against this snapshot."""
        return self.evaluate(validate_requests(requests))

    def evaluate(self, req: pl.DataFrame) -> pl.DataFrame:
        """Features of requests already checked by ``validate_requests``."""
        if req.height == 0:
            return _empty(req)
        u, i = self._users.of(req["user_id"]), self._items.of(req["item_id"])
        values = self._index.features(u, i, req["as_of"].dt.epoch("us").to_numpy())
        out = pl.DataFrame(
            [pl.Series(c, values[c].astype(np.float64), nan_to_null=True) for c in FEATURE_COLUMNS]
        )
        return pl.concat([req, out], how="horizontal")


class _Codes:
    """An id -> integer code map (-1 for an unknown id)."""

    def __init__(self, ids: pl.Series) -> None:
        self.ids = ids
        self.lookup = IdIndex(ids.to_list())

    def __len__(self) -> int:
        return self.ids.len()

    def of(self, values: pl.Series) -> np.ndarray:
        if values.len() <= 2_000:  # a search beats a polars call for a request's few rows
            return self.lookup.positions(values.to_list())
        codes = pl.Series(np.arange(self.ids.len(), dtype=np.int64))
        return values.replace_strict(self.ids, codes, default=-1).to_numpy()


def _from_us(us: int) -> datetime:
    return datetime(1970, 1, 1) + timedelta(microseconds=us)


# The restricted read pays off only for a few requests on a large log: on MovieLens-small one
# scan of all 100k events is cheaper, and many (user, as_of) moments make its recent-item step
# (each moment joined with that user's history) costlier than a scan.
_RESTRICTED_MIN_EVENTS = 1_000_000
_RESTRICTED_MAX_MOMENTS = 1_000
_RESTRICTED_MAX_ITEMS = 10_000


def _reads_everything(
    con: duckdb.DuckDBPyConnection, relation: str, req: pl.DataFrame, full_read: bool | None
) -> bool:
    if full_read is not None:
        return full_read
    moments = req.select("user_id", "as_of").n_unique()
    if moments > _RESTRICTED_MAX_MOMENTS or req["item_id"].n_unique() > _RESTRICTED_MAX_ITEMS:
        return True
    row = con.execute(f"SELECT count(*) FROM {relation}").fetchone()
    return row is None or int(row[0]) < _RESTRICTED_MIN_EVENTS


def _want(req: pl.DataFrame, users: _Codes, items: _Codes) -> fs.Want:
    u, i = users.of(req["user_id"]), items.of(req["item_id"])
    want_items = np.zeros(max(len(items), 1), dtype=bool)
    want_items[i[i >= 0]] = True
    want_users = np.zeros(max(len(users), 1), dtype=bool)
    want_users[u[u >= 0]] = True
    known = (u >= 0) & (i >= 0)
    pairs = np.unique(u[known] * len(items) + i[known])
    return fs.Want(want_items, want_users, pairs, u, req["as_of"].dt.epoch("us").to_numpy())


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
