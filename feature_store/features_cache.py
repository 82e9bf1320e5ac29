"""A feature snapshot built once per store content and memory-mapped by every process.

Each serving worker needs the whole store's ``FeatureSnapshot`` (1.2 GB of arrays at 1e7
events, about 15 s to build).  ``shared_snapshot`` names a snapshot by what it is built from --
a hash of the events and items, the task's SQL rules, the co-visitation window and this code --
and keeps it under ``<cache_dir>/<key>/``: the first process to need it builds and saves it
(others wait on a file lock, then load); later ones map the saved arrays read-only, so the
operating system holds one copy in its page cache for every worker, and a worker's private
memory is only the Python objects around them.

The file format is pickle protocol 5 with the arrays out of band: ``index.pkl`` holds the
object graph and ``arrays.bin`` every array's bytes (64-byte aligned), which unpickling maps as
read-only views.  ``meta.json`` records the key, the pickle's checksum and the arrays' layout;
a directory that fails any check is ignored and rebuilt.  Pickle runs code on load, so only
directories this module wrote (inside the service's home) are read.  Any failure to save (a
full or read-only disk) leaves the process with the snapshot it built in memory.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import mmap
import os
import pickle
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import duckdb

from feature_store import features, features_snapshot, features_sql, features_timeline
from feature_store.features import FeatureSnapshot, resolve_event_relation

log = logging.getLogger(__name__)

FORMAT = "recsys-feature-snapshot/1"
KEEP = 3  # saved snapshots kept (the newest by modification time)
_ALIGN = 64
_CODE = (features, features_snapshot, features_sql, features_timeline)


def snapshot_key(con: duckdb.DuckDBPyConnection, events: str, covisit_window_days: float) -> str:
    """What a snapshot of ``events`` is built from, hashed: every row of the relation and of
    ``items``, the store's task macros, the window and the code that builds it (about 1 s at
    1e7 events)."""
    relation = resolve_event_relation(con, events)  # the rows, whatever the view is called
    h = hashlib.sha256(FORMAT.encode())
    for module in _CODE:
        h.update(Path(str(module.__file__)).read_bytes())
    h.update(f"{events}|{covisit_window_days!r}".encode())
    for sql in (
        f"SELECT count(*), sum(hash(e)) FROM {relation} e",
        "SELECT count(*), sum(hash(i)) FROM items i",
        "SELECT function_name, macro_definition FROM duckdb_functions() "
        "WHERE function_name LIKE 'recsys_%' ORDER BY ALL",
    ):
        h.update(repr(con.execute(sql).fetchall()).encode())
    return h.hexdigest()[:32]


def shared_snapshot(
    con: duckdb.DuckDBPyConnection,
    cache_dir: Path,
    *,
    events: str,
    covisit_window_days: float,
) -> FeatureSnapshot:
    """The snapshot of ``events`` from ``cache_dir`` (memory-mapped), built and saved there
    when no process has yet; built in memory when the cache cannot be used."""
    started = time.perf_counter()
    found = _cached(con, cache_dir, events, covisit_window_days, keep_built=True)
    if isinstance(found, FeatureSnapshot):
        return found
    if found is None:
        return FeatureSnapshot.build(con, events=events, covisit_window_days=covisit_window_days)
    snap = load(found, found.name)
    if snap is None:  # deleted or damaged between saving and mapping: build our own
        return FeatureSnapshot.build(con, events=events, covisit_window_days=covisit_window_days)
    log.info(
        "feature snapshot of %s mapped from %s (%.2f s in all)",
        events,
        found,
        time.perf_counter() - started,
    )
    return snap


def prepare(
    con: duckdb.DuckDBPyConnection, cache_dir: Path, *, events: str, covisit_window_days: float
) -> Path | None:
    """Build and save the snapshot of ``events`` unless saved already, without mapping it here
    (the store writer does this for a new store snapshot, so that workers only map it).
    Returns where it is saved, or None when the cache cannot be used (logged)."""
    found = _cached(con, cache_dir, events, covisit_window_days, keep_built=False)
    return found if isinstance(found, Path) else None


def _cached(
    con: duckdb.DuckDBPyConnection,
    cache_dir: Path,
    events: str,
    covisit_window_days: float,
    *,
    keep_built: bool,
) -> Path | FeatureSnapshot | None:
    """Where the snapshot is saved (built now when missing or damaged), or -- when saving
    failed -- the snapshot built in memory if ``keep_built``; None: no cache (logged)."""
    try:
        key = snapshot_key(con, events, covisit_window_days)
        cache_dir.mkdir(parents=True, exist_ok=True)
    except (OSError, duckdb.Error) as exc:
        log.warning("feature snapshot cache unavailable (%s); building in memory", exc)
        return None
    path = cache_dir / key
    with _locked(cache_dir / f"{key}.lock"):
        if _intact(path, key):
            return path
        shutil.rmtree(path, ignore_errors=True)  # a damaged copy (logged), if any
        snap = FeatureSnapshot.build(con, events=events, covisit_window_days=covisit_window_days)
        try:
            save(snap, path, key)
        except OSError as exc:
            log.warning("could not save the feature snapshot to %s (%s); kept in memory", path, exc)
            return snap if keep_built else None
    prune(cache_dir, keep=KEEP)
    return path


def save(snap: FeatureSnapshot, path: Path, key: str) -> None:
    """Write ``snap`` to directory ``path`` atomically (a temporary directory renamed)."""
    buffers: list[pickle.PickleBuffer] = []
    body = pickle.dumps(snap, protocol=5, buffer_callback=buffers.append)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.mkdir()
    try:
        layout = []
        with open(tmp / "arrays.bin", "wb") as out:
            for buf in buffers:
                raw = buf.raw()
                pad = -out.tell() % _ALIGN
                out.write(b"\0" * pad)
                layout.append([out.tell(), raw.nbytes])
                out.write(raw)
            out.flush()
            os.fsync(out.fileno())
        (tmp / "index.pkl").write_bytes(body)
        meta = {
            "format": FORMAT,
            "key": key,
            "pickle_sha256": hashlib.sha256(body).hexdigest(),
            "buffers": layout,
            "created": time.time(),
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            tmp.rename(path)
        except OSError:
            if not (path / "meta.json").is_file():
                raise  # not a concurrent writer's finished copy
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _checked(path: Path, key: str) -> tuple[bytes, list[tuple[int, int]]]:
    """The pickle and the arrays' layout of a saved snapshot that passes every check."""
    meta = json.loads((path / "meta.json").read_text())
    body = (path / "index.pkl").read_bytes()
    if meta.get("format") != FORMAT or meta.get("key") != key:
        raise ValueError(f"written as {meta.get('format')}/{meta.get('key')}")
    if hashlib.sha256(body).hexdigest() != meta.get("pickle_sha256"):
        raise ValueError("index.pkl does not match its checksum")
    size = (path / "arrays.bin").stat().st_size
    spans = [(int(o), int(n)) for o, n in meta["buffers"]]
    if any(o < 0 or n < 0 or o + n > size for o, n in spans):
        raise ValueError(f"arrays.bin ({size} bytes) is shorter than its layout")
    return body, spans


