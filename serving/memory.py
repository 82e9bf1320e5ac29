"""Give freed heap back to the operating system after a worker drops a whole model set.

A worker rebuilds its ``Recommender`` (candidate frames, vectors, a LightGBM booster: hundreds
of MB) when a new champion or store snapshot arrives; the old one is dropped a little later.
glibc keeps freed memory in its arenas, one per thread that ever allocated (up to 8 x cores), so
a gthread worker whose request threads each touched big frames shows an RSS that only climbs,
although nothing is live (issue 9's soak: +18% in 3 minutes).  Two things keep it flat:

* ``MALLOC_ARENA_MAX`` (``ARENA_MAX``) in the workers' environment bounds the arenas; ``recsys
  serve`` sets it for its children unless the operator set it (``arena_env``);
* ``release_memory()`` after a model set is closed: a garbage collection, then glibc's
  ``malloc_trim(0)``, which returns the free pages at the top of every arena and the unused
  middle pages (``madvise``) to the system.

A model set is also hundreds of thousands of long-lived Python objects (ids, maps, frames):
344,000 at 1e7 events, where one full collection over them took 180 ms, a pause that every
request in the worker waits behind (p99 and load shedding).  ``settle_heap()`` after a model
set is built collects once and moves every survivor to the permanent generation
(``gc.freeze``), which the collector never scans; ``release_memory`` unfreezes first, so the
replaced set's cycles are collected at the next reload.

Those collections hold the interpreter lock: 0.5-1 s at 1e7 events, in which the worker answers
nothing.  Every worker follows the same store snapshot, so all of them finished loading and
paused at the same instant (a refresh under load shed 6 of 4,500 requests there, the slowest
answered in 1.4 s).  ``collection_turn`` makes them take turns: a worker collects holding an
exclusive lock on a file of the serving directory, and keeps it a moment longer so the
requests that queued meanwhile are answered before the next worker pauses; the others accept
the new connections.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import gc
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import duckdb

log = logging.getLogger(__name__)

ARENA_MAX = "2"
ARENA_ENV = "MALLOC_ARENA_MAX"


def arena_env(environ: Mapping[str, str]) -> dict[str, str]:
    """``{MALLOC_ARENA_MAX: 2}`` unless ``environ`` already sets it (then ``{}``)."""
    return {} if ARENA_ENV in environ else {ARENA_ENV: ARENA_MAX}


def _libc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # musl and others have no malloc_trim
        return None


_TRIM = _libc_trim()


def release_memory() -> bool:
    """Collect garbage (the frozen generation included) and return free heap pages to the
    system; True if glibc trimmed any.  Call ``settle_heap`` once the live set is built."""
    gc.unfreeze()
    gc.collect()
    if _TRIM is None:
        return False
    return bool(_TRIM(0))


def settle_heap() -> int:
    """Collect once, then freeze every surviving object out of the collector's scans (see the
    module doc); returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


@contextlib.contextmanager
def collection_turn(
    lock_path: Path, *, linger_s: float = 0.5, wait_s: float = 30.0
) -> Iterator[bool]:
    """Hold ``lock_path`` exclusively (one worker of the home at a time) around a heap pause,
    and ``linger_s`` after it.  Yields whether the turn was taken: after ``wait_s`` (a holder
    stuck, or a lock that cannot be opened) the caller goes on without it.  A worker that dies
    holding the lock releases it (``flock``)."""
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        log.debug("no collection turn (%s): collecting without it", exc)
        yield False
        return
    try:
        deadline = time.monotonic() + wait_s
        taken = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                taken = True
                break
            except OSError:
                if time.monotonic() >= deadline:
                    log.warning("collection turn not free after %.0f s: collecting anyway", wait_s)
                    break
                time.sleep(0.05)
        try:
            yield taken
            if taken and linger_s > 0:
                time.sleep(linger_s)
        finally:
            if taken:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def cap_store_cache(con: duckdb.DuckDBPyConnection, megabytes: int) -> None:
    """Bound what DuckDB keeps cached for ``con``'s database (0: leave DuckDB's default).

    A worker reads the whole event log once to build its models; DuckDB then keeps those pages
    in its buffer pool (up to 80% of RAM by default), which no request needs again.  Lowering
    the limit evicts them (0.74 GB per worker at 1e7 events)."""
    if megabytes > 0:
        con.execute(f"SET memory_limit = '{int(megabytes)}MB'")
