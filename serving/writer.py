"""The single store writer: event log -> DuckDB -> live user vectors -> read-only snapshot.

``recsys serve`` runs one ``EventWriter`` next to gunicorn (in the supervising process).  Every
``serving.event_flush_seconds`` it:

1. reads the events logged since its checkpoint (serving/eventlog.py);
2. opens the main store read-write (waiting while a batch job or retraining holds it - the events
   stay safe in the log meanwhile), ingests them with ``ingest_event_records`` (idempotent by
   event id) and commits;
3. refreshes the live text vectors of the users whose history changed, when a text model is
   registered (no full rescoring);
4. publishes for the API workers (serving/snapshot.py) - a small delta with what changed since
   the last full snapshot, or now and then a full snapshot - and closes the store;
5. only then moves the log checkpoint, so a crash anywhere before re-delivers the same events to
   an idempotent ingest: every acknowledged event lands exactly once.

An event is visible to features at most one flush interval plus one flush (ingest + snapshot
copy) after it was acknowledged; docs/serving.md has measured figures.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import duckdb

from feature_store.batches import RecordStatus
from feature_store.db import connect
from feature_store.features_cache import prepare as prepare_features
from feature_store.ingest import RECORD_ERRORS, ingest_event_records, quarantine_event_records
from feature_store.interleaving import write_interleaved
from feature_store.validation import printable
from recsys.core.config import Settings
from recsys.core.errors import RecsysError
from recsys.core.rules import LIVE_SCOPE, TEXT_MODEL_NAME
from serving.compat import refresh_user_embeddings
from serving.eventlog import EventLog, LoggedEvent
from serving.heartbeat import WriterStatus
from serving.models import registry_exists
from serving.priority import in_background
from serving.snapshot import (
    SnapshotInfo,
    SnapshotPublisher,
    close_snapshot,
    open_snapshot,
    publish_snapshot,
    read_pointer,
    serving_dir,
)
from training import registry

log = logging.getLogger(__name__)

MAX_EVENTS_PER_FLUSH = 50_000
FLUSH_CHUNK = 5_000  # events per store transaction; a stop request waits for one chunk at most


class WriterBusyError(RecsysError):
    """Another writer process already serves this home."""

    code = "writer_busy"
    http_status = 503


@dataclass(frozen=True)
class FlushResult:
    """What one flush did."""

    events_read: int = 0
    accepted: int = 0
    duplicate: int = 0
    rejected: int = 0
    users_refreshed: int = 0
    snapshot: SnapshotInfo | None = None
    lists_stored: int = 0  # interleaved lists moved into the store


@contextlib.contextmanager
def writer_lock(settings: Settings, wait_seconds: float = 0.0) -> Iterator[None]:
    """Hold ``<home>/serving/writer.lock`` so that only one writer runs per home.

    ``wait_seconds``: how long to wait for a writer that is still stopping (a restart).
    """
    path = serving_dir(settings) / "writer.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_seconds
    with open(path, "a+", encoding="utf-8") as fh:
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError as exc:
                if time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                fh.seek(0)
                raise WriterBusyError(
                    f"another event writer (pid {fh.read().strip() or '?'}) is running for home "
                    f"{settings.home}; stop it or use another RECSYS_HOME"
                ) from exc
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def ensure_snapshot(settings: Settings) -> None:
    """Publish the store as it is (no log drain) when no snapshot exists yet, so that API
    workers boot with one; the writer ingests the log afterwards, while they serve."""
    if read_pointer(settings) is not None:
        return
    try:
        with writer_lock(settings):
            con = connect(settings.db_path)
            try:
                checkpoint = EventLog(settings.event_log_dir).checkpoint()
                publish_snapshot(con, settings, log_seq=checkpoint)
            finally:
                con.close()
    except RecsysError as exc:
        log.warning("no first snapshot (%s); the workers start unready until the writer runs", exc)


class EventWriter:
    """Moves logged events into the store and publishes snapshots; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        event_log: EventLog | None = None,
        *,
        refresh_embeddings: bool = True,
    ) -> None:
        self.settings = settings
        self.event_log = event_log or EventLog(settings.event_log_dir)
        self.refresh_embeddings = refresh_embeddings
        self._store_stat: tuple[int, int] | None = None
        self.publisher = SnapshotPublisher(settings)
        self._text_model: tuple[str, Path] | None = None
        self.status = WriterStatus()

    def flush(self, stop: threading.Event | None = None) -> FlushResult:
        """One pass; publishes a snapshot when events arrived or the store changed on disk.

        Events are ingested in transactions of ``FLUSH_CHUNK``; ``stop`` (when set) ends the
        pass after the chunk in progress, so shutdown waits for one chunk, not a whole backlog.
        """
        pending = self.event_log.pending(MAX_EVENTS_PER_FLUSH)
        lists = self.event_log.pending_lists(MAX_EVENTS_PER_FLUSH)
        store_changed = self._store_changed()
        if not pending and not lists and not store_changed and not self.publisher.due():
            return FlushResult()
        # resolved before taking the store: the first lookup imports MLflow (seconds)
        text_model = self._text_model_safely() if pending and self.refresh_embeddings else None
        started = time.perf_counter()
        counts = {"accepted": 0, "duplicate": 0, "rejected": 0}
        done: list[LoggedEvent] = []
        refreshed = 0
        users: set[str] = set()  # whose events arrived: their rows go into the next delta
        con = connect(self.settings.db_path)  # waits for a batch job that holds the store
        try:
            for start in range(0, len(pending), FLUSH_CHUNK):
                chunk = pending[start : start + FLUSH_CHUNK]
                statuses = self._ingest_isolating(con, [e.record for e in chunk])
                for status in statuses:
                    counts[status.status] += 1
                changed = sorted(
                    {
                        str(chunk[s.index].record["user_id"])
                        for s in statuses
                        if s.status == "accepted"
                    }
                )
                refreshed += self._refresh_users(con, changed, text_model)
                users.update(changed)
                done.extend(chunk)
                if stop is not None and stop.is_set():
                    break
            stored_lists = _store_lists(con, [record for _, record in lists])
            seq = done[-1].seq if done else self.event_log.checkpoint()
            # what workers read changed: new events, refreshed vectors, a batch job's writes
            news = bool(counts["accepted"] or refreshed or store_changed)
            info = self.publisher.maybe_publish(
                con, log_seq=seq, changed=news, users=users, external=store_changed
            )
        finally:
            con.close()
        self._store_stat = _stat(self.settings.db_path)
        if lists:
            self.event_log.mark_lists_stored(lists[-1][0])
        if done:
            self.event_log.mark_ingested(done[-1].seq)
            log.info(
                "flushed %d logged events: %d new, %d duplicate, %d rejected; "
                "%d user vectors refreshed; %.2f s with the snapshot",
                len(done),
                counts["accepted"],
                counts["duplicate"],
                counts["rejected"],
                refreshed,
                time.perf_counter() - started,
            )
        if info is not None and info.delta is None:
            # on a thread of lower priority: requests share these cores (serving/priority.py)
            in_background(lambda: self._prepare_features(info), name="recsys-features")
        return FlushResult(
            len(done),
            counts["accepted"],
            counts["duplicate"],
            counts["rejected"],
            refreshed,
            info,
            lists_stored=stored_lists,
        )

    def _prepare_features(self, info: SnapshotInfo) -> None:
        """Build a new base snapshot's feature snapshot and interactions once, here, after the
        events are safe: workers that move to the base then map them instead of each building
        their own (about 20 + 12 s of CPU at 1e7 events, in each worker beside its requests).
        Only when a ranker can be served; any failure leaves it to the workers."""
        if not self.settings.serving.share_feature_snapshot or not registry_exists(self.settings):
            return
        started = time.perf_counter()
        try:
            con = open_snapshot(info.path)
        except (OSError, duckdb.Error) as exc:
            log.warning("feature snapshot not prepared for %s: %s", info.path, exc)
            return
        try:
            saved = prepare_features(
                con,
                Path(self.settings.home) / "features",
                events=LIVE_SCOPE.events,
                covisit_window_days=self.settings.ranker.covisit_window_days,
            )
        except (RecsysError, duckdb.Error, OSError) as exc:
            log.warning("feature snapshot not prepared for %s: %s", info.path, exc)
            return
        finally:
            close_snapshot(con, info.path)
        if saved:
            log.info(
                "feature snapshot and interactions for %s ready in %s (%.1f s)",
                Path(info.path).name,
                ", ".join(p.name for p in saved),
                time.perf_counter() - started,
            )

    def _ingest_isolating(self, con: Any, records: list[dict[str, Any]]) -> list[RecordStatus]:
        """Ingest ``records``; a record the store cannot hold is quarantined, the rest land.

        A batch that fails because of its data is split in halves until the failing records
        stand alone; each of those is quarantined with the error as its reason, so one bad event
        never blocks the others.  Store failures (I/O, locks, a full disk) propagate: the events
        stay in the log and the whole pass is retried.
        """
        try:
            return list(ingest_event_records(con, records, source="api").statuses)
        except RECORD_ERRORS as exc:
            if len(records) > 1:
                mid = len(records) // 2
                left = self._ingest_isolating(con, records[:mid])
                right = self._ingest_isolating(con, records[mid:])
                return left + [replace(s, index=s.index + mid) for s in right]
            reason = printable(f"cannot store: {type(exc).__name__}: {exc}")[:500]
            log.error("quarantined logged event %r: %s", printable(records[0]), reason)
            result = quarantine_event_records(con, [(0, records[0], reason)], source="api")
            return list(result.statuses)

    def run(
        self,
        stop: threading.Event,
        *,
        alive: Callable[[], bool] = lambda: True,
        interval: float | None = None,
    ) -> None:
        """Flush every ``interval`` seconds until ``stop`` is set or ``alive()`` is false.

        The caller flushes once more after the API has stopped (``flush_safely``).
        """
        wait = self.settings.serving.event_flush_seconds if interval is None else interval
        log.info("event writer started (flush every %.1f s, log %s)", wait, self.event_log.path)
        while not stop.is_set() and alive():
            busy = self.flush_safely(stop)
            if not busy:
                stop.wait(wait)

    def flush_safely(self, stop: threading.Event | None = None) -> bool:
        """Flush, logging failures (events stay in the log); True if a full batch was read."""
        self.status.flushing_since = time.time()
        try:
            read = self.flush(stop).events_read
            self.status.last_flush_ok_at = time.time()
            self.status.last_error = None
            return read >= MAX_EVENTS_PER_FLUSH
        except RecsysError as exc:
            log.warning("event flush postponed: %s", exc)
            self.status.last_error = str(exc)
        except Exception as exc:
            log.exception("event flush failed; the events stay in the log and are retried")
            self.status.last_error = f"{type(exc).__name__}: {exc}"
        finally:
            self.status.flushing_since = None
        return False

    def _store_changed(self) -> bool:
        pointer = read_pointer(self.settings)
        if pointer is None:
            return True
        stat = _stat(self.settings.db_path)
        if self._store_stat is None and stat is not None and stat[0] / 1e9 < pointer.published_at:
            # published after the store's last write (by `ensure_snapshot` or a previous
            # writer): current, so a restarted writer does not make every worker switch again
            self._store_stat = stat
        return self._store_stat != stat

    def _refresh_users(
        self, con: Any, user_ids: Sequence[str], model: tuple[str, Path] | None
    ) -> int:
        """Update the live text vectors of ``user_ids`` with the champion text model."""
        if not user_ids or model is None:
            return 0
        version, model_dir = model
        try:
            return int(
                refresh_user_embeddings(
                    con, self.settings, model_dir, version, list(user_ids), scope=LIVE_SCOPE.name
                )
            )
        except Exception:
            log.exception(
                "refreshing %d user vectors failed; they update with the next refresh "
                "or `recsys score`",
                len(user_ids),
            )
            return 0

    def _text_model_safely(self) -> tuple[str, Path] | None:
        try:
            return self._champion_text_model()
        except Exception:
            log.exception("cannot resolve the champion text model; user vectors are not refreshed")
            return None

    def _champion_text_model(self) -> tuple[str, Path] | None:
        """(version, local directory) of the text-scorer champion, downloaded once per version."""
        if not registry_exists(self.settings):
            return None
        ref = registry.champion(self.settings, TEXT_MODEL_NAME)
        if ref is None:
            return None
        if self._text_model is None or self._text_model[0] != ref.version:
            self._text_model = (ref.version, registry.cached_download(self.settings, ref))
        return self._text_model


def _store_lists(con: Any, lists: list[dict[str, Any]]) -> int:
    """Move interleaved lists into the store; a malformed one is logged and dropped."""
    if not lists:
        return 0
    try:
        return write_interleaved(con, lists)
    except (KeyError, TypeError, ValueError):
        stored = 0
        for record in lists:
            try:
                stored += write_interleaved(con, [record])
            except (KeyError, TypeError, ValueError) as exc:
                log.error("dropped a malformed interleaved list %r: %s", printable(record), exc)
        return stored


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size
