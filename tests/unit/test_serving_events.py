"""Durable events: the SQLite event log, the single writer, and POST /v1/events on a real app.

Real DuckDB files, a real event log and real processes; the store holds the factory catalog
(items i0..i29) and events (users u0..u11).
"""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from flask import Flask

from feature_store.db import connect
from recsys.core.config import Settings
from serving.app import create_app
from serving.eventlog import EventLog
from serving.snapshot import read_pointer
from serving.writer import EventWriter, WriterBusyError, writer_lock
from tests.factories import click_record as event
from tests.factories import load_into_store, make_catalog, make_events

KEY = {"X-API-Key": "s3cret"}


@pytest.fixture
def home(settings: Settings) -> Settings:
    """A store with the factory data and a first published snapshot."""
    settings = settings.replace(**{"serving.api_key": "s3cret"})
    con = connect(settings.db_path)
    load_into_store(con, make_catalog(), make_events())
    con.close()
    EventWriter(settings).flush()
    return settings


@pytest.fixture
def app(home: Settings):
    app = create_app(home, start_watcher=False)
    yield app
    app.extensions["recsys"].close()


def store_event_ids(settings: Settings) -> list[str]:
    con = connect(settings.db_path, read_only=True)
    try:
        return [
            r[0] for r in con.execute("SELECT event_id FROM events WHERE source = 'api'").fetchall()
        ]
    finally:
        con.close()


def test_event_log_is_idempotent_and_ordered(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "log")
    assert log.append([{"event_id": "a", "x": 1}, {"event_id": "b"}]) == set()
    other = EventLog(tmp_path / "log")  # another worker's handle
    assert other.append([{"event_id": "b"}, {"event_id": "c"}]) == {"b"}
    assert [e.event_id for e in log.pending()] == ["a", "b", "c"]
    assert log.pending()[0].record == {"event_id": "a", "x": 1}
    log.mark_ingested(log.pending()[1].seq)
    assert [e.event_id for e in other.pending()] == ["c"] and other.backlog() == 1
    assert log.known_ids(["a", "z"]) == {"a"}


def _append_worker(args: tuple[str, int]) -> list[str]:
    directory, worker = args
    log = EventLog(directory)
    accepted: list[str] = []
    for batch in range(20):
        # ids overlap between workers: each id may be acknowledged as new only once
        ids = [f"e{(worker + batch + j) % 40}-{j}" for j in range(5)]
        dup = log.append([{"event_id": i} for i in ids])
        accepted.extend(i for i in ids if i not in dup)
    return accepted


def test_concurrent_processes_log_each_event_once(tmp_path: Path) -> None:
    directory = str(tmp_path / "log")
    EventLog(directory)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=4, mp_context=ctx) as pool:
        results = list(pool.map(_append_worker, [(directory, w) for w in range(4)]))
    accepted = [i for r in results for i in r]
    assert len(accepted) == len(set(accepted))  # nobody acknowledged an id another did
    logged = [e.event_id for e in EventLog(directory).pending()]
    assert sorted(logged) == sorted(accepted)


def test_post_events_statuses(app: Flask) -> None:
    client = app.test_client()
    body = {
        "events": [
            event("n1"),
            event("e0-0", user="u0"),  # already in the store (factory event)
            event("n2", item="no-such-item"),  # unknown item
            event("n1"),  # repeated in the batch
            event("n3", extra_field=1),  # unknown field
            event("n4", event_type="rate"),  # rate without value
            "not an object",
        ]
    }
    res = client.post("/v1/events", json=body, headers=KEY)
    assert res.status_code == 200
    data = res.get_json()
    statuses = [(r["event_id"], r["status"], r["reason"]) for r in data["results"]]
    assert statuses == [
        ("n1", "accepted", None),
        ("e0-0", "duplicate", None),
        ("n2", "rejected", "unknown item id"),
        ("n1", "duplicate", None),
        ("n3", "rejected", "unknown field(s) extra_field"),
        ("n4", "rejected", "rate without value"),
        (None, "rejected", "record is not an object"),
    ]
    assert (data["accepted"], data["duplicate"], data["rejected"]) == (1, 2, 4)
    again = client.post("/v1/events", json={"events": [event("n1")]}, headers=KEY).get_json()
    assert again["results"][0]["status"] == "duplicate"  # known to the log before any flush


