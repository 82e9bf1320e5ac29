"""Background work yields the CPU to requests; request workers keep BLAS to one thread.

A store refresh rebuilds a worker's models on its watcher thread, and the writer builds the new
snapshot's features, while the same two cores answer requests: at 1e7 events that was a minute
of CPU beside the load, and p99 rose from ~100 ms to 650 ms.  Linux keeps a nice value per
thread, so the thread doing such work lowers its own priority (and threads it starts, DuckDB's
among them, inherit it); request threads keep theirs.  Elsewhere this is a no-op.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import TypeVar

log = logging.getLogger(__name__)

BACKGROUND_NICENESS = 10
T = TypeVar("T")

# A request's numpy work is small (an ALS score is one 100,000 x 32 mat-vec) and each worker
# answers several at once on its own threads.  A BLAS library's own thread pool on top of that
# (one thread per core, spinning while it waits for work) had the request threads of two
# workers fight it on 2 cores: at 1e7 events, bursts of stalled requests every few seconds,
# p99 79-545 ms; single-threaded BLAS in the workers, p99 27.3 ms (docs/scale.md).
BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def worker_thread_env(environ: Mapping[str, str]) -> dict[str, str]:
    """One BLAS/OpenMP thread per request worker, for each variable the operator left unset
    (``recsys serve`` passes these to gunicorn)."""
    return {var: "1" for var in BLAS_THREAD_VARS if var not in environ}


def lower_thread_priority(niceness: int = BACKGROUND_NICENESS) -> int | None:
    """Raise the calling thread's nice value by ``niceness`` (at most 19); the new value, or
    None where threads have no priority of their own."""
    if not hasattr(os, "setpriority") or not os.uname().sysname == "Linux":
        return None
    tid = threading.get_native_id()
    try:
        value = min(19, os.getpriority(os.PRIO_PROCESS, tid) + int(niceness))
        os.setpriority(os.PRIO_PROCESS, tid, value)
    except OSError as exc:
        log.debug("could not lower the priority of thread %d: %s", tid, exc)
        return None
    return value


def in_background(fn: Callable[[], T], *, name: str = "recsys-background") -> T:
    """``fn()`` on a thread of lowered priority, waited for; its result or its exception."""
    out: dict[str, T] = {}
    error: list[BaseException] = []

    def run() -> None:
        lower_thread_priority()
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            error.append(exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return out["value"]
