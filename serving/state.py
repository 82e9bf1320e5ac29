"""Per-app serving state (in ``app.extensions``) and the request-scoped DuckDB cursor."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import duckdb
from flask import current_app, g

from recsys.core.config import Settings
from serving.errors import StoreNotReadyError
from serving.eventlog import EventLog
from serving.metrics import Metrics
from serving.models import ModelHolder, Watcher
from serving.snapshot import SnapshotReader

EXTENSION = "recsys"


@dataclass
class ServingState:
    """Everything one worker serves from: settings, snapshot, models, event log, metrics."""

    settings: Settings
    snapshots: SnapshotReader
    models: ModelHolder
    event_log: EventLog
    metrics: Metrics
    watcher: Watcher

    def close(self) -> None:
        """Stop the watcher and close the snapshot connections (tests, shutdown)."""
        self.watcher.stop()
        self.models.close_retired(everything=True)
        self.snapshots.close()


def state() -> ServingState:
    """The current app's serving state."""
    return current_app.extensions[EXTENSION]


def get_cursor() -> duckdb.DuckDBPyConnection:
    """A cursor on the newest snapshot for this request (closed on teardown)."""
    if "db_cursor" not in g:
        cursor = state().snapshots.cursor()
        if cursor is None:
            raise StoreNotReadyError(
                "no store snapshot is published yet; `recsys serve` publishes one when the event "
                "writer starts (run `recsys ingest` first if the store is empty)"
            )
        g.db_cursor = cursor
    return g.db_cursor


def close_cursor(_exc: BaseException | None = None) -> None:
    cursor: Any = g.pop("db_cursor", None)
    if cursor is not None:
        with contextlib.suppress(duckdb.Error):
            cursor.close()
