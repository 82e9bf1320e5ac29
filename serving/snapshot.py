"""Read-only store snapshots: published by the single writer, opened by every API worker.

The writer holds the main store read-write only for a moment per flush.  When something the
workers read changed (new events, refreshed user vectors, a batch job's writes) it publishes,
at most every ``serving.snapshot_min_seconds`` and never when nothing changed, and atomically
swaps ``<home>/serving/CURRENT.json`` to point at what it published:

* usually a **delta** (feature_store/deltas.py): the events and user rows written since the last
  full snapshot, a small DuckDB file under ``serving/deltas/``; the pointer names the base and
  the delta.  Workers ATTACH it to the base they have open and read both through temp views,
  so a new event is visible to the next request without any copy or model rebuild;
* a **full snapshot** (base): the store checkpointed and copied while the writer holds the
  write lock, when there is no base yet, when another process changed the store, or to compact
  (``serving.snapshot_compact_seconds`` after the last one, or once the delta holds
  ``serving.snapshot_compact_events`` events).  Workers rebuild their models on a new base only.

Workers watch the pointer and open the newest copy read-only; DuckDB allows any number of
read-only openers of one file.  While a process has a snapshot open it holds a shared ``flock``
on ``<snapshot>.lock`` (``SnapshotLeases``); the writer deletes an old snapshot only when it can
take that lock exclusively, so no process ever keeps a handle to a deleted snapshot (disk space
is freed when the last reader lets go).  Workers never open the main store, so a retraining job
that needs it read-write is never blocked by serving.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from feature_store.db import checkpoint, connect
from feature_store.deltas import (
    apply_overlay,
    attach_delta,
    detach_delta,
    table_marks,
    write_delta,
)
from recsys.core.config import Settings

log = logging.getLogger(__name__)

POINTER_FILE = "CURRENT.json"
KEEP_SNAPSHOTS = 3
# Connections to superseded snapshots stay open this long so in-flight requests can finish.
_RETIRE_AFTER_SECONDS = 120.0


def serving_dir(settings: Settings) -> Path:
    """``<home>/serving``: snapshots, the snapshot pointer, reload signals."""
    return settings.home / "serving"


@dataclass(frozen=True)
class SnapshotInfo:
    """What the pointer file says about the current snapshot."""

    path: str
    published_at: float
    log_seq: int
    # the delta over ``path`` (everything the writer stored since that base), if any
    delta: str | None = None
    delta_events: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_pointer(settings: Settings) -> SnapshotInfo | None:
    """The published snapshot, or ``None`` before the writer's first publish."""
    pointer = serving_dir(settings) / POINTER_FILE
    try:
        data = json.loads(pointer.read_text(encoding="utf-8"))
        info = SnapshotInfo(**data)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        log.warning("ignoring unreadable snapshot pointer %s: %s", pointer, exc)
        return None
    if not Path(info.path).is_file() or (info.delta and not Path(info.delta).is_file()):
        return None
    return info


class SnapshotPublisher:
    """The writer's publishing policy: only after a change, at most every ``min_seconds``; a
    delta over the last base unless a full snapshot is needed (see the module docstring)."""

    def __init__(self, settings: Settings, *, min_seconds: float | None = None) -> None:
        self.settings = settings
        every = settings.serving.snapshot_min_seconds if min_seconds is None else min_seconds
        self.min_seconds = float(every)
        self.dirty = read_pointer(settings) is None  # the first flush publishes
        self._last = float("-inf")
        # the base this writer published: (info, rowid marks, when); deltas extend it
        self._base: tuple[SnapshotInfo, dict[str, int], float] | None = None
        self._users: set[str] = set()  # users whose rows changed since the base
        self._full = False  # another process wrote the store: only a new base shows it
        self._delta_events = 0

    def due(self) -> bool:
        """A change is waiting and the interval since the last publish has passed."""
        return self.dirty and time.monotonic() - self._last >= self.min_seconds

    def maybe_publish(
        self,
        con: duckdb.DuckDBPyConnection,
        *,
        log_seq: int,
        changed: bool,
        users: Iterable[str] = (),
        external: bool = False,
    ) -> SnapshotInfo | None:
        """Note ``changed`` (``users`` whose rows changed, ``external``: another process wrote
        the store); publish from the read-write ``con`` when due, else ``None``."""
        self.dirty = self.dirty or changed or external
        self._users.update(users)
        self._full = self._full or external
        if not self.due():
            return None
        if self._base is None or self._compaction_due(self._base[2]):
            info = publish_snapshot(con, self.settings, log_seq=log_seq)
            self._base = (info, table_marks(con), time.monotonic())
            self._users.clear()
            self._full = False
        else:
            base, marks, _ = self._base
            info = publish_delta(con, self.settings, base, marks, self._users, log_seq=log_seq)
        self._delta_events = info.delta_events
        self.dirty, self._last = False, time.monotonic()
        return info

    def _compaction_due(self, base_at: float) -> bool:
        serving = self.settings.serving
        if self._full or serving.snapshot_compact_seconds <= 0:
            return True
        return (
            time.monotonic() - base_at >= serving.snapshot_compact_seconds
            or self._delta_events >= serving.snapshot_compact_events
        )


