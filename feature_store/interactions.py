"""User-item interaction matrices read from one events relation of the store.

Everything that ranks from behaviour (baselines, candidate generators) reads an
``Interactions``: the item catalog, who saw what, who liked what, in index space, built from a
single relation (``events`` live, ``events_train_v1`` / ``events_fit_v1`` under protocol v1), so
that a model fitted on it cannot see anything the relation hides.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from feature_store.ids import IdIndex
from feature_store.rules_sql import positive_sql
from recsys.core.errors import RecsysError

log = logging.getLogger(__name__)

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A positive interaction (recsys.core.rules) over an unaliased events relation.
POSITIVE_SQL = positive_sql()


def relation_name(name: str) -> str:
    """Validate a table/view name before it is interpolated into SQL."""
    if not _IDENT.match(name):
        raise RecsysError(f"bad events relation name {name!r}: expected a plain table or view name")
    return name


@dataclass(frozen=True)
class PositiveEvents:
    """Every positive event of the relation as catalog/user indices, in no particular order."""

    user: np.ndarray  # int64 user index
    item: np.ndarray  # int64 catalog index
    ts: np.ndarray  # datetime64[us]

    @classmethod
    def empty(cls) -> PositiveEvents:
        z = np.empty(0, dtype=np.int64)
        return cls(z, z.copy(), np.empty(0, dtype="datetime64[us]"))


@dataclass
class Interactions:
    """Catalog, seen and positive matrices (users x items) of one events relation."""

    con: duckdb.DuckDBPyConnection
    relation: str
    item_ids: np.ndarray  # catalog index -> item id, ordered by (integer id, id) for stable ties
    user_ids: np.ndarray
    seen: sp.csr_matrix  # any non-impression event
    positives: sp.csr_matrix  # positive count per (user, item)
    item_genres: list[tuple[str, ...]]
    positive_events: PositiveEvents = field(default_factory=PositiveEvents.empty)
    item_index: IdIndex = field(init=False)  # item id -> catalog index
    user_index: IdIndex = field(init=False)
    # positive events ordered by (user, time, catalog index) and each user's first row in it
    _timeline: tuple[np.ndarray, np.ndarray] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    # rows of ``positive_events`` ordered by (user, time, item id) and each user's first row
    _latest: tuple[np.ndarray, np.ndarray] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        self.item_index = IdIndex(self.item_ids)
        self.user_index = IdIndex(self.user_ids)

    def __getstate__(self) -> dict[str, Any]:
        """Everything but the connection (``feature_store.features_cache`` saves the arrays
        and attaches the loading process's connection)."""
        state = dict(self.__dict__)
        state["con"] = None
        return state

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def seen_items(self, user_id: str) -> np.ndarray:
        """Catalog indices the user interacted with (empty for unknown users)."""
        u = self.user_index.get(user_id)
        if u is None:
            return np.empty(0, dtype=np.int64)
        return self.seen.indices[self.seen.indptr[u] : self.seen.indptr[u + 1]].astype(np.int64)

    def positive_items(self, user_id: str) -> np.ndarray:
        u = self.user_index.get(user_id)
        if u is None:
            return np.empty(0, dtype=np.int64)
        return self.positives.indices[
            self.positives.indptr[u] : self.positives.indptr[u + 1]
        ].astype(np.int64)

    def recent_positive_items(self, user_id: str, n: int) -> np.ndarray:
        """The user's latest ``n`` distinct positive items (catalog indices), oldest first.

        Ties in time are broken by catalog index; an item liked twice counts at its latest
        time.  ``positive_items`` is in catalog order, not time order.
        """
        u = self.user_index.get(user_id)
        if u is None or n <= 0:
            return np.empty(0, dtype=np.int64)
        items, starts = self.timeline()
        span = items[starts[u] : starts[u + 1]][::-1]  # newest first
        _, first = np.unique(span, return_index=True)
        latest = span[np.sort(first)][:n]
        return latest[::-1].astype(np.int64)

    def timeline(self) -> tuple[np.ndarray, np.ndarray]:
        """Positive events' items by (user, time, catalog index) and each user's first row."""
        if self._timeline is None:
            ev = self.positive_events
            order = np.lexsort((ev.item, ev.ts, ev.user))
            starts = np.searchsorted(ev.user[order], np.arange(len(self.user_ids) + 1))
            self._timeline = (ev.item[order], starts)
        return self._timeline

    def latest_positives(self, user_id: str, n: int) -> tuple[list[str], datetime] | None:
        """``recent_positives(con, relation, n, user_id)`` for one user, from memory: the items
        of the user's latest ``n`` positive events, oldest first (an item liked twice counts
        twice; ties in time by item id, as the SQL), and the time of the newest; ``None`` when
        the user has none.  The request path of a large store asks this per user instead of
        scanning the events table (``recsys.pipeline.recommender``)."""
        u = self.user_index.get(user_id)
        if u is None or n <= 0:
            return None
        order, starts = self.latest_order()
        rows = order[starts[u] : starts[u + 1]]
        if not len(rows):
            return None
        ev = self.positive_events
        items = self.item_ids[ev.item[rows[::-1][:n][::-1]]]
        return [str(i) for i in items], ev.ts[rows[-1]].astype("datetime64[us]").item()

    def newest_positive_items(self, u: int, n: int) -> np.ndarray:
        """Item indices of user index ``u``'s latest ``n`` positive events, newest first and
        ties in time by item id (an item liked twice counts twice): the history co-visitation
        sums over, read from the shared ``latest_order`` instead of a per-process table."""
        order, starts = self.latest_order()
        rows = order[starts[u] : starts[u + 1]]
        if n <= 0 or not len(rows):
            return np.zeros(0, dtype=np.int64)
        ev = self.positive_events
        ts = ev.ts[rows].astype(np.int64)
        # the rows are by (time, item id): keep the newest n, and every row tied with the
        # oldest of them, then order them newest first with the ties still by id
        lo = int(np.searchsorted(ts, ts[max(len(rows) - n, 0)], side="left"))
        keep = np.lexsort((np.arange(len(rows) - lo), -ts[lo:]))[:n]
        return np.asarray(ev.item[rows[lo:][keep]], dtype=np.int64)

    def latest_order(self) -> tuple[np.ndarray, np.ndarray]:
        """Rows of ``positive_events`` by (user, time, item id) and each user's first row
        (built once; ``with_timelines`` builds it before the snapshot is shared)."""
        if self._latest is None:
            ev = self.positive_events
            by_id = np.empty(len(self.item_ids), dtype=np.int64)
            by_id[np.argsort(self.item_ids.astype(str), kind="stable")] = np.arange(
                len(self.item_ids)
            )
            order = np.lexsort((by_id[ev.item], ev.ts, ev.user))
            starts = np.searchsorted(ev.user[order], np.arange(len(self.user_ids) + 1))
            self._latest = (order, starts)
        return self._latest

    def with_timelines(self) -> Interactions:
        """This object with its per-user orders built (what the shared snapshot saves, so that
        server workers map them instead of each sorting every positive event)."""
        self.timeline()
        self.latest_order()
        return self

    @classmethod
    def from_store(cls, con: duckdb.DuckDBPyConnection, relation: str = "events") -> Interactions:
        """Read the catalog (``items`` plus any item with events) and the relation's events."""
        rel = relation_name(relation)
        catalog = con.execute(
            f"""
            WITH ids AS (SELECT item_id FROM items UNION SELECT DISTINCT item_id FROM {rel})
            SELECT ids.item_id, coalesce(i.genres, []) AS genres
            FROM ids LEFT JOIN (
                -- items without genres (news, products) are grouped by their category
                SELECT item_id, any_value(CASE WHEN len(genres) > 0 THEN genres
                                               WHEN category IS NOT NULL THEN [category]
                                          END) AS genres
                FROM items GROUP BY item_id) i USING (item_id)
            ORDER BY TRY_CAST(ids.item_id AS BIGINT) NULLS LAST, ids.item_id
            """
        ).fetchall()
        item_ids = np.array([row[0] for row in catalog], dtype=object)
        genres = [tuple(g for g in (row[1] or ()) if g) for row in catalog]
        user_ids = np.array(
            [
                r[0]
                for r in con.execute(
                    f"SELECT DISTINCT user_id FROM {rel} ORDER BY user_id"
                ).fetchall()
            ],
            dtype=object,
        )
        con.register("_ix_items", _id_table(item_ids, "item_id"))
        con.register("_ix_users", _id_table(user_ids, "user_id"))
        try:
            pairs = con.execute(
                f"""
                SELECT u.idx AS u, i.idx AS i,
                       count(*) FILTER (WHERE {POSITIVE_SQL})::FLOAT AS pos
                FROM {rel} e JOIN _ix_users u USING (user_id) JOIN _ix_items i USING (item_id)
                WHERE e.event_type <> 'impression'
                GROUP BY ALL
                """
            ).fetchnumpy()
        finally:
            con.unregister("_ix_items")
            con.unregister("_ix_users")
        shape = (len(user_ids), len(item_ids))
        rows, cols = pairs["u"].astype(np.int64), pairs["i"].astype(np.int64)
        seen = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=shape)
        pos = np.asarray(pairs["pos"], dtype=np.float32)
        keep = pos > 0
        positives = sp.csr_matrix((pos[keep], (rows[keep], cols[keep])), shape=shape)
        seen.sort_indices()
        positives.sort_indices()
        events = _positive_events(con, rel, user_ids, item_ids)
        log.info(
            "read %s: %d users, %d catalog items, %d seen pairs, %d positive pairs",
            rel,
            shape[0],
            shape[1],
            seen.nnz,
            positives.nnz,
        )
        return cls(con, rel, item_ids, user_ids, seen, positives, genres, events)