_DAMAGE = (OSError, ValueError, KeyError, TypeError, pickle.UnpicklingError)


def _intact(path: Path, key: str) -> bool:
    if not (path / "meta.json").is_file():
        return False
    try:
        _checked(path, key)
        return True
    except _DAMAGE as exc:
        log.warning("ignoring the saved feature snapshot %s: %s", path, exc)
        return False


def load(path: Path, key: str) -> FeatureSnapshot | None:
    """The snapshot saved in ``path`` with its arrays memory-mapped read-only; None when there
    is none or it fails a check (logged)."""
    if not (path / "meta.json").is_file():
        return None
    try:
        body, spans = _checked(path, key)
        with open(path / "arrays.bin", "rb") as f:
            size = os.fstat(f.fileno()).st_size
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        view = memoryview(mapped)
        if any(o + n > size for o, n in spans):
            raise ValueError(f"arrays.bin ({size} bytes) is shorter than its layout")
        snap = pickle.loads(body, buffers=[view[o : o + n] for o, n in spans])  # noqa: S301
        if not isinstance(snap, FeatureSnapshot):
            raise ValueError(f"holds a {type(snap).__name__}")
        return snap
    except _DAMAGE as exc:
        log.warning("ignoring the saved feature snapshot %s: %s", path, exc)
        return None


def prune(cache_dir: Path, keep: int = KEEP) -> list[Path]:
    """Delete all but the ``keep`` newest saved snapshots (a process that maps a deleted one
    keeps its pages until it lets go).  Returns what was deleted."""
    saved = sorted(
        (p for p in cache_dir.iterdir() if p.is_dir() and (p / "meta.json").is_file()),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    gone = saved[keep:]
    for path in gone:
        shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(OSError):
            (cache_dir / f"{path.name}.lock").unlink()
    return gone


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path``: one process builds a snapshot, the others wait."""
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
