"""The single store writer: event log -> DuckDB -> live user vectors -> read-only snapshot.

``recsys serve`` runs one ``EventWriter`` next to gunicorn (in the supervising process).  Every
``serving.event_flush_seconds`` it:

1. reads the events logged since its checkpoint (serving/eventlog.py);
2. opens the main store read-write (waiting while a batch job or retraining holds it - the events
   stay safe in the log meanwhile), ingests them with ``ingest_event_records`` (idempotent by
   event id) and commits;
3. refreshes the live text vectors of the users whose history changed, when a text model is
   registered (no full rescoring);
4. publishes a snapshot for the API workers (serving/snapshot.py) and closes the store;
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feature_store.db import connect
from feature_store.ingest import ingest_event_records
from recsys.core.config import Settings
from recsys.core.errors import RecsysError
from recsys.core.rules import LIVE_SCOPE, TEXT_MODEL_NAME
from serving.eventlog import EventLog
from serving.models import registry_exists
from serving.snapshot import SnapshotInfo, publish_snapshot, read_pointer, serving_dir

log = logging.getLogger(__name__)

MAX_EVENTS_PER_FLUSH = 50_000


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


@contextlib.contextmanager
def writer_lock(settings: Settings) -> Iterator[None]:
    """Hold ``<home>/serving/writer.lock`` so that only one writer runs per home."""
    path = serving_dir(settings) / "writer.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
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
        self._text_model: tuple[str, Path] | None = None

    def flush(self) -> FlushResult:
        """One pass; publishes a snapshot when events arrived or the store changed on disk."""
        pending = self.event_log.pending(MAX_EVENTS_PER_FLUSH)
        if not pending and not self._store_changed():
            return FlushResult()
        # resolved before taking the store: the first lookup imports MLflow (seconds)
        text_model = self._text_model_safely() if pending and self.refresh_embeddings else None
        started = time.perf_counter()
        con = connect(self.settings.db_path)  # waits for a batch job that holds the store
        try:
            accepted = duplicate = rejected = refreshed = 0
            if pending:
                result = ingest_event_records(con, [e.record for e in pending], source="api")
                counts = {"accepted": 0, "duplicate": 0, "rejected": 0}
                for status in result.statuses:
                    counts[status.status] += 1
                accepted, duplicate, rejected = (
                    counts["accepted"],
                    counts["duplicate"],
                    counts["rejected"],
                )
                changed = sorted(
                    {
                        str(pending[s.index].record["user_id"])
                        for s in result.statuses
                        if s.status == "accepted"
                    }
                )
                refreshed = self._refresh_users(con, changed, text_model)
            seq = pending[-1].seq if pending else self.event_log.checkpoint()
            info = publish_snapshot(con, self.settings, log_seq=seq)
        finally:
            con.close()
        self._store_stat = _stat(self.settings.db_path)
        if pending:
            self.event_log.mark_ingested(pending[-1].seq)
            log.info(
                "flushed %d logged events: %d new, %d duplicate, %d rejected; "
                "%d user vectors refreshed; %.2f s with the snapshot",
                len(pending),
                accepted,
                duplicate,
                rejected,
                refreshed,
                time.perf_counter() - started,
            )
        return FlushResult(len(pending), accepted, duplicate, rejected, refreshed, info)

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
            busy = self.flush_safely()
            if not busy:
                stop.wait(wait)

    def flush_safely(self) -> bool:
        """Flush, logging failures (events stay in the log); True if a full batch was read."""
        try:
            return self.flush().events_read >= MAX_EVENTS_PER_FLUSH
        except RecsysError as exc:
            log.warning("event flush postponed: %s", exc)
        except Exception:
            log.exception("event flush failed; the events stay in the log and are retried")
        return False

    def _store_changed(self) -> bool:
        if read_pointer(self.settings) is None:
            return True
        return self._store_stat is None or self._store_stat != _stat(self.settings.db_path)

    def _refresh_users(
        self, con: Any, user_ids: Sequence[str], model: tuple[str, Path] | None
    ) -> int:
        """Update the live text vectors of ``user_ids`` with the champion text model."""
        if not user_ids or model is None:
            return 0
        version, model_dir = model
        try:
            from training.text.scoring import refresh_user_embeddings

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
        from training import registry

        if not registry_exists(self.settings):
            return None
        ref = registry.champion(self.settings, TEXT_MODEL_NAME)
        if ref is None:
            return None
        if self._text_model is None or self._text_model[0] != ref.version:
            self._text_model = (ref.version, registry.cached_download(self.settings, ref))
        return self._text_model


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size