def click_histories(
    con: duckdb.DuckDBPyConnection, requests: Any, n: int
) -> list[tuple[str, list[str]]]:
    """(request_id, the user's latest ``n`` clicked items, newest first) for each request of
    ``requests`` (an Arrow-convertible frame of request_id, user_id, as_of), clicks strictly
    before its ``as_of``; requests without an earlier click are absent."""
    con.register("_replay_reqs", requests.to_arrow())
    try:
        rows = con.execute(
            f"""
            SELECT r.request_id,
                   list(e.item_id ORDER BY e.ts DESC)[1:{int(n)}] AS items
            FROM _replay_reqs r JOIN events e ON e.user_id = r.user_id AND e.ts < r.as_of
            WHERE e.event_type = 'click'
            GROUP BY r.request_id
            """
        ).fetchall()
    finally:
        con.unregister("_replay_reqs")
    return [(req, list(items)) for req, items in rows]


def _positive_events(
    con: duckdb.DuckDBPyConnection, rel: str, user_ids: np.ndarray, item_ids: np.ndarray
) -> PositiveEvents:
    con.register("_ix_items", _id_table(item_ids, "item_id"))
    con.register("_ix_users", _id_table(user_ids, "user_id"))
    try:
        ev = con.execute(
            f"""
            SELECT u.idx AS u, i.idx AS i, e.ts
            FROM {rel} e JOIN _ix_users u USING (user_id) JOIN _ix_items i USING (item_id)
            WHERE {POSITIVE_SQL}
            """
        ).fetchnumpy()
    finally:
        con.unregister("_ix_items")
        con.unregister("_ix_users")
    return PositiveEvents(
        np.asarray(ev["u"], dtype=np.int64),
        np.asarray(ev["i"], dtype=np.int64),
        np.asarray(ev["ts"], dtype="datetime64[us]"),
    )


