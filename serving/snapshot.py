"""Read-only store snapshots: published by the single writer, opened by every API worker.

The writer holds the main store read-write only for a moment per flush; after each commit it
checkpoints the store, copies the file while it still holds the write lock (so no other process
can change it mid-copy) and atomically swaps ``<home>/serving/CURRENT.json`` to point at the new
copy.  Workers watch that pointer and open the newest copy read-only; DuckDB allows any number
of read-only openers of one file.  Workers never open the main store, so a retraining job that
needs it read-write is never blocked by serving.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import duckdb

from feature_store.db import connect
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


def publish_snapshot(
    con: duckdb.DuckDBPyConnection, settings: Settings, *, log_seq: int
) -> SnapshotInfo:
    """Copy the store behind the read-write ``con`` to a new snapshot and point workers at it."""
    con.execute("CHECKPOINT")  # everything committed is now in the main file, the WAL is empty
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


def prune_snapshots(settings: Settings, keep: int = KEEP_SNAPSHOTS) -> None:
    """Delete all but the newest ``keep`` snapshots (open readers keep their unlinked inode)."""
    current = read_pointer(settings)
    snaps = sorted((serving_dir(settings) / "snapshots").glob("store-*.duckdb"))
    for old in snaps[:-keep] if keep > 0 else snaps:
        if current is not None and Path(current.path) == old.resolve():
            continue
        with contextlib.suppress(FileNotFoundError):
            old.unlink()
            Path(f"{old}.wal").unlink(missing_ok=True)


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
        self._retired: list[tuple[float, duckdb.DuckDBPyConnection]] = []

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
                con = connect(info.path, read_only=True, threads=self.threads)
            except Exception as exc:  # a snapshot pruned between pointer read and open
                log.warning("could not open snapshot %s: %s", info.path, exc)
                return False
            if self._con is not None:
                self._retired.append((time.monotonic(), self._con))
            self._con, self._info = con, info
        log.info("serving from snapshot %s", Path(info.path).name)
        self._close_retired()
        return True

    def cursor(self) -> duckdb.DuckDBPyConnection | None:
        con = self._con
        return None if con is None else con.cursor()

    def close(self) -> None:
        with self._lock:
            for _, con in self._retired:
                con.close()
            self._retired.clear()
            if self._con is not None:
                self._con.close()
                self._con = None

    def _close_retired(self) -> None:
        if not self._retired:
            return
        with self._lock:
            now = time.monotonic()
            keep = []
            for since, con in self._retired:
                if now - since >= _RETIRE_AFTER_SECONDS:
                    con.close()
                else:
                    keep.append((since, con))
            self._retired = keep


def existing_items(cur: duckdb.DuckDBPyConnection, item_ids: Iterable[str]) -> set[str]:
    """Which of ``item_ids`` the snapshot's catalog has."""
    ids = list(dict.fromkeys(item_ids))
    if not ids:
        return set()
    rows = cur.execute(
        "SELECT DISTINCT item_id FROM items WHERE item_id IN (SELECT unnest($ids))", {"ids": ids}
    ).fetchall()
    return {str(r[0]) for r in rows}


def existing_event_ids(cur: duckdb.DuckDBPyConnection, event_ids: Iterable[str]) -> set[str]:
    """Which of ``event_ids`` the snapshot's events table already holds."""
    ids = list(dict.fromkeys(event_ids))
    if not ids:
        return set()
    rows = cur.execute(
        "SELECT DISTINCT event_id FROM events WHERE event_id IN (SELECT unnest($ids))", {"ids": ids}
    ).fetchall()
    return {str(r[0]) for r in rows}


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
