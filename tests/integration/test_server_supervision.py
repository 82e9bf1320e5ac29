"""Issue 9 item 3 with a real ``recsys serve`` (gunicorn + the writer) on the factory store.

kill -9 of the supervisor leaves no gunicorn and frees the port; a killed writer is restarted
(and reported meanwhile); SIGTERM closes the port at once and ends in bounded time with every
acknowledged event in the store; after a restart the API serves while the writer drains.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import psutil
import pytest

from feature_store.db import connect
from recsys.core.config import Settings, load_settings
from serving.eventlog import EventLog
from serving.heartbeat import HEARTBEAT_FILE, read_heartbeat
from serving.snapshot import serving_dir
from serving.writer import EventWriter
from tests.factories import load_into_store, make_catalog, make_events

pytestmark = pytest.mark.integration

KEY = {"X-API-Key": "k"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for(condition: Any, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            if condition():
                return
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log else ""
    raise TimeoutError(f"{what} not within {timeout} s\n{tail}")


@pytest.fixture
def home(tmp_path: Path) -> Settings:
    """A store with the factory data and a first snapshot (as after an earlier run)."""
    settings = load_settings(
        overrides={"home": str(tmp_path / "home"), "serving.api_key": "k"}, environ={}
    )
    con = connect(settings.db_path)
    load_into_store(con, make_catalog(), make_events())
    con.close()
    EventWriter(settings, refresh_embeddings=False).flush()
    return settings


@contextlib.contextmanager
def serve(home: Settings) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    port = free_port()
    log = home.home / f"serve-{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env.update({"RECSYS_SERVING__API_KEY": "k", "RECSYS_SERVING__EVENT_FLUSH_SECONDS": "0.5"})
    cmd = [sys.executable, "-m", "recsys", "--home", str(home.home), "serve"]
    cmd += ["--port", str(port), "--workers", "1"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield proc, f"http://127.0.0.1:{port}", log
    finally:
        for child in _descendants(proc.pid):
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.NoSuchProcess:
        return []


def checks(url: str) -> dict[str, Any]:
    return dict(httpx.get(f"{url}/readyz", timeout=5).json()["checks"])


def up(url: str) -> bool:
    c = checks(url)
    return bool(c["store"]["ok"] and c["writer"]["ok"] and c["writer"]["state"] == "running")


def click(event_id: str) -> dict[str, Any]:
    return {"event_id": event_id, "user_id": "u1", "item_id": "i3", "event_type": "click", "ts": 5}


def test_kill_9_of_the_supervisor_leaves_no_gunicorn_and_frees_the_port(home: Settings) -> None:
    with serve(home) as (proc, url, log):
        wait_for(lambda: up(url), 120, "server ready", log)
        children = _descendants(proc.pid)
        assert any("gunicorn" in " ".join(c.cmdline()) for c in children)
        port = int(url.rsplit(":", 1)[1])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        wait_for(lambda: not any(alive(c.pid) for c in children), 30, "children gone", log)
        assert port_is_free(port)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/healthz", timeout=2)


def test_a_killed_writer_is_restarted_and_events_keep_landing(home: Settings) -> None:
    beat_file = serving_dir(home) / HEARTBEAT_FILE
    with serve(home) as (proc, url, log):
        wait_for(lambda: up(url), 120, "server ready", log)
        beat = read_heartbeat(beat_file)
        assert beat is not None
        os.kill(int(beat["pid"]), signal.SIGKILL)
        # kill() returns before the process is gone; on a busy machine it can take a moment
        wait_for(lambda: not alive(int(beat["pid"])), 10, "the killed writer gone", log)
        writer = checks(url)["writer"]  # until the restart: reported, not hidden
        assert not writer["ok"] or writer["pid"] != beat["pid"]
        wait_for(lambda: up(url) and checks(url)["writer"]["pid"] != beat["pid"], 60, "restart")
        resp = httpx.post(f"{url}/v1/events", json={"events": [click("after")]}, headers=KEY)
        assert resp.json()["accepted"] == 1
        events = EventLog(home.event_log_dir)
        wait_for(lambda: events.backlog() == 0, 60, "event landed", log)
        assert proc.poll() is None


def test_sigterm_closes_the_port_at_once_and_ends_in_bounded_time(home: Settings) -> None:
    with serve(home) as (proc, url, log):
        wait_for(lambda: up(url), 120, "server ready", log)
        batch = {"events": [click(f"t{i}") for i in range(200)]}
        assert httpx.post(f"{url}/v1/events", json=batch, headers=KEY).json()["accepted"] == 200
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)

        def refused() -> bool:
            try:
                httpx.get(f"{url}/healthz", timeout=1)
            except httpx.ConnectError:
                return True
            return False

        wait_for(refused, 5, "port closed")
        assert proc.wait(timeout=60) == 0, log.read_text(errors="replace")[-3000:]
        assert time.monotonic() - started < 50
    assert EventLog(home.event_log_dir).backlog() == 0  # the last flush took them in
    beat = read_heartbeat(serving_dir(home) / HEARTBEAT_FILE)
    assert beat is not None and beat["state"] == "stopped"


def test_after_a_restart_the_api_serves_while_the_writer_drains(home: Settings) -> None:
    events = EventLog(home.event_log_dir)
    for start in range(0, 30_000, 1000):
        events.append([click(f"b{i}") for i in range(start, start + 1000)])
    holder = duckdb.connect(str(home.db_path))  # a batch job holds the store: no drain yet
    try:
        with serve(home) as (proc, url, log):
            wait_for(lambda: up(url), 120, "server ready while the store is held", log)
            state = checks(url)
            assert state["event_log"]["backlog"] == 30_000
            assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
            resp = httpx.post(f"{url}/v1/events", json={"events": [click("new")]}, headers=KEY)
            assert resp.json()["accepted"] == 1
            holder.close()
            wait_for(lambda: events.backlog() == 0, 180, "backlog drained", log)
            assert checks(url)["event_log"]["backlog"] == 0
    finally:
        holder.close()
