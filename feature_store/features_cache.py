"""Feature snapshots and interactions built once per store content, memory-mapped by every process.

Each serving worker needs the whole store's ``FeatureSnapshot`` (1.1 GB of arrays at 1e7
events, about 20 s to build) and its ``Interactions`` (the seen and positive matrices and the
positive-event timeline every candidate generator reads, 12 s from DuckDB).  ``shared_snapshot``
and ``shared_interactions`` name each by what it is built from -- a hash of the events and
items, the task's SQL rules, the co-visitation window and the code that builds it -- and keep it
under ``<cache_dir>/<kind>-<key>/``: the first process to need it builds and saves it (others
wait on a file lock, then load); later ones map the saved arrays read-only, so the operating
system holds one copy in its page cache for every worker, and a worker's private memory is only
the Python objects around them.  ``prepare`` builds both without loading them (the store
writer, for a store snapshot it just published).

The file format is pickle protocol 5 with the arrays out of band: ``index.pkl`` holds the
object graph and ``arrays.bin`` every array's bytes (64-byte aligned), which unpickling maps as
read-only views.  ``meta.json`` records the key, the pickle's checksum and the arrays' layout;
a directory that fails any check is ignored and rebuilt.  Pickle runs code on load, so only
directories this module wrote (inside the service's home) are read.  Any failure to save (a
full or read-only disk) leaves the process with the object it built in memory.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import mmap
import os
import pickle
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple, TypeVar, cast

import duckdb

from feature_store import (
    features,
    features_snapshot,
    features_sql,
    features_timeline,
    ids,
    interactions,
    rules_sql,
)
from feature_store.features import FeatureSnapshot, resolve_event_relation
from feature_store.interactions import Interactions

log = logging.getLogger(__name__)

FORMAT = "recsys-feature-snapshot/1"
KEEP = 3  # saved copies kept per kind (the newest by modification time)
_ALIGN = 64
STALE_TMP_SECONDS = 6 * 3600.0
_FEATURES_CODE = (features, features_snapshot, features_sql, features_timeline, ids)
_INTERACTIONS_CODE = (interactions, rules_sql, ids)
T = TypeVar("T")


def content_key(
    con: duckdb.DuckDBPyConnection,
    events: str,
    kind: str,
    code: tuple[ModuleType, ...],
    extra: str = "",
) -> str:
    """``<kind>-<hash>`` of what an object of ``events`` is built from: every row of the
    relation and of ``items``, the store's task macros, the source of the modules that build
    it and ``extra`` (about 1 s at 1e7 events)."""
    relation = resolve_event_relation(con, events)  # the rows, whatever the view is called
    h = hashlib.sha256(f"{FORMAT}|{kind}".encode())
    for module in code:
        h.update(Path(str(module.__file__)).read_bytes())
    h.update(f"{events}|{extra}".encode())
    for sql in (
        f"SELECT count(*), sum(hash(e)) FROM {relation} e",
        "SELECT count(*), sum(hash(i)) FROM items i",
        "SELECT function_name, macro_definition FROM duckdb_functions() "
        "WHERE function_name LIKE 'recsys_%' ORDER BY ALL",
    ):
        h.update(repr(con.execute(sql).fetchall()).encode())
    return f"{kind}-{h.hexdigest()[:32]}"


def snapshot_key(con: duckdb.DuckDBPyConnection, events: str, covisit_window_days: float) -> str:
    """The saved name of the feature snapshot of ``events`` with this window."""
    return content_key(con, events, "features", _FEATURES_CODE, repr(float(covisit_window_days)))


def interactions_key(con: duckdb.DuckDBPyConnection, events: str) -> str:
    """The saved name of the ``Interactions`` of ``events``."""
    return content_key(con, events, "interactions", _INTERACTIONS_CODE)


class _Job(NamedTuple):
    """One shared object: its saved name (hashed once), how to build it, its type."""

    key: Callable[[], str]
    build: Callable[[], Any]
    kind: type


def _jobs(
    con: duckdb.DuckDBPyConnection, events: str, covisit_window_days: float
) -> dict[str, _Job]:
    return {
        "interactions": _Job(
            functools.cache(lambda: interactions_key(con, events)),
            lambda: Interactions.from_store(con, events).with_timelines(),
            Interactions,
        ),
        "features": _Job(
            functools.cache(lambda: snapshot_key(con, events, covisit_window_days)),
            lambda: FeatureSnapshot.build(
                con, events=events, covisit_window_days=covisit_window_days
            ),
            FeatureSnapshot,
        ),
    }


def shared_snapshot(
    con: duckdb.DuckDBPyConnection,
    cache_dir: Path,
    *,
    events: str,
    covisit_window_days: float,
) -> FeatureSnapshot:
    """The snapshot of ``events`` from ``cache_dir`` (memory-mapped), built and saved there
    when no process has yet; built in memory when the cache cannot be used."""
    job = _jobs(con, events, covisit_window_days)["features"]
    return cast(FeatureSnapshot, _shared(cache_dir, *job))


def shared_interactions(
    con: duckdb.DuckDBPyConnection, cache_dir: Path, *, events: str
) -> Interactions:
    """``Interactions.from_store(con, events)`` through the same cache: its matrices and
    timelines memory-mapped, its id dictionaries rebuilt per process, ``con`` attached."""
    job = _jobs(con, events, 0.0)["interactions"]  # the window is not part of interactions
    data = cast(Interactions, _shared(cache_dir, *job))
    data.con = con
    return data


def prepare(
    con: duckdb.DuckDBPyConnection, cache_dir: Path, *, events: str, covisit_window_days: float
) -> list[Path]:
    """Build and save the feature snapshot and the interactions of ``events`` unless saved
    already, without mapping them here (the store writer does this for a new store snapshot,
    so that workers only map them).  Returns where they are saved (none when the cache cannot
    be used; logged)."""
    jobs = _jobs(con, events, covisit_window_days)
    saved = [
        _cached(cache_dir, jobs[name].key, jobs[name].build, keep_built=False)
        for name in ("features", "interactions")
    ]
    return [p for p in saved if isinstance(p, Path)]


def shared_state(
    con: duckdb.DuckDBPyConnection, cache_dir: Path, *, events: str, covisit_window_days: float
) -> tuple[Interactions, FeatureSnapshot]:
    """``shared_interactions`` and ``shared_snapshot`` together, taking first whichever no other
    process is building: workers that start together build one each, side by side, instead of
    one building both while the others wait (58.6 s to ready at 1e7 events)."""
    jobs = _jobs(con, events, covisit_window_days)
    done: dict[str, Any] = {}
    for wait in (False, True):  # first what nobody is building, then wait for the rest
        for name, job in jobs.items():
            if name not in done:
                got = _shared(cache_dir, *job, wait=wait)
                if got is not _BUSY:
                    done[name] = got
    data = cast(Interactions, done["interactions"])
    data.con = con
    return data, cast(FeatureSnapshot, done["features"])


_BUSY = object()  # another process holds the lock (``wait=False``)


def _shared(
    cache_dir: Path,
    key: Callable[[], str],
    build: Callable[[], T],
    kind: type[T],
    *,
    wait: bool = True,
) -> Any:
    """The saved object mapped (built and saved first when missing), or ``_BUSY``."""
    started = time.perf_counter()
    found = _cached(cache_dir, key, build, keep_built=True, wait=wait)
    if found is _BUSY:
        return _BUSY
    if found is None:
        return build()
    if not isinstance(found, Path):
        return cast(T, found)
    obj = load(found, found.name, kind)
    if obj is None:  # deleted or damaged between saving and mapping: build our own
        return build()
    log.info(
        "%s mapped from %s (%.2f s in all)", kind.__name__, found, time.perf_counter() - started
    )
    return obj


def _cached(
    cache_dir: Path,
    key_of: Callable[[], str],
    build: Callable[[], Any],
    *,
    keep_built: bool,
    wait: bool = True,
) -> Any:
    """Where the object is saved (built now when missing or damaged), or -- when saving
    failed -- the object built in memory if ``keep_built``; None: no cache (logged);
    ``_BUSY``: another process holds the lock and ``wait`` is false."""
    try:
        key = key_of()
        cache_dir.mkdir(parents=True, exist_ok=True)
    except (OSError, duckdb.Error) as exc:
        log.warning("feature snapshot cache unavailable (%s); building in memory", exc)
        return None
    path = cache_dir / key
    with _locked(cache_dir / f"{key}.lock", wait=wait) as held:
        if not held:
            return _BUSY
        if _intact(path, key):
            return path
        shutil.rmtree(path, ignore_errors=True)  # a damaged copy (logged), if any
        obj = build()
        try:
            save(obj, path, key)
        except OSError as exc:
            log.warning("could not save the feature snapshot to %s (%s); kept in memory", path, exc)
            return obj if keep_built else None
    prune(cache_dir, keep=KEEP)
    return path


def save(obj: object, path: Path, key: str) -> None:
    """Write ``obj`` to directory ``path`` atomically (a temporary directory renamed)."""
    buffers: list[pickle.PickleBuffer] = []
    body = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
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


def load(path: Path, key: str, kind: type[T] = FeatureSnapshot) -> T | None:  # type: ignore[assignment]
    """The ``kind`` object saved in ``path`` with its arrays memory-mapped read-only; None when
    there is none or it fails a check (logged)."""
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
        obj = pickle.loads(body, buffers=[view[o : o + n] for o, n in spans])  # noqa: S301
        if not isinstance(obj, kind):
            raise ValueError(f"holds a {type(obj).__name__}, not a {kind.__name__}")
        return obj
    except _DAMAGE as exc:
        log.warning("ignoring the saved feature snapshot %s: %s", path, exc)
        return None


def prune(cache_dir: Path, keep: int = KEEP) -> list[Path]:
    """Delete all but the ``keep`` newest saved copies of each kind (a process that maps a
    deleted one keeps its pages until it lets go) and temporary directories older than
    ``STALE_TMP_SECONDS``.  Returns what was deleted."""
    saved = sorted(
        (p for p in cache_dir.iterdir() if p.is_dir() and (p / "meta.json").is_file()),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    by_kind: dict[str, list[Path]] = {}
    for path in saved:
        by_kind.setdefault(path.name.split("-")[0] if "-" in path.name else "", []).append(path)
    gone = [path for paths in by_kind.values() for path in paths[keep:]]
    # and what a process killed while saving left (a save takes seconds to minutes)
    stale = time.time() - STALE_TMP_SECONDS
    gone += [p for p in cache_dir.glob(".*.tmp") if p.is_dir() and p.stat().st_mtime < stale]
    for path in gone:
        shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(OSError):
            (cache_dir / f"{path.name}.lock").unlink()
    return gone


@contextlib.contextmanager
def _locked(path: Path, *, wait: bool = True) -> Iterator[bool]:
    """An exclusive ``flock`` on ``path``: one process builds, the others wait (or, without
    ``wait``, are told False at once)."""
    with open(path, "a+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
