"""Model loading and atomic reload for one worker.

Models come from the MLflow registry alias ``champion`` (``recsys.pipeline.loader``).  A
reload builds the new ``Recommender`` completely before swapping one reference, so a request
sees either the old models or the new ones, never a mix; a model that fails to load is refused
and the old one keeps serving.  A successful reload in one gunicorn worker writes
``<home>/serving/RELOAD`` and the other workers' watchers reload too.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recsys.core import rules
from recsys.core.config import Settings
from recsys.core.errors import MissingDependencyError, ModelNotReadyError
from recsys.pipeline import loader
from serving.errors import ReloadRefusedError
from serving.memory import cap_store_cache, collection_turn, release_memory, settle_heap
from serving.metrics import Metrics
from serving.modelcheck import ModelRefusedError, ModelVerifier
from serving.priority import lower_thread_priority
from serving.snapshot import (
    SnapshotInfo,
    SnapshotReader,
    close_published,
    open_published,
    serving_dir,
)
from training import registry

log = logging.getLogger(__name__)

# (settings, connection) -> Recommender; called with ``ranker=(ref, directory)`` when a
# ModelVerifier chose the ranker version.
Loader = Callable[..., Any]
RELOAD_SIGNAL = "RELOAD"
COLLECTION_LOCK = "collection.lock"  # the workers' turns to pause for garbage collection
_RETRY_UNREADY_SECONDS = 30.0
_RETIRE_AFTER_SECONDS = 120.0


def registry_exists(settings: Settings) -> bool:
    """False when the default local MLflow store was never created (so no model is registered).

    Saves the writer and the watchers from importing MLflow and creating an empty store.
    """
    uri = registry.tracking_uri(settings)
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).is_file()
    return True


def load_recommender(
    settings: Settings,
    con: Any,
    *,
    ranker: Any | None = None,
    alias: str = rules.CHAMPION_ALIAS,
) -> Any:
    """The production loader: ``recsys.pipeline.loader.load_recommender`` (on ``ranker``, else
    the version behind ``alias``)."""
    try:
        return loader.load_recommender(settings, con, ranker=ranker, alias=alias)
    except MissingDependencyError as exc:
        raise ModelNotReadyError(f"the recommendation pipeline cannot run: {exc}") from exc


class ModelHolder:
    """The ``Recommender`` a worker serves, replaced atomically on reload.

    A recommender keeps the connection it was loaded on (its generators read the store), so
    each load opens a read-only connection of its own to the snapshot; a replaced
    recommender's connection is closed once in-flight requests are surely done.
    """

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        loader: Loader = load_recommender,
        *,
        threads: int | None = None,
        verifier: ModelVerifier | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.loader = loader
        self.threads = threads
        self.verifier = verifier
        # set while a refused champion is replaced by the last verified version
        self.fallback: dict[str, Any] | None = None
        self.recommender: Any | None = None
        # the interleaving challenger (serving.interleave_challenger) beside the champion:
        # requests read the pair through one reference, so they never mix two loads
        self.pair: tuple[Any | None, Any | None] = (None, None)
        # the challenger version last tried (loaded or refused): the watcher reloads on change
        self.challenger_tried: str | None = None
        self.error: str | None = "models not loaded yet"
        self.loaded_at: float | None = None
        self.snapshot_path: str | None = None
        self.snapshot_delta: str | None = None  # the delta the models were built with
        self._con: Any | None = None
        self._retired: list[tuple[float, Any, str, str | None]] = []
        self._lock = threading.Lock()

    @property
    def model_versions(self) -> dict[str, str]:
        rec = self.recommender
        return dict(rec.model_versions) if rec is not None else {}

    def require(self) -> Any:
        """The current recommender, or ModelNotReadyError (503) saying why there is none."""
        return self.require_pair()[0]

    def require_pair(self) -> tuple[Any, Any | None]:
        """(champion recommender, challenger recommender or None when not interleaving);
        ModelNotReadyError (503) when no models are loaded."""
        rec, challenger = self.pair
        if rec is None:
            raise ModelNotReadyError(
                f"no models are loaded ({self.error}); train them (`recsys train text`, "
                "`recsys score`, `recsys train ranker`) and POST /v1/admin/reload"
            )
        return rec, challenger

    @property
    def challenger_versions(self) -> dict[str, str]:
        challenger = self.pair[1]
        return dict(challenger.model_versions) if challenger is not None else {}

    def load(
        self, snapshot_path: str, *, delta: str | None = None, fallback: bool = True
    ) -> dict[str, Any]:
        """Load the champion models on the snapshot (base ``snapshot_path`` and its ``delta``);
        on failure keep what serves and raise 409.

        With a verifier, a champion that fails verification is replaced by the last verified
        version when ``fallback`` (boot, snapshot refreshes) and refused otherwise (a reload).
        """
        with self._lock:
            previous = self.model_versions
            started = time.perf_counter()
            con = None
            try:
                ranker, note = self._choose_ranker(fallback)
                con = open_published(snapshot_path, delta, threads=self.threads)
                if ranker is None:
                    new = self.loader(self.settings, con)
                else:
                    new = self.loader(self.settings, con, ranker=ranker)
                challenger = self._load_challenger(con, new)
                cap_store_cache(con, self.settings.serving.store_cache_mb)
            except Exception as exc:
                if con is not None:
                    close_published(con, snapshot_path, delta)
                message = f"{type(exc).__name__}: {exc}"
                if self.recommender is None:
                    repeated, self.error = self.error == message, message
                else:
                    repeated = False
                log.log(
                    logging.DEBUG if repeated else logging.WARNING,
                    "model load refused (%s); still serving %s",
                    message,
                    previous or "nothing",
                )
                raise ReloadRefusedError(
                    f"the new models failed to load and were refused ({message}); "
                    f"still serving {previous or 'no models'}"
                ) from exc
            self.pair = (new, challenger)  # the atomic swap
            self.recommender = new
            if self._con is not None and self.snapshot_path is not None:
                self._retired.append(
                    (time.monotonic(), self._con, self.snapshot_path, self.snapshot_delta)
                )
            self._con, self.snapshot_path, self.snapshot_delta = con, snapshot_path, delta
            self.error = None
            self.fallback = note
            self.loaded_at = time.time()
        versions = self.model_versions
        self.metrics.set_model_versions(versions)
        # the replaced recommender's frames, once requests let go of them; then no full
        # collection rescans the models during requests
        frozen = self._collect(release=bool(previous))
        log.info(
            "serving models %s (loaded in %.2f s; %d objects frozen out of the collector)",
            versions,
            time.perf_counter() - started,
            frozen,
        )
        return {"model_versions": versions, "previous_model_versions": previous}

    def _choose_ranker(self, fallback: bool) -> tuple[Any | None, dict[str, Any] | None]:
        """(ranker to load or None for the loader's own choice, fallback note or None)."""
        if self.verifier is None:
            return None, None
        if not registry_exists(self.settings):  # workers must not create an empty store at once
            raise ModelNotReadyError("no model is registered yet (no MLflow store in this home)")
        try:
            return self.verifier.champion(), None
        except ModelRefusedError as exc:
            if not fallback:
                raise
            serving = self.model_versions.get(rules.RANKER_MODEL_NAME)
            alt = self.verifier.fallback(exclude=exc.version, prefer=serving)
            if alt is None:
                raise
            note = {
                "refused": {"name": exc.name, "version": exc.version, "reason": exc.reason},
                "serving": {"name": alt[0].name, "version": alt[0].version},
            }
            log.warning(
                "falling back to the last verified %s version %s: champion version %s was "
                "refused (%s)",
                exc.name,
                alt[0].version,
                exc.version,
                exc.reason,
            )
            return alt, note

    def _load_challenger(self, con: Any, champion: Any) -> Any | None:
        """The ranker behind ``serving.interleave_challenger`` on ``con``, or None (off, no
        version carries the alias, or it failed: logged, the champion serves alone)."""
        alias = self.settings.serving.interleave_challenger
        if not alias:
            self.challenger_tried = None
            return None
        try:
            if self.verifier is None:  # an injected loader resolves the alias itself
                challenger = self.loader(self.settings, con, alias=alias)
                self.challenger_tried = dict(challenger.model_versions).get(rules.RANKER_MODEL_NAME)
                return challenger
            ref = registry.aliased(self.settings, rules.RANKER_MODEL_NAME, alias)
            self.challenger_tried = ref.version if ref is not None else None
            if ref is None:
                log.info("no ranker version carries the alias %r; not interleaving", alias)
                return None
            if ref.version == dict(champion.model_versions).get(rules.RANKER_MODEL_NAME):
                log.info("the %s is the champion (v%s): an A/A interleaving", alias, ref.version)
                return champion
            directory = registry.cached_download(self.settings, ref)
            self.verifier.verify(ref, directory)
            challenger = self.loader(self.settings, con, ranker=(ref, directory))
        except Exception as exc:
            log.warning(
                "the %s ranker was not loaded (%s: %s); serving the champion alone",
                alias,
                type(exc).__name__,
                exc,
            )
            return None
        log.info("interleaving the champion with the %s %s", alias, challenger.model_versions)
        return challenger

    def close_retired(self, *, everything: bool = False) -> None:
        """Close replaced recommenders' connections (all of them, and the current one, at exit)."""
        with self._lock:
            now = time.monotonic()
            keep = []
            for since, con, path, delta in self._retired:
                if everything or now - since >= _RETIRE_AFTER_SECONDS:
                    close_published(con, path, delta)
                else:
                    keep.append((since, con, path, delta))
            closed = len(self._retired) - len(keep)
            self._retired = keep
            if everything and self._con is not None and self.snapshot_path is not None:
                close_published(self._con, self.snapshot_path, self.snapshot_delta)
                self.recommender, self._con = None, None
                self.pair = (None, None)
        if closed:
            self._collect(release=True)  # the replaced models' heap goes back to the system

    def _collect(self, *, release: bool) -> int:
        """``release_memory`` (when ``release``) and ``settle_heap``, in this home's collection
        turn: the workers pause for them one after another (``serving.memory``).  Only a
        worker that was serving lingers in the turn after its pause (its queued requests); one
        still starting accepts nothing yet."""
        linger = 0.5 if release else 0.0
        with collection_turn(serving_dir(self.settings) / COLLECTION_LOCK, linger_s=linger):
            if release:
                release_memory()
            return settle_heap()


class Watcher:
    """A worker's background thread: follows snapshots, reload signals, optionally the registry.

    Model loading happens here, never on a request thread, so a slow load does not stall requests.
    """

    def __init__(
        self,
        settings: Settings,
        snapshots: SnapshotReader,
        models: ModelHolder,
        *,
        interval: float = 0.5,
    ) -> None:
        self.settings = settings
        self.snapshots = snapshots
        self.models = models
        self.interval = interval
        self.signal_path = serving_dir(settings) / RELOAD_SIGNAL
        self._seen_signal = _read_signal(self.signal_path)
        self._last_poll = time.monotonic()
        self._last_retry = self._last_load = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="recsys-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def signal_reload(self) -> None:
        """Tell the other workers to reload (called after a successful reload here)."""
        payload = json.dumps(
            {"pid": os.getpid(), "ns": time.time_ns(), "versions": self.models.model_versions}
        )
        tmp = self.signal_path.with_name(f".{RELOAD_SIGNAL}.{os.getpid()}.tmp")
        tmp.write_text(payload, encoding="utf-8")
        os.replace(tmp, self.signal_path)
        self._seen_signal = payload

    def tick(self) -> None:
        """One round of checks (public so tests can drive it without the thread)."""
        had_snapshot = self.snapshots.info is not None
        switched = self.snapshots.refresh()
        info = self.snapshots.info
        if info is None:
            return
        if switched:
            self.models.metrics.snapshot_published.set(info.published_at)
        self.models.close_retired()
        now = time.monotonic()
        signal = _read_signal(self.signal_path)
        reason = self._reload_reason(now, signal, info, first=switched and not had_snapshot)
        self._seen_signal = signal
        if reason is None:
            return
        log.debug("loading models: %s", reason)
        try:
            self.models.load(info.path, delta=info.delta)
        except ReloadRefusedError:
            pass  # logged by load(); the old models keep serving
        finally:
            self._last_load = time.monotonic()  # the refresh interval counts from the end

    def _reload_reason(
        self, now: float, signal: str | None, info: SnapshotInfo, *, first: bool
    ) -> str | None:
        if self.models.recommender is None:
            if first or now - self._last_retry >= _RETRY_UNREADY_SECONDS:
                self._last_retry = now
                return "models not loaded yet"
            return None
        if signal != self._seen_signal:
            return "reload signalled by another worker"
        if self._poll_due(now) and self._champions_changed():
            return "a new champion was registered"
        # the models' in-memory features and clock come from the events they were built on, so
        # a new delta (accepted events) counts too - at most every store_refresh_seconds
        refresh = self.settings.serving.store_refresh_seconds
        built_on = (self.models.snapshot_path, self.models.snapshot_delta)
        if built_on != (info.path, info.delta) and now - self._last_load >= refresh:
            return "a newer store snapshot"
        return None

    def _poll_due(self, now: float) -> bool:
        every = self.settings.serving.reload_poll_seconds
        if every <= 0 or now - self._last_poll < every:
            return False
        self._last_poll = now
        return True

    def _champions_changed(self) -> bool:

        if not registry_exists(self.settings):
            return False
        # The ranker names the text-model version it was trained with, so only a new ranker
        # champion changes what load_recommender would build.
        alias = self.settings.serving.interleave_challenger
        if alias:
            challenger = registry.aliased(self.settings, rules.RANKER_MODEL_NAME, alias)
            if (challenger.version if challenger else None) != self.models.challenger_tried:
                return True
        ref = registry.champion(self.settings, rules.RANKER_MODEL_NAME)
        if ref is None:
            return False
        refused = (self.models.fallback or {}).get("refused", {})
        if refused.get("version") == ref.version:
            return False  # already refused; serving the fallback until another is promoted
        return self.models.model_versions.get(ref.name) != ref.version

    def _run(self) -> None:
        lower_thread_priority()  # reloads yield the CPU to request threads (serving/priority.py)
        while not self._stop.wait(self.interval):
            try:
                self.tick()
            except Exception:
                log.exception("watcher tick failed")


def _read_signal(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
