"""``IdIndex``: an id -> position map kept in two arrays, so it can be memory-mapped.

A ``dict`` of 200,000 user ids and 100,000 item ids costs every serving worker ~60 MB of
private Python objects (the strings, the int objects, the hash tables), rebuilt by unpickling
in each process.  ``IdIndex`` keeps the ids as one sorted fixed-width unicode array and their
positions as one integer array: ``feature_store.features_cache`` saves both out of band, so
the workers share one copy in the page cache.  A lookup is one binary search (a few
microseconds), and ``positions`` looks many ids up at once.

It answers like the ``{id: position}`` dict it replaces: ``get``, ``[]``, ``in``, ``len`` and
iteration in position order; an id given twice maps to its last position (and is iterated
there).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, overload

import numpy as np


class IdIndex(Mapping[str, int]):
    """id -> position of ``ids`` (strings), in arrays."""

    def __init__(self, ids: Iterable[Any]) -> None:
        keys = [str(i) for i in ids]
        # numpy's fixed-width strings drop trailing NULs ("a\0" would read back as "a"): such
        # ids, which ingest never produces, keep an exact dict instead
        self._exact: dict[str, int] | None = None
        if any(k.endswith("\0") for k in keys):
            self._exact = {k: p for p, k in enumerate(keys)}
        arr = np.array(keys, dtype=f"<U{max((len(k) for k in keys), default=1) or 1}")
        order = np.argsort(arr, kind="stable")
        self._sorted = arr[order]
        self._pos = order.astype(np.int32 if len(keys) < 2**31 - 1 else np.int64)
        if keys and np.any(self._sorted[1:] == self._sorted[:-1]):
            self._dedup()

    def _dedup(self) -> None:
        """Keep each id once, at its last position (a dict built in order does the same)."""
        last = np.append(self._sorted[1:] != self._sorted[:-1], True)
        self._sorted, self._pos = self._sorted[last], self._pos[last]

    def _find(self, key: str) -> int:
        if self._exact is not None:
            return self._exact.get(key, -1)
        p = int(np.searchsorted(self._sorted, key))
        if p < self._sorted.size and str(self._sorted[p]) == key:
            return int(self._pos[p])
        return -1

    @overload
    def get(self, key: str, /) -> int | None: ...
    @overload
    def get(self, key: str, default: int, /) -> int: ...
    @overload
    def get(self, key: str, default: Any, /) -> Any: ...
    def get(self, key: Any, default: Any = None, /) -> Any:
        if not isinstance(key, str):
            return default
        p = self._find(key)
        return default if p < 0 else p

    def __getitem__(self, key: str) -> int:
        p = self._find(key) if isinstance(key, str) else -1
        if p < 0:
            raise KeyError(key)
        return p

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._find(key) >= 0

    def __len__(self) -> int:
        return len(self._exact) if self._exact is not None else int(self._sorted.size)

    def __iter__(self) -> Iterator[str]:
        if self._exact is not None:
            yield from self._exact
            return
        for k in self._sorted[np.argsort(self._pos, kind="stable")]:
            yield str(k)

    def positions(self, keys: Iterable[Any]) -> np.ndarray:
        """The position of each of ``keys`` (int64), -1 where it is not in the index."""
        probe = [str(k) for k in keys]
        if not probe or self._sorted.size == 0:
            return np.full(len(probe), -1, dtype=np.int64)
        if self._exact is not None:
            get = self._exact.get
            return np.fromiter((get(k, -1) for k in probe), dtype=np.int64, count=len(probe))
        arr = np.array(probe)
        at = np.minimum(np.searchsorted(self._sorted, arr), self._sorted.size - 1)
        # equal as numpy strings and of equal length: "a\0" (dropped NUL) is not "a"
        lengths = np.fromiter(map(len, probe), dtype=np.int64, count=len(probe))
        hit = (self._sorted[at] == arr) & (np.char.str_len(self._sorted[at]) == lengths)
        return np.where(hit, self._pos[at].astype(np.int64), -1)
