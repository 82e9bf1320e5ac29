"""Timelines: events of many groups in (group, time) order that answer "how many before t".

A ``Timeline`` holds one row per event, sorted by group key and, inside a group, by the order
the rows were given in (the caller passes them in global (ts, event_id) order, so a group's
rows are in that order too).  ``before(keys, t)`` finds, for each probe, the range of its
group's rows with ``ts < t`` — strictly before, so an event at exactly ``t`` is never seen.
Running totals then come from prefix sums: the count of a flag over a group's rows before
``t`` is ``P[pos] - P[lo]``.  Everything is numpy; a lookup is a vectorized binary search, so
probing 300 rows costs microseconds and probing 1e6 rows well under a second.

A group's totals depend only on that group's own rows, in their own order, so a timeline built
over a subset of the log (the requested entities) and one built over the whole log give the
same bits for every group they share: that is what makes the cached and uncached feature
paths equal.
"""

from __future__ import annotations

import numpy as np

_I64_MAX = np.iinfo(np.int64).max
_EMPTY = np.zeros(0, dtype=np.int64)
# Float sums are done in exact integer arithmetic when every value is a multiple of 2**-16 and
# the totals stay far below 2**53 ulps: then any summation order gives the same (exact) bits.
_SCALE = 2.0**16
_EXACT_LIMIT = 2.0**36


def stable_order(keys: np.ndarray, rank: np.ndarray | None = None) -> np.ndarray:
    """The permutation sorting rows by (``keys``, ``rank``); ``rank`` defaults to row position.

    ``keys`` are non-negative integers; ``rank`` is a permutation of ``0..n-1`` (a row's
    position in global time order), so the result keeps each group's rows in that order.
    """
    n = keys.size
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    pos = np.arange(n, dtype=np.int64) if rank is None else rank.astype(np.int64)
    if int(keys.max()) < _I64_MAX // n - 1:
        # One int64 sort of key * n + rank, decoded, is several times faster than numpy's
        # stable argsort on 1e7 rows.
        packed = np.sort(keys.astype(np.int64) * n + pos) % n
        if rank is None:
            return packed
        row_of_rank = np.empty(n, dtype=np.int64)
        row_of_rank[pos] = np.arange(n, dtype=np.int64)
        return row_of_rank[packed]
    return np.lexsort((pos, keys))


