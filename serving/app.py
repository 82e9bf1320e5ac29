"""The Flask application factory.

``create_app(settings)`` builds one worker's app: it opens the newest store snapshot read-only,
loads the champion models into ``app.extensions["recsys"]``, registers the blueprints, the JSON
error handler, metrics, CORS and the body-size limit, and starts the worker's watcher thread
(snapshot switches, reload signals, registry polling).  Nothing is created at import time;
gunicorn calls ``serving.app:create_app()`` once in every worker.
"""

from __future__ import annotations

import logging
import os
import sys

from flask import Flask

from recsys.core.config import Settings, load_settings
from serving import access, admin, api, docs, health, overload
from serving import metrics as metrics_mod
from serving.errors import ReloadRefusedError, register_error_handlers
from serving.eventlog import EventLog
from serving.metrics import Metrics
from serving.modelcheck import ModelVerifier
from serving.models import Loader, ModelHolder, Watcher, load_recommender
from serving.security import init_cors
from serving.snapshot import SnapshotReader
from serving.state import EXTENSION, ServingState, close_cursor

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    loader: Loader | None = None,
    start_watcher: bool = True,
) -> Flask:
    """Build the serving app for ``settings`` (default: resolved from RECSYS_* and the config file).

    ``loader`` replaces ``load_recommender`` (tests); ``start_watcher=False`` leaves snapshot and
    reload checks to explicit ``app.extensions["recsys"].watcher.tick()`` calls.
    """
    settings = settings or load_settings()
    _configure_logging(settings.log_level)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.serving.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]

    metrics = Metrics()
    # DuckDB threads per connection: the machine's cores shared by the gunicorn workers
    threads = max(1, (os.cpu_count() or 1) // max(1, settings.serving.workers))
    snapshots = SnapshotReader(settings, threads=threads)
    # the production loader verifies every ranker version before this process parses it
    verifier = ModelVerifier(settings) if loader is None else None
    models = ModelHolder(
        settings, metrics, loader or load_recommender, threads=threads, verifier=verifier
    )
    state = ServingState(
        settings=settings,
        snapshots=snapshots,
        models=models,
        event_log=EventLog(settings.event_log_dir, strict=False),
        metrics=metrics,
        watcher=Watcher(settings, snapshots, models),
    )
    app.extensions[EXTENSION] = state

    register_error_handlers(app)
    access.init_app(app)  # first: every later hook and error answer has the request id
    metrics_mod.init_app(app, metrics)
    init_cors(app, settings.serving.cors_origins)
    shed = metrics.requests.labels("overloaded", "OTHER", "503")
    overload.init_app(app, settings.serving.queue_deadline_ms, on_shed=shed.inc)
    app.register_blueprint(api.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(docs.bp)
    app.teardown_appcontext(close_cursor)

    _load_initial(state)
    if start_watcher:
        state.watcher.start()
    return app


def _load_initial(state: ServingState) -> None:
    if not state.snapshots.refresh():
        log.warning("no store snapshot published yet; serving starts unready and picks it up later")
        return
    info = state.snapshots.info
    if info is None:
        return
    state.metrics.snapshot_published.set(info.published_at)
    try:
        state.models.load(info.path, delta=info.delta)
    except ReloadRefusedError:
        log.warning("starting without models: %s", state.models.error)


def _configure_logging(level: str) -> None:
    root = logging.getLogger()
    if not root.handlers:  # a gunicorn worker: the CLI configured its own process only
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")
        )
        root.addHandler(handler)
        root.setLevel(level)
