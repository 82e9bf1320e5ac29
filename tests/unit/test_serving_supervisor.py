"""Issue 9 item 3 (unit level): the supervisor restarts the writer, stops everything when
gunicorn dies, and bounds every stop; the heartbeat and the event log feed /readyz."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from feature_store.db import connect
from recsys.core.config import Settings, load_settings
from serving import supervisor as sup
from serving.app import create_app
from serving.eventlog import LOG_FILE
from serving.heartbeat import HEARTBEAT_FILE, Heartbeat, WriterStatus, writer_check
from serving.snapshot import serving_dir
from serving.supervisor import Child, Supervisor
from serving.writer import EventWriter
from tests.factories import load_into_store, make_catalog, make_events

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
IGNORES_TERM = [
    sys.executable,
    "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)",
]


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise TimeoutError("condition not met")


def run_in_thread(supervisor: Supervisor) -> tuple[threading.Thread, dict[str, int]]:
    out: dict[str, int] = {}
    thread = threading.Thread(target=lambda: out.setdefault("code", supervisor.run()))
    thread.start()
    return thread, out


def test_a_dead_writer_is_restarted_and_a_dead_api_stops_everything() -> None:
    api = Child("gunicorn", SLEEPER, dict(os.environ), stop_seconds=5)
    writer = Child("event writer", SLEEPER, dict(os.environ), stop_seconds=5, restart=True)
    stop = threading.Event()
    thread, out = run_in_thread(Supervisor([api, writer], stop))
    try:
        wait_for(lambda: writer.pid is not None and api.pid is not None)
        first = writer.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: writer.pid != first and writer.poll() is None)
        assert api.poll() is None  # the API never noticed
        api_pid = api.pid
        assert api_pid is not None
        os.kill(api_pid, signal.SIGKILL)
        thread.join(timeout=15)
        assert not thread.is_alive()
        assert out["code"] == -signal.SIGKILL  # non-zero: systemd/Kubernetes restarts us
        assert writer.poll() is not None  # stopped with the API
    finally:
        stop.set()
        thread.join(timeout=15)


def test_stop_is_bounded_even_for_a_child_that_ignores_sigterm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stubborn = Child("event writer", IGNORES_TERM, dict(os.environ), stop_seconds=1.0)
    stop = threading.Event()
    thread, out = run_in_thread(Supervisor([stubborn], stop))
    wait_for(lambda: stubborn.pid is not None)
    time.sleep(0.5)  # let it install its handler
    started = time.monotonic()
    stop.set()
    thread.join(timeout=15)
    assert time.monotonic() - started < 5
    assert out["code"] == 0 and stubborn.poll() == -signal.SIGKILL


def test_a_crash_loop_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sup, "MAX_RESTARTS", 2)
    crashing = Child(
        "event writer",
        [sys.executable, "-c", "raise SystemExit(3)"],
        dict(os.environ),
        stop_seconds=1,
        restart=True,
    )
    code = Supervisor([crashing], threading.Event()).run()
    assert code == 3 and len(crashing.starts) == 3


# --------------------------------------------------------------------------------------------
# /readyz: writer liveness, backlog, event-log writability
# --------------------------------------------------------------------------------------------


def no_models(settings: Any, con: Any) -> Any:
    raise ValueError("no models in this test")


@pytest.fixture
def home(tmp_path: Path) -> Settings:
    settings = load_settings(
        overrides={"home": str(tmp_path / "home"), "serving.api_key": "k"}, environ={}
    )
    con = connect(settings.db_path)
    load_into_store(con, make_catalog(), make_events())
    con.close()
    EventWriter(settings, refresh_embeddings=False).flush()
    return settings


@pytest.fixture
def app(home: Settings) -> Iterator[Flask]:
    app = create_app(home, loader=no_models, start_watcher=False)
    yield app
    app.extensions["recsys"].close()


def readyz(app: Flask) -> tuple[int, dict[str, Any]]:
    resp = app.test_client().get("/readyz")
    return resp.status_code, resp.get_json()["checks"]


def test_heartbeat_states(tmp_path: Path) -> None:
    path = tmp_path / HEARTBEAT_FILE
    assert writer_check(path)["state"] == "absent" and writer_check(path)["ok"]
    beat = Heartbeat(path, WriterStatus(), interval=0.05)
    beat.start()
    try:
        assert writer_check(path)["ok"] and writer_check(path)["pid"] == os.getpid()
        stale = writer_check(path, now=time.time() + 60)
        assert not stale["ok"] and stale["state"] == "stale"
    finally:
        beat.stop()
    assert not writer_check(path)["ok"] and writer_check(path)["state"] == "stopped"


def test_readyz_reports_a_dead_writer_and_the_backlog(app: Flask, home: Settings) -> None:
    proc = subprocess.Popen(SLEEPER)
    try:
        beat = Heartbeat(serving_dir(home) / HEARTBEAT_FILE, WriterStatus())
        beat.beat("running")
        body = {"events": [{"user_id": "u1", "item_id": "i3", "event_type": "click", "ts": 5}]}
        app.test_client().post("/v1/events", json=body, headers={"X-API-Key": "k"})
        status, checks = readyz(app)
        assert checks["event_log"]["ok"] and checks["event_log"]["backlog"] == 1
        assert checks["event_log"]["oldest_age_s"] >= 0
        # the beat came from this (live) process: ready as far as the writer goes
        assert checks["writer"]["ok"]
        # a heartbeat whose process is gone
        text = (serving_dir(home) / HEARTBEAT_FILE).read_text()
        (serving_dir(home) / HEARTBEAT_FILE).write_text(
            text.replace(f'"pid": {os.getpid()}', f'"pid": {proc.pid}')
        )
        proc.kill()
        proc.wait()
        status, checks = readyz(app)
        assert status == 503 and checks["writer"]["state"] == "dead"
    finally:
        proc.kill()


def test_an_unwritable_event_log_is_503_not_500(app: Flask, home: Settings) -> None:
    path = home.event_log_dir / LOG_FILE
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.mkdir()  # a directory where the database was: no process can open it, root included
    body = {"events": [{"user_id": "u1", "item_id": "i3", "event_type": "click", "ts": 5}]}
    resp = app.test_client().post("/v1/events", json=body, headers={"X-API-Key": "k"})
    assert resp.status_code == 503, resp.get_data(as_text=True)
    assert resp.get_json()["error"]["code"] == "event_log_unavailable"
    status, checks = readyz(app)
    assert status == 503 and not checks["event_log"]["ok"]


def test_an_app_starts_even_when_the_log_cannot_be_opened(home: Settings) -> None:
    home.event_log_dir.parent.mkdir(parents=True, exist_ok=True)
    if home.event_log_dir.exists():
        for child in home.event_log_dir.iterdir():
            child.unlink()
        home.event_log_dir.rmdir()
    home.event_log_dir.write_text("not a directory")
    app = create_app(home, loader=no_models, start_watcher=False)
    try:
        status, checks = readyz(app)
        assert status == 503 and not checks["event_log"]["ok"]
        assert app.test_client().get("/healthz").status_code == 200
    finally:
        app.extensions["recsys"].close()


def test_a_restarted_writer_does_not_republish_an_unchanged_store(home: Settings) -> None:
    """Workers would switch snapshots (and rebuild models) for nothing after every restart."""
    assert EventWriter(home, refresh_embeddings=False).flush().snapshot is None
    con = connect(home.db_path)  # a batch job writes the store
    con.execute("CREATE TABLE touched AS SELECT 1 AS x")
    con.close()
    assert EventWriter(home, refresh_embeddings=False).flush().snapshot is not None


STOP_PROBE = """
import sys, threading, time
from serving.supervisor import on_stop_signals
stop = threading.Event()
on_stop_signals(stop)
print("ready", flush=True)
while not stop.is_set():
    with stop._cond:  # the lock Event.set takes, held when the signal lands
        time.sleep(0.05)
print("stopped", flush=True)
"""


def test_signals_landing_while_the_stop_lock_is_held_still_stop_the_process() -> None:
    # a kill -9 of the supervisor sends the writer SIGTERM (parent death) next to the stop it
    # had sent: a handler calling Event.set inside a held Event lock waited forever
    with subprocess.Popen(
        [sys.executable, "-c", STOP_PROBE],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    ) as child:
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
            for _ in range(3):
                child.send_signal(signal.SIGTERM)
                time.sleep(0.01)
            assert child.wait(timeout=20) == 0
            assert child.stdout.read().strip() == "stopped"
        finally:
            child.kill()