class RunningSum:
    """Sums of float ``values`` over a group's rows ``[lo, pos)``; ``starts``: group offsets.

    A group's sum depends only on that group's values in their order, never on the other
    groups.  When every value is a multiple of 2**-16 and the totals stay far below 2**53
    ulps (ratings), sums are exact integer prefix differences, equal to any float summation
    order; otherwise each group is summed sequentially in float.
    """

    def __init__(self, values: np.ndarray, starts: np.ndarray) -> None:
        self._exact: np.ndarray | None = None
        self._running = np.zeros(0)
        scaled = values * _SCALE
        if np.all(np.isfinite(scaled)) and np.all(scaled == np.round(scaled)):
            ints = np.round(scaled).astype(np.int64)
            if np.abs(ints).sum(dtype=np.float64) / _SCALE < _EXACT_LIMIT:
                self._exact = prefix(ints)
                return
        self._running = np.zeros(values.size, dtype=np.float64)
        for lo, hi in zip(starts[:-1].tolist(), starts[1:].tolist(), strict=True):
            if hi > lo:  # a sequential sum per group: the same bits whatever else is in the log
                np.cumsum(values[lo:hi], out=self._running[lo:hi])

    def between(self, lo: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """The sum over rows ``[lo, pos)`` of each probe (0.0 for an empty range)."""
        if self._exact is not None:
            return (self._exact[pos] - self._exact[lo]).astype(np.float64) / _SCALE
        if self._running.size == 0:
            return np.zeros(lo.size)
        return np.where(pos > lo, self._running[np.maximum(pos - 1, 0)], 0.0)


def search(sorted_values: np.ndarray, probes: np.ndarray) -> np.ndarray:
    """``np.searchsorted(sorted_values, probes)``, probing in sorted order when there are many
    probes: numpy narrows each search from the previous one, and memory is read in order."""
    if probes.size < 4096:
        return np.searchsorted(sorted_values, probes)
    order = np.argsort(probes)
    out = np.empty(probes.size, dtype=np.int64)
    out[order] = np.searchsorted(sorted_values, probes[order])
    return out


def prefix(flags: np.ndarray) -> np.ndarray:
    """``P`` with ``P[k]`` = sum of ``flags[:k]``, so a range sum is ``P[b] - P[a]``.

    0/1 flags over fewer than 2**31 rows fit int32 (half the memory of a whole-log snapshot's
    counts); anything else is int64.  Callers widen range sums to int64 (``between``)."""
    boolean = flags.dtype == np.bool_
    dtype = np.int32 if boolean and flags.size < 2**31 - 1 else np.int64
    out = np.zeros(flags.size + 1, dtype=dtype)
    # cumsum with dtype= is ~10x faster on booleans than writing into an out= array.
    out[1:] = np.cumsum(flags, dtype=dtype)
    return out


def between(p: np.ndarray, lo: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """``P[pos] - P[lo]`` of a ``prefix`` as int64."""
    return p[pos].astype(np.int64) - p[lo]


def explode(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, k) for every k < counts[row]: the flat index pairs of a ragged expansion."""
    total = int(counts.sum())
    row = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
    offsets = np.cumsum(counts) - counts
    k = np.arange(total, dtype=np.int64) - np.repeat(offsets, counts)
    return row, k


class Timeline:
    """Rows of many groups sorted by (group key, given order), with fast "before t" lookups.

    ``keys`` are non-negative int64 group keys; ``ts`` int64 microseconds; ``tick`` each
    row's time as an index into the log's sorted distinct times (see ``ticks``), ``width``
    one more than the largest tick.  Rows are then also indexed by the single int64
    ``group * width + tick``, so a lookup is one ``np.searchsorted``.  ``codes``: keys are
    codes below this bound, located by a table instead of a search.  ``order`` is the
    permutation applied to the given rows (to carry other columns along); an owner that has
    carried them calls ``release_build_state`` (lookups never need it).
    """

    def __init__(
        self,
        keys: np.ndarray,
        ts: np.ndarray,
        tick: np.ndarray,
        width: int,
        *,
        rank: np.ndarray | None = None,
        codes: int | None = None,
    ) -> None:
        self.order = stable_order(keys, rank)
        self._rows = int(keys.size)
        sorted_keys = keys[self.order]
        self.ts = ts[self.order]
        bounds = np.flatnonzero(np.diff(sorted_keys)) + 1
        first = np.concatenate(([0], bounds)).astype(np.int64)
        self.group_keys = sorted_keys[first] if sorted_keys.size else sorted_keys
        # row offsets and group numbers are stored narrow (half the pages a worker maps);
        # ``locate`` widens what it returns, so every computation downstream is in int64
        narrow = np.int32 if keys.size < 2**31 - 1 else np.int64
        self.starts = np.concatenate((first, [sorted_keys.size])).astype(narrow)
        groups = self.group_keys.size
        self.width = max(int(width), 1)
        self._packed = None
        if groups * self.width < _I64_MAX // 2:
            group = np.repeat(np.arange(groups, dtype=np.int64), np.diff(self.starts))
            self._packed = group * self.width + tick[self.order]
        self._depth = int(np.diff(self.starts).max()).bit_length() + 1 if keys.size else 0
        self._table = None
        if codes is not None:
            self._table = np.full(max(codes, 1), -1, dtype=narrow)
            self._table[self.group_keys] = np.arange(groups, dtype=narrow)

    def __len__(self) -> int:
        return self._rows

    def release_build_state(self, *, keep_ts: bool = False) -> None:
        """Drop what only building needs: the permutation ``order`` and, unless ``keep_ts`` or
        lookups have no packed key to search, the row times ``ts`` (8 bytes a row each: about
        0.55 GB over the six timelines of a 1e7-event snapshot)."""
        self.order = _EMPTY
        if self._packed is not None and not keep_ts:
            self.ts = _EMPTY

    def tick_of(self, rows: np.ndarray) -> np.ndarray:
        """The tick of each of ``rows`` (sorted order), read off the packed key."""
        if self._packed is None:
            raise ValueError("this timeline has no packed key: read its row times")
        return self._packed[rows] % self.width

    def group_starts(self) -> np.ndarray:
        """For each row (in sorted order), the offset of its group's first row."""
        return np.repeat(self.starts[:-1].astype(np.int64), np.diff(self.starts))

    def locate(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(group, lo, hi) of each probe; group -1 and lo == hi for an absent or negative key."""
        if self.group_keys.size == 0:
            empty = np.zeros(keys.size, dtype=np.int64)
            return empty - 1, empty, empty.copy()
        if self._table is not None:
            group = np.where(keys >= 0, self._table[np.clip(keys, 0, self._table.size - 1)], -1)
            group = np.where(keys < self._table.size, group, -1)
        else:
            idx = np.minimum(search(self.group_keys, keys), self.group_keys.size - 1)
            group = np.where((keys >= 0) & (self.group_keys[idx] == keys), idx, -1)
        group = group.astype(np.int64, copy=False)
        found = group >= 0
        safe = np.maximum(group, 0)
        return (
            group,
            np.where(found, self.starts[safe], 0).astype(np.int64, copy=False),
            np.where(found, self.starts[safe + 1], 0).astype(np.int64, copy=False),
        )

    def before(
        self, group: np.ndarray, lo: np.ndarray, hi: np.ndarray, t: np.ndarray, tick: np.ndarray
    ) -> np.ndarray:
        """For each probe, the first row of its group with ``ts >= t`` (hi when there is none).

        ``tick``: the number of distinct log times before ``t`` (``ticks.searchsorted(t)``).
        """
        if self._packed is not None:
            pos = search(self._packed, np.maximum(group, 0) * self.width + tick)
            return np.where(group >= 0, pos, lo)
        lo, hi = lo.copy(), hi.copy()
        last = max(self.ts.size - 1, 0)
        for _ in range(self._depth):
            active = lo < hi
            if not active.any():
                break
            mid = (lo + hi) // 2
            right = active & (self.ts[np.minimum(mid, last)] < t)
            lo = np.where(right, mid + 1, lo)
            hi = np.where(active & ~right, mid, hi)
        return lo

    def count_before(self, keys: np.ndarray, t: np.ndarray, tick: np.ndarray) -> np.ndarray:
        """How many rows of each probe's group have ``ts < t``."""
        group, lo, hi = self.locate(keys)
        return self.before(group, lo, hi, t, tick) - lo


def ticks(ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct times, each row's index among them) of time-sorted ``ts``."""
    if ts.size == 0:
        return ts.copy(), np.zeros(0, dtype=np.int64)
    new = np.concatenate(([True], ts[1:] != ts[:-1]))
    return ts[new], np.cumsum(new, dtype=np.int64) - 1
