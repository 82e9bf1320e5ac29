"""The point-in-time behavioral features, defined once over in-memory timelines.

A ``FeatureSnapshot`` holds the event log (or the part of it a request set needs) as numpy
timelines — per item, per user, per (user, item), per (user, genre/category) and per
co-visitation pair — and answers any (user, item, as_of) row from events with ``ts < as_of``:
a count over ``[as_of - w, as_of)`` is the number of a group's rows before ``as_of`` minus
those before ``as_of - w``, found by binary search.  ``compute_features`` builds one over the
rows a request set needs and evaluates it; serving builds one over the whole store once
(``FeatureSnapshot.build``) and evaluates each request against it.  Both run the code below,
and a group's totals depend only on its own rows, so both give the same values.

Co-visitation: each user's interactions ordered by (ts, event_id); an event and the one before
it form a pair (a, b) when their items differ and they are at most the co-visitation window
apart.  Pairs count in both directions and carry the later event's time, so a pair exists before
``as_of`` only when both of its events do.  A request's strength is the sum (and the max), over
the user's last ``RECENT_ITEMS`` interactions before ``as_of``, of the pairs (recent item,
candidate) seen before ``as_of``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import polars as pl

from feature_store.features_sql import FLAG_BITS, RECENT_ITEMS
from feature_store.features_timeline import (
    RunningSum,
    Timeline,
    between,
    explode,
    prefix,
    search,
    ticks,
)

ITEM_WINDOWS_DAYS: tuple[int, ...] = (7, 30, 365)
USER_WINDOW_DAYS = 30
DAY_US = 86_400_000_000
_ITEM_COLUMNS = ("i", "ts", "tick", "is_pos", "is_click", "has_rating", "rating")
_USER_COLUMNS = ("u", "i", "ts", "tick", "is_pos", "has_rating", "rating")
_GENRE, _CATEGORY = 1, 2


@dataclass(frozen=True)
class EventArrays:
    """Events as codes and flags, rows in global (ts, event_id) order."""

    u: np.ndarray
    i: np.ndarray
    ts: np.ndarray
    is_pos: np.ndarray
    is_impr: np.ndarray
    is_click: np.ndarray
    has_rating: np.ndarray
    rating: np.ndarray
    tick: np.ndarray
    in_items: np.ndarray
    in_users: np.ndarray
    in_seq: np.ndarray

    @classmethod
    def from_frame(cls, frame: pl.DataFrame) -> tuple[EventArrays, np.ndarray]:
        """(events in (ts, event_id) order, the log's distinct times) from a read frame.

        ``in_items``/``in_users``/``in_seq`` are all true when the frame lacks them.
        """
        order = frame.select(pl.arg_sort_by("ts", "event_id")).to_series().to_numpy()
        frame = frame.drop("event_id")  # the strings are only needed for the order
        cols = {}
        for f in fields(cls):
            if f.name in frame.columns:
                cols[f.name] = frame[f.name].to_numpy()[order]
        flags = frame["flags"].to_numpy()[order]
        for bit, name in enumerate(FLAG_BITS):
            cols[name] = (flags & (1 << bit)) != 0
        cols["u"], cols["i"] = cols["u"].astype(np.int64), cols["i"].astype(np.int64)
        everything = np.ones(frame.height, dtype=bool)
        for name in ("in_items", "in_users", "in_seq"):
            cols.setdefault(name, everything)
        times, tick = ticks(cols["ts"])
        cols["tick"] = tick.astype(np.int32) if times.size < 2**31 else tick
        return cls(**cols), times

    def take(self, rows: np.ndarray, names: tuple[str, ...] = ()) -> EventArrays:
        """The given rows; only the columns ``names`` (all when empty), the rest left empty."""
        empty = np.zeros(0)
        return EventArrays(
            **{
                f.name: getattr(self, f.name)[rows] if not names or f.name in names else empty
                for f in fields(self)
            }
        )


@dataclass(frozen=True)
class ItemKeys:
    """Each item code's distinct genre and category keys (CSR: ``start[i]:start[i + 1]``)."""

    start: np.ndarray
    key: np.ndarray
    kind: np.ndarray
    n_keys: int

    @classmethod
    def build(cls, items: pl.DataFrame, n_items: int) -> ItemKeys:
        """From ``(i, genres, category)`` rows (several rows of one item are merged)."""
        genres = items.select("i", kind=pl.lit(_GENRE, pl.Int8), key="genres").explode("key")
        category = items.select("i", kind=pl.lit(_CATEGORY, pl.Int8), key="category")
        keys = pl.concat([genres, category]).drop_nulls("key").unique(["i", "kind", "key"])
        both = pl.format("{}\x1f{}", "kind", "key")
        keys = keys.with_columns(code=both.rank("dense").cast(pl.Int64) - 1).sort("i", "code")
        counts = np.bincount(keys["i"].to_numpy(), minlength=n_items)[:n_items]
        start = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        n_keys = int(keys["code"].to_numpy().max()) + 1 if keys.height else 0
        return cls(start, keys["code"].to_numpy(), keys["kind"].to_numpy(), n_keys)

    def of(self, items: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, key, kind) for every key of ``items[row]`` (unknown items, code -1, have none)."""
        known = items >= 0
        safe = np.where(known, items, 0)
        counts = np.where(known, self.start[safe + 1] - self.start[safe], 0)
        row, k = explode(counts)
        flat = self.start[safe[row]] + k
        return row, self.key[flat], self.kind[flat]


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN (null) where den is 0."""
    out = np.full(num.shape, np.nan)
    ok = den > 0
    out[ok] = num[ok] / den[ok]
    return out


class _Side:
    """A timeline of one entity kind with the running totals the features need."""

    def __init__(self, keys: np.ndarray, ev: EventArrays, width: int, codes: int) -> None:
        self.tl = Timeline(keys, ev.ts, ev.tick, width, codes=codes)
        o = self.tl.order
        self.p_pos = prefix(ev.is_pos[o])
        self.p_rate = prefix(ev.has_rating[o])
        self.p_click = prefix(ev.is_click[o] if ev.is_click.size else np.zeros(o.size, dtype=bool))
        self.s_rate = RunningSum(ev.rating[o], self.tl.starts)
        self.items = ev.i[o]
        self.ticks = ev.tick[o]
        self._times: np.ndarray | None = None  # set when the row times are released

    def release_build_state(self, *, keep_items: bool, times: np.ndarray) -> None:
        """Keep what lookups read (``totals`` the row times, ``recent`` the user side's items);
        drop the rest.  A row's time is ``times[tick]``, and the timeline's packed key holds
        the tick: reading it there instead of keeping the row times saves 8 bytes a row (136 MB
        over both sides at 1e7 events, pages every serving worker would map)."""
        self.tl.release_build_state(keep_ts=False)
        self._times = times if self.tl.ts.size < len(self.tl) else None
        self.ticks = self.ticks[:0]
        if not keep_items:
            self.items = self.items[:0]

    def row_ts(self, rows: np.ndarray) -> np.ndarray:
        """The event time (epoch microseconds) of each of ``rows``."""
        if self._times is None:
            return self.tl.ts[rows]
        return self._times[self.tl.tick_of(rows)]

    def at(self, keys: np.ndarray, t: np.ndarray, tick: np.ndarray) -> tuple[np.ndarray, ...]:
        """(group, lo, hi, pos): the group and its range, and the first row at or after ``t``."""
        group, lo, hi = self.tl.locate(keys)
        return group, lo, hi, self.tl.before(group, lo, hi, t, tick)

    def totals(self, lo: np.ndarray, pos: np.ndarray) -> dict[str, np.ndarray]:
        """Counts and sums over each probe's rows [lo, pos), and its first and last times."""
        n = pos - lo
        if len(self.tl) == 0:
            zero = np.zeros(n.size, dtype=np.int64)
            return dict.fromkeys(("n", "pos", "rate", "click", "last_ts", "first_ts"), zero) | {
                "s_rate": zero.astype(np.float64)
            }
        last = np.maximum(pos - 1, 0)
        return {
            "n": n,
            "pos": between(self.p_pos, lo, pos),
            "rate": between(self.p_rate, lo, pos),
            "click": between(self.p_click, lo, pos),
            "s_rate": self.s_rate.between(lo, pos),
            "last_ts": self.row_ts(last),
            "first_ts": self.row_ts(np.minimum(lo, last)),
        }


def _days(later: np.ndarray, earlier: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return np.where(valid, (later - earlier) / DAY_US, np.nan)


@dataclass(frozen=True)
class Want:
    """What a request set asks about, so an index skips every other entity's work.

    ``items``/``users``: boolean tables over codes; ``pairs``: sorted unique
    ``u * n_items + i`` of the requested (user, item) rows; ``u``, ``t``: the request rows'
    user codes and times (their recent items bound the co-visitation pairs kept).
    """

    items: np.ndarray
    users: np.ndarray
    pairs: np.ndarray
    u: np.ndarray
    t: np.ndarray


class FeatureIndex:
    """Timelines over an event set; ``features(u, i, t)`` evaluates every feature.

    Each timeline must be complete for the entities it is asked about: the item side for the
    requested items, the user side for the requested users, the pair side for the pairs whose
    first item is one of those users' recent items.
    """

    def __init__(
        self,
        ev: EventArrays,
        times: np.ndarray,
        keys: ItemKeys,
        n_users: int,
        n_items: int,
        window_us: int,
        want: Want | None = None,
    ) -> None:
        self.keys, self.n_items, self.window_us = keys, n_items, window_us
        self.times, w = times, times.size + 1
        inter = ~ev.is_impr
        item_rows = ev.in_items if want is None else ev.in_items & want.items[ev.i]
        rows = np.flatnonzero(item_rows & inter)
        self.item = _Side(ev.i[rows], ev.take(rows, _ITEM_COLUMNS), w, n_items)
        impr = np.flatnonzero(item_rows & ev.is_impr)
        self.impr = Timeline(ev.i[impr], ev.ts[impr], ev.tick[impr], w, codes=n_items)
        user_rows = ev.in_users & inter
        users = ev.take(np.flatnonzero(user_rows), _USER_COLUMNS)
        self.user = _Side(users.u, users, w, n_users)
        ui = users.u * n_items + users.i
        keep = np.flatnonzero(_isin_sorted(ui, want.pairs)) if want is not None else slice(None)
        self.user_item = Timeline(ui[keep], users.ts[keep], users.tick[keep], w)
        self.affinity = self._affinity(users, want)
        seq_rows = ev.in_seq & inter
        if np.array_equal(seq_rows, user_rows):
            seq = self.user
        else:
            seq_ev = ev.take(np.flatnonzero(seq_rows), _USER_COLUMNS)
            seq = _Side(seq_ev.u, seq_ev, w, n_users)
        recent = None
        if want is not None:
            recent = np.zeros(n_items, dtype=bool)
            recent[self.recent(want.u, want.t, self.tick(want.t))[1]] = True
        self.pairs = self._pairs(seq, want, recent)
        self.item.release_build_state(keep_items=False, times=times)
        self.user.release_build_state(keep_items=True, times=times)
        for tl in (self.impr, self.user_item, self.affinity, self.pairs):
            tl.release_build_state()  # lookups only count rows: no times needed

    def tick(self, t: np.ndarray) -> np.ndarray:
        """How many distinct event times lie strictly before each ``t``."""
        return search(self.times, t)

    def _affinity(self, users: EventArrays, want: Want | None) -> Timeline:
        pos = np.flatnonzero(users.is_pos)
        if want is not None:
            pos = pos[want.users[users.u[pos]]]
        row, key, _ = self.keys.of(users.i[pos])
        at = pos[row]
        keys = users.u[at] * max(self.keys.n_keys, 1) + key
        return Timeline(keys, users.ts[at], users.tick[at], self.times.size + 1)

    def _pairs(self, seq: _Side, want: Want | None, recent: np.ndarray | None) -> Timeline:
        """Consecutive-interaction pairs of every user, in both directions, as a timeline."""
        tl = seq.tl
        k = np.arange(1, len(tl), dtype=np.int64)
        k = k[tl.group_starts()[1:] < k]  # rows with a previous row of the same user
        a, b, ts, tick = seq.items[k - 1], seq.items[k], tl.ts[k], seq.ticks[k]
        near = (a != b) & (ts - tl.ts[k - 1] <= self.window_us)
        # A pair row's rank is its later event's position in global time order (2p, 2p + 1
        # for the two directions: they never share a group, as a != b).
        a, b, ts, tick = a[near], b[near], ts[near], tick[near]
        rank = tl.order[k][near] * 2
        fwd: slice | np.ndarray = slice(None)
        bwd: slice | np.ndarray = slice(None)
        if want is not None and recent is not None:
            fwd = np.flatnonzero(recent[a] & want.items[b])
            bwd = np.flatnonzero(recent[b] & want.items[a])
        keys = np.concatenate((a[fwd] * self.n_items + b[fwd], b[bwd] * self.n_items + a[bwd]))
        rank = np.concatenate((rank[fwd], rank[bwd] + 1))
        used = np.zeros(2 * len(tl) + 2, dtype=bool)
        used[rank] = True
        dense = (np.cumsum(used, dtype=np.int64) - 1)[rank]  # renumbered 0..m-1 without a sort
        return Timeline(
            keys,
            np.concatenate((ts[fwd], ts[bwd])),
            np.concatenate((tick[fwd], tick[bwd])),
            self.times.size + 1,
            rank=dense,
        )

    def recent(
        self, u: np.ndarray, t: np.ndarray, tick: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(row, item): each probe's last RECENT_ITEMS interactions before t."""
        _, lo, _, pos = self.user.at(u, t, tick)
        rows, items = [], []
        for j in range(1, RECENT_ITEMS + 1):
            ok = np.flatnonzero(pos - j >= lo)
            rows.append(ok)
            items.append(self.user.items[pos[ok] - j])
        return np.concatenate(rows), np.concatenate(items)

    def features(self, u: np.ndarray, i: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
        """Every feature (float64, NaN for null) of the rows (user code, item code, as_of µs)."""
        tick = self.tick(t)
        out = self._item_features(i, t, tick)
        out.update(self._user_features(u, i, t, tick))
        return out

    def _item_features(
        self, i: np.ndarray, t: np.ndarray, tick: np.ndarray
    ) -> dict[str, np.ndarray]:
        group, lo, hi, pos = self.item.at(i, t, tick)
        c = self.item.totals(lo, pos)
        n, has = c["n"], c["n"] > 0
        e = {}
        for d in ITEM_WINDOWS_DAYS:
            since = t - d * DAY_US
            e[d] = pos - self.item.tl.before(group, lo, hi, since, self.tick(since))
        c_impr = self.impr.count_before(i, t, tick)
        with np.errstate(divide="ignore"):
            trend_7 = np.log((1 + e[7]) / (1 + e[30] * 7 / 30))
            trend_30 = np.log((1 + e[30]) / (1 + e[365] * 30 / 365))
        return {
            "item_events_7d": e[7],
            "item_events_30d": e[30],
            "item_events_365d": e[365],
            "item_events_all": n,
            "item_trend_7d_30d": trend_7,
            "item_trend_30d_365d": trend_30,
            "item_positives_all": c["pos"],
            "item_positive_rate": _ratio(c["pos"], n),
            "item_rating_count": c["rate"],
            "item_mean_rating": _ratio(c["s_rate"], c["rate"]),
            "item_ctr": _ratio(c["click"], c_impr),
            "item_age_days": _days(t, c["first_ts"], has),
            "item_days_since_last": _days(t, c["last_ts"], has),
        }

    def _user_features(
        self, u: np.ndarray, i: np.ndarray, t: np.ndarray, tick: np.ndarray
    ) -> dict[str, np.ndarray]:
        group, lo, hi, pos = self.user.at(u, t, tick)
        c = self.user.totals(lo, pos)
        n = c["n"]
        since = t - USER_WINDOW_DAYS * DAY_US
        old = self.user.tl.before(group, lo, hi, since, self.tick(since)) - lo
        ui = np.where((u >= 0) & (i >= 0), u * self.n_items + i, -1)
        out = {
            "user_events_30d": n - old,
            "user_events_all": n,
            "user_positives_all": c["pos"],
            "user_positive_rate": _ratio(c["pos"], n),
            "user_rating_count": c["rate"],
            "user_mean_rating": _ratio(c["s_rate"], c["rate"]),
            "user_days_since_last": _days(t, c["last_ts"], n > 0),
            "user_item_events": self.user_item.count_before(ui, t, tick),
        }
        out.update(self._affinity_features(u, i, t, tick, c["pos"]))
        out.update(self._covisit_features(u, i, t, tick))
        return out

    def _affinity_features(
        self, u: np.ndarray, i: np.ndarray, t: np.ndarray, tick: np.ndarray, c_pos: np.ndarray
    ) -> dict[str, np.ndarray]:
        row, key, kind = self.keys.of(i)
        probe = np.where(u[row] >= 0, u[row] * max(self.keys.n_keys, 1) + key, -1)
        hits = self.affinity.count_before(probe, t[row], tick[row]).astype(np.float64)
        q = u.size
        genre = kind == _GENRE
        n_genre = np.bincount(row[genre], minlength=q)
        genre_sum = np.bincount(row[genre], weights=hits[genre], minlength=q)
        genre_max = np.full(q, -1.0)
        np.maximum.at(genre_max, row[genre], hits[genre])
        category = np.full(q, -1.0)
        np.maximum.at(category, row[~genre], hits[~genre])
        mean = np.where(n_genre > 0, genre_sum / np.maximum(n_genre, 1), np.nan)
        ok, den = c_pos > 0, np.maximum(c_pos, 1)
        return {
            "user_genre_affinity": np.where(ok & (n_genre > 0), mean / den, np.nan),
            "user_genre_affinity_max": np.where(ok & (genre_max >= 0), genre_max / den, np.nan),
            "user_category_affinity": np.where(ok & (category >= 0), category / den, np.nan),
        }

    def _covisit_features(
        self, u: np.ndarray, i: np.ndarray, t: np.ndarray, tick: np.ndarray
    ) -> dict[str, np.ndarray]:
        row, recent = self.recent(u, t, tick)
        probe = np.where(i[row] >= 0, recent * self.n_items + i[row], -1)
        hits = self.pairs.count_before(probe, t[row], tick[row]).astype(np.float64)
        strength = np.bincount(row, weights=hits, minlength=u.size)
        best = np.zeros(u.size)
        np.maximum.at(best, row, hits)
        return {"covisit_strength": strength, "covisit_max": best}


def _isin_sorted(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """values ∈ sorted_set, by binary search (sorted_set sorted and unique)."""
    if sorted_set.size == 0:
        return np.zeros(values.size, dtype=bool)
    idx = np.minimum(np.searchsorted(sorted_set, values), sorted_set.size - 1)
    return sorted_set[idx] == values
