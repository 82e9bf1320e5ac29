"""Read-only store snapshots: published by the single writer, opened by every API worker.

The writer holds the main store read-write only for a moment per flush.  When something the
workers read changed (new events, refreshed user vectors, a batch job's writes) it checkpoints
the store, copies the file while it still holds the write lock (so no other process can change
it mid-copy) and atomically swaps ``<home>/serving/CURRENT.json`` to point at the new copy.  A
copy costs a full file write, so ``SnapshotPublisher`` publishes at most every
``serving.snapshot_min_seconds`` and never when nothing changed; workers rebuild their models
from a snapshot at most every ``serving.store_refresh_seconds`` anyway.

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
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import duckdb

from feature_store.db import checkpoint, connect
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
    return info if Path(info.path).is_file() else None


class SnapshotPublisher:
    """The writer's publishing policy: only after a change, at most every ``min_seconds``."""

    def __init__(self, settings: Settings, *, min_seconds: float | None = None) -> None:
        self.settings = settings
        every = settings.serving.snapshot_min_seconds if min_seconds is None else min_seconds
        self.min_seconds = float(every)
        self.dirty = read_pointer(settings) is None  # the first flush publishes
        self._last = float("-inf")

    def due(self) -> bool:
        """A change is waiting and the interval since the last publish has passed."""
        return self.dirty and time.monotonic() - self._last >= self.min_seconds

    def maybe_publish(
        self, con: duckdb.DuckDBPyConnection, *, log_seq: int, changed: bool
    ) -> SnapshotInfo | None:
        """Note ``changed``; publish from the read-write ``con`` when due, else ``None``."""
        self.dirty = self.dirty or changed
        if not self.due():
            return None
        info = publish_snapshot(con, self.settings, log_seq=log_seq)
        self.dirty, self._last = False, time.monotonic()
        return info


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


def prune_snapshots(settings: Settings, keep: int = KEEP_SNAPSHOTS) -> list[Path]:
    """Delete all but the newest ``keep`` snapshots that no process has open; the deleted."""
    current = read_pointer(settings)
    snaps = sorted((serving_dir(settings) / "snapshots").glob("store-*.duckdb"))
    deleted = []
    for old in snaps[:-keep] if keep > 0 else snaps:
        if current is not None and Path(current.path) == old.resolve():
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


def close_snapshot(con: duckdb.DuckDBPyConnection, path: str) -> None:
    """Close a connection from ``open_snapshot`` and drop its lease."""
    try:
        con.close()
    finally:
        leases.release(path)


class SnapshotReader:
    """A worker's read-only connection to the newest snapshot, re-opened when the pointer moves.

    ``refresh()`` is cheap (one small file read) and thread-safe; request code takes a cursor
    with ``cursor()`` and closes it on teardown.
    """

    def __init__(self, settings: Settings, *, threads: int | None = None) -> None:
        self.settings = settings
        self.threads = threads
        self._lock = threading.Lock()
        self._info: SnapshotInfo | None = None
        self._con: duckdb.DuckDBPyConnection | None = None
        self._retired: list[tuple[float, duckdb.DuckDBPyConnection, str]] = []

    @property
    def info(self) -> SnapshotInfo | None:
        return self._info

    @property
    def connection(self) -> duckdb.DuckDBPyConnection | None:
        return self._con

    def refresh(self) -> bool:
        """Open the published snapshot if it is newer than the open one; True if it switched."""
        info = read_pointer(self.settings)
        if info is None or (self._info is not None and info.path == self._info.path):
            self._close_retired()
            return False
        with self._lock:
            if self._info is not None and info.path == self._info.path:
                return False
            try:
                con = open_snapshot(info.path, threads=self.threads)
            except Exception as exc:  # a snapshot pruned between pointer read and open
                log.warning("could not open snapshot %s: %s", info.path, exc)
                return False
            if self._con is not None and self._info is not None:
                self._retired.append((time.monotonic(), self._con, self._info.path))
            self._con, self._info = con, info
        log.info("serving from snapshot %s", Path(info.path).name)
        self._close_retired()
        return True

    def cursor(self) -> duckdb.DuckDBPyConnection | None:
        con = self._con
        return None if con is None else con.cursor()

    def close(self) -> None:
        with self._lock:
            for _, con, path in self._retired:
                close_snapshot(con, path)
            self._retired.clear()
            if self._con is not None and self._info is not None:
                close_snapshot(self._con, self._info.path)
                self._con = None

    def _close_retired(self) -> None:
        if not self._retired:
            return
        with self._lock:
            now = time.monotonic()
            keep = []
            for since, con, path in self._retired:
                if now - since >= _RETIRE_AFTER_SECONDS:
                    close_snapshot(con, path)
                else:
                    keep.append((since, con, path))
            self._retired = keep


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