def publish_snapshot(
    con: duckdb.DuckDBPyConnection, settings: Settings, *, log_seq: int
) -> SnapshotInfo:
    """Copy the store behind the read-write ``con`` to a new snapshot and point workers at it."""
    checkpoint(con)  # everything committed is now in the main file, the WAL is empty
    out_dir = serving_dir(settings) / "snapshots"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.time_ns()
    final = out_dir / f"store-{stamp}.duckdb"
    tmp = final.with_suffix(".tmp")
    shutil.copyfile(settings.db_path, tmp)
    _fsync_file(tmp)
    os.replace(tmp, final)
    info = SnapshotInfo(path=str(final.resolve()), published_at=stamp / 1e9, log_seq=int(log_seq))
    _write_atomic(serving_dir(settings) / POINTER_FILE, json.dumps(info.to_dict()))
    prune_snapshots(settings, keep=KEEP_SNAPSHOTS)
    log.info("published store snapshot %s (%.1f MB)", final.name, final.stat().st_size / 1e6)
    return info


def publish_delta(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    base: SnapshotInfo,
    marks: dict[str, int],
    users: Iterable[str],
    *,
    log_seq: int,
) -> SnapshotInfo:
    """Write what changed since ``base`` (rows past ``marks``, the rows of ``users``) to a new
    delta file and point workers at base + delta.  The base file is not touched."""
    started = time.perf_counter()
    out_dir = serving_dir(settings) / "deltas"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.time_ns()
    final = out_dir / f"delta-{stamp}.duckdb"
    tmp = out_dir / f".delta-{stamp}.tmp"
    events = write_delta(con, tmp, marks, users)
    _fsync_file(tmp)
    os.replace(tmp, final)
    info = SnapshotInfo(
        path=base.path,
        published_at=stamp / 1e9,
        log_seq=int(log_seq),
        delta=str(final.resolve()),
        delta_events=events,
    )
    _write_atomic(serving_dir(settings) / POINTER_FILE, json.dumps(info.to_dict()))
    prune_snapshots(settings, keep=KEEP_SNAPSHOTS)
    log.info(
        "published delta %s over %s (%d events, %.1f kB, %.3f s)",
        final.name,
        Path(base.path).name,
        events,
        final.stat().st_size / 1e3,
        time.perf_counter() - started,
    )
    return info


def prune_snapshots(settings: Settings, keep: int = KEEP_SNAPSHOTS) -> list[Path]:
    """Delete all but the newest ``keep`` snapshots, and every delta but the current one, that
    no process has open; the deleted."""
    current = read_pointer(settings)
    snaps = sorted((serving_dir(settings) / "snapshots").glob("store-*.duckdb"))
    deltas = sorted((serving_dir(settings) / "deltas").glob("delta-*.duckdb"))
    in_use = {current.path, current.delta} if current is not None else set()
    deleted = []
    for old in (snaps[:-keep] if keep > 0 else snaps) + deltas:
        if str(old.resolve()) in in_use:
            continue
        if _delete_unleased(old):
            deleted.append(old)
    return deleted


def _delete_unleased(snapshot: Path) -> bool:
    """Delete ``snapshot`` if no reader holds its lease (a shared flock on its lock file)."""
    lock_path = _lease_path(snapshot)
    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # still open somewhere; a later prune deletes it
        with contextlib.suppress(FileNotFoundError):
            snapshot.unlink()
        Path(f"{snapshot}.wal").unlink(missing_ok=True)
        lock_path.unlink(missing_ok=True)
    return True