def recent_positives(
    con: duckdb.DuckDBPyConnection, relation: str, n: int, user_id: str | None = None
) -> dict[str, tuple[list[str], datetime]]:
    """Per user (or just ``user_id``): their latest ``n`` positive items, oldest first, and the
    time of the newest.  Ties in time are broken by item id so every read picks the same items.
    """
    rel = relation_name(relation)
    where = "AND user_id = ?" if user_id is not None else ""
    rows = con.execute(
        f"SELECT user_id, list(item_id ORDER BY ts DESC, item_id DESC)[1:{int(n)}], max(ts) "
        f"FROM {rel} WHERE {POSITIVE_SQL} {where} GROUP BY user_id",
        [user_id] if user_id is not None else [],
    ).fetchall()
    return {str(u): ([str(i) for i in reversed(items)], ts) for u, items, ts in rows}


def item_titles(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """Item id -> title (any one title when an id was ingested twice)."""
    rows = con.execute("SELECT item_id, any_value(title) FROM items GROUP BY item_id").fetchall()
    return {str(i): str(t) for i, t in rows}


def newest_event(con: duckdb.DuckDBPyConnection, relation: str) -> datetime | None:
    """The latest event time of ``relation`` (``None`` when it is empty)."""
    row = con.execute(f"SELECT max(ts) FROM {relation_name(relation)}").fetchone()
    return row[0] if row and row[0] else None


def _id_table(ids: np.ndarray, column: str) -> Any:

    return pa.table(
        {column: pa.array(list(ids), pa.string()), "idx": pa.array(np.arange(len(ids)))}
    )