def test_events_need_the_api_key(home: Settings) -> None:
    app = create_app(home.replace(**{"serving.api_key": ""}), start_watcher=False)
    client = app.test_client()
    res = client.post("/v1/events", json={"events": [event("x")]})
    assert res.status_code == 403
    assert "RECSYS_SERVING__API_KEY" in res.get_json()["error"]["message"]
    app.extensions["recsys"].close()
    app = create_app(home, start_watcher=False)
    client = app.test_client()
    for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": "s3cret "}):
        res = client.post("/v1/events", json={"events": [event("x")]}, headers=headers)
        assert res.status_code == 401 and res.get_json()["error"]["code"] == "unauthorized"
    app.extensions["recsys"].close()


def test_oversized_batches_and_bodies_are_413(home: Settings) -> None:
    app = create_app(
        home.replace(**{"serving.max_events_per_batch": 2, "serving.max_body_bytes": 2000}),
        start_watcher=False,
    )
    client = app.test_client()
    res = client.post(
        "/v1/events", json={"events": [event("a"), event("b"), event("c")]}, headers=KEY
    )
    assert res.status_code == 413 and res.get_json()["error"]["code"] == "payload_too_large"
    res = client.post("/v1/events", json={"events": [event("a", text="x" * 3000)]}, headers=KEY)
    assert res.status_code == 413 and res.get_json()["error"]["code"] == "payload_too_large"
    app.extensions["recsys"].close()


def test_writer_lands_events_exactly_once_and_publishes(app: Flask, home: Settings) -> None:
    client = app.test_client()
    client.post(
        "/v1/events", json={"events": [event("a"), event("b", user="new-user")]}, headers=KEY
    )
    before = read_pointer(home)
    writer = EventWriter(home)
    result = writer.flush()
    assert (result.events_read, result.accepted) == (2, 2)
    assert sorted(store_event_ids(home)) == ["a", "b"]
    after = read_pointer(home)
    assert (
        after is not None
        and before is not None
        and after.path != before.path
        and after.log_seq == 2
    )
    # a crash between the store commit and the checkpoint re-delivers: ingest stays exactly-once
    writer.event_log.mark_ingested(0)
    again = EventWriter(home).flush()
    assert (again.events_read, again.accepted, again.duplicate) == (2, 0, 2)
    assert sorted(store_event_ids(home)) == ["a", "b"]
    assert writer.flush().events_read == 0  # nothing new, store unchanged: no publish
    # the worker follows the pointer; the new events are now duplicates known to the snapshot
    state = app.extensions["recsys"]
    state.watcher.tick()
    assert state.snapshots.info == read_pointer(home)
    con = state.snapshots.cursor()
    assert con.execute("SELECT count(*) FROM users WHERE user_id = 'new-user'").fetchone() == (1,)
    con.close()


def test_api_acks_while_store_is_held_and_events_land_after(app: Flask, home: Settings) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('held', flush=True); "
            "time.sleep(3); c.close()",
            str(home.db_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        res = app.test_client().post("/v1/events", json={"events": [event("during")]}, headers=KEY)
        assert res.get_json()["accepted"] == 1
        started = time.monotonic()
        result = EventWriter(home).flush()  # waits for the holder to let go
        assert result.accepted == 1 and time.monotonic() - started > 0.5
    finally:
        holder.wait(timeout=30)
        if holder.stdout is not None:
            holder.stdout.close()
    assert store_event_ids(home) == ["during"]


def test_one_writer_per_home(settings: Settings) -> None:
    with writer_lock(settings):
        with pytest.raises(WriterBusyError, match="another event writer"):
            with writer_lock(settings):
                pass
    stop = threading.Event()
    stop.set()
    EventWriter(settings).run(stop)  # returns at once when stopped