def _lease_path(snapshot: Path | str) -> Path:
    return Path(f"{snapshot}.lock")


class SnapshotLeases:
    """This process's shared locks on the snapshots it has open, counted per path.

    ``acquire`` before opening a snapshot (False: it was deleted meanwhile), ``release`` after
    closing the connection; the writer's prune skips a snapshot while anyone holds its lease.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, tuple[Any, int]] = {}

    def acquire(self, path: str) -> bool:
        with self._lock:
            if path in self._held:
                fh, n = self._held[path]
                self._held[path] = (fh, n + 1)
                return True
            fh = open(_lease_path(path), "a+")  # noqa: SIM115 - held until release()
            fcntl.flock(fh.fileno(), fcntl.LOCK_SH)
            if not Path(path).is_file():  # pruned between reading the pointer and locking
                fh.close()
                return False
            self._held[path] = (fh, 1)
            return True

    def release(self, path: str) -> None:
        with self._lock:
            fh, n = self._held.pop(path, (None, 0))
            if n > 1:
                self._held[path] = (fh, n - 1)
            elif fh is not None:
                fh.close()  # closing the only descriptor drops the flock

    def held(self) -> dict[str, int]:
        with self._lock:
            return {path: n for path, (_, n) in self._held.items()}


# One per process: a worker's snapshot reader and model holder share it.
leases = SnapshotLeases()


def open_snapshot(path: str, *, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """A read-only connection to a published snapshot, leased until ``close_snapshot``."""
    if not leases.acquire(path):
        raise FileNotFoundError(f"snapshot {path} was deleted before it could be opened")
    try:
        return connect(path, read_only=True, threads=threads)
    except BaseException:
        leases.release(path)
        raise


# Connections to one file in one process share a DuckDB instance, and ATTACH names are the
# instance's: every attached delta gets a name no other connection of the process uses.
_alias_serial = itertools.count(1)
_published_aliases: dict[int, str] = {}


def _delta_alias() -> str:
    return f"recsys_delta_{os.getpid()}_{next(_alias_serial)}"


def open_published(
    path: str, delta: str | None, *, threads: int | None = None
) -> duckdb.DuckDBPyConnection:
    """``open_snapshot`` of the base ``path`` with ``delta`` attached and overlaid on the
    connection itself (its own cursors read the base alone); close with ``close_published``."""
    con = open_snapshot(path, threads=threads)
    if delta is None:
        return con
    try:
        if not leases.acquire(delta):
            raise FileNotFoundError(f"delta {delta} was deleted before it could be opened")
        try:
            alias = _delta_alias()
            apply_overlay(con, attach_delta(con, delta, alias))
            _published_aliases[id(con)] = alias
        except BaseException:
            leases.release(delta)
            raise
    except BaseException:
        close_snapshot(con, path)
        raise
    return con


def close_published(con: duckdb.DuckDBPyConnection, path: str, delta: str | None) -> None:
    """Close a connection from ``open_published`` and drop its leases."""
    alias = _published_aliases.pop(id(con), None)
    try:
        if alias is not None:  # the database instance is shared with this process's others
            detach_delta(con, alias)
        close_snapshot(con, path)
    finally:
        if delta is not None:
            leases.release(delta)


def close_snapshot(con: duckdb.DuckDBPyConnection, path: str) -> None:
    """Close a connection from ``open_snapshot`` and drop its lease."""
    try:
        con.close()
    finally:
        leases.release(path)


@dataclass
class _Open:
    """A base snapshot's connection and the deltas attached to it (alias, path, since)."""

    con: duckdb.DuckDBPyConnection
    path: str
    deltas: list[tuple[str, str, float]] = field(default_factory=list)
    delta: str | None = None  # the current delta's path
    views: list[str] = field(default_factory=list)  # statements that overlay it on a cursor

    def close(self) -> None:
        try:
            for alias, _, _ in self.deltas:  # the instance may outlive this connection
                with contextlib.suppress(duckdb.Error):
                    detach_delta(self.con, alias)
            close_snapshot(self.con, self.path)
        finally:
            for _, path, _ in self.deltas:
                leases.release(path)
            self.deltas.clear()


@contextlib.contextmanager
def published_cursor(settings: Settings) -> Iterator[duckdb.DuckDBPyConnection]:
    """A cursor on what is published now (base + delta), for tools and tests; closed after."""
    reader = SnapshotReader(settings, threads=1)
    try:
        # a publish may prune the delta just read from the pointer: read the new pointer then
        if not any(reader.refresh() for _ in range(3)):
            raise FileNotFoundError(f"no store snapshot is published under {serving_dir(settings)}")
        cur = reader.cursor()
        if cur is None:
            raise FileNotFoundError("the published snapshot could not be opened")
        try:
            yield cur
        finally:
            cur.close()
    finally:
        reader.close()


class SnapshotReader:
    """A worker's read-only view of the newest snapshot: the base connection, re-opened when the
    pointer names a new base, with the pointer's delta attached (a new delta is attached to the
    same connection: no re-open, no model rebuild).

    ``refresh()`` is cheap (one small file read) and thread-safe; request code takes a cursor
    with ``cursor()`` (base + delta) and closes it on teardown.
    """

    def __init__(self, settings: Settings, *, threads: int | None = None) -> None:
        self.settings = settings
        self.threads = threads
        self._lock = threading.Lock()
        self._info: SnapshotInfo | None = None
        self._open: _Open | None = None
        self._retired: list[tuple[float, _Open]] = []

    @property
    def info(self) -> SnapshotInfo | None:
        return self._info

    @property
    def connection(self) -> duckdb.DuckDBPyConnection | None:
        return None if self._open is None else self._open.con

    def refresh(self) -> bool:
        """Follow the pointer (a new base: re-open; a new delta: attach); True if it moved."""
        info = read_pointer(self.settings)
        if info is None or self._current(info):
            self._close_retired()
            return False
        with self._lock:
            if self._current(info):
                return False
            try:
                if self._open is None or self._open.path != info.path:
                    opened = _Open(open_snapshot(info.path, threads=self.threads), info.path)
                    try:
                        self._attach(opened, info.delta)
                    except BaseException:
                        opened.close()
                        raise
                    if self._open is not None:
                        self._retired.append((time.monotonic(), self._open))
                    self._open = opened
                    log.info("serving from snapshot %s", Path(info.path).name)
                else:
                    self._attach(self._open, info.delta)
            except Exception as exc:  # a file pruned between pointer read and open
                log.warning("could not open snapshot %s (delta %s): %s", info.path, info.delta, exc)
                return False
            self._info = info
        self._close_retired()
        return True

    def _current(self, info: SnapshotInfo) -> bool:
        now = self._info
        return now is not None and (info.path, info.delta) == (now.path, now.delta)

    def _attach(self, opened: _Open, delta: str | None) -> None:
        """Attach ``delta`` to ``opened`` (under the lock); older deltas retire."""
        if delta is None:
            opened.delta, opened.views = None, []
            return
        if not leases.acquire(delta):
            raise FileNotFoundError(f"delta {delta} was deleted before it could be opened")
        alias = _delta_alias()
        try:
            views = attach_delta(opened.con, delta, alias)
        except BaseException:
            leases.release(delta)
            raise
        opened.deltas.append((alias, delta, float("inf")))
        # the previous delta stays attached until requests that read it are surely done
        opened.deltas = [
            (a, p, time.monotonic() if since == float("inf") and a != alias else since)
            for a, p, since in opened.deltas
        ]
        opened.delta, opened.views = delta, views

    def cursor(self) -> duckdb.DuckDBPyConnection | None:
        opened = self._open
        if opened is None:
            return None
        cur = opened.con.cursor()
        views = opened.views
        if views:
            apply_overlay(cur, views)
        return cur

    def close(self) -> None:
        with self._lock:
            for _, opened in self._retired:
                opened.close()
            self._retired.clear()
            if self._open is not None:
                self._open.close()
                self._open = None

    def _close_retired(self) -> None:
        with self._lock:
            now = time.monotonic()
            keep = []
            for since, opened in self._retired:
                if now - since >= _RETIRE_AFTER_SECONDS:
                    opened.close()
                else:
                    keep.append((since, opened))
            self._retired = keep
            if self._open is not None:
                self._detach_old(self._open, now)

    @staticmethod
    def _detach_old(opened: _Open, now: float) -> None:
        keep = []
        for alias, path, since in opened.deltas:
            if now - since >= _RETIRE_AFTER_SECONDS:
                detach_delta(opened.con, alias)
                leases.release(path)
            else:
                keep.append((alias, path, since))
        opened.deltas = keep


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
