"""Load shedding: a request that waited past the queue deadline is answered 503 with
Retry-After and never reaches its view; probes are never shed.  The last test runs the real
gunicorn worker class with one thread and a slow view, so requests really queue."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from flask import Flask, jsonify

from serving import overload
from serving.errors import register_error_handlers
from serving.overload import parse_request_start, queued_seconds
from tests.servers import free_port, wait_http

ROOT = Path(__file__).resolve().parents[2]


def slow_app() -> Flask:
    """A one-view app whose view takes 0.2 s (served by gunicorn in the last test)."""
    app = Flask("slow")
    register_error_handlers(app)
    overload.init_app(app, deadline_ms=float(os.environ.get("SHED_DEADLINE_MS", "300")))

    @app.get("/work")
    def work():  # type: ignore[no-untyped-def]
        time.sleep(0.2)
        return jsonify({"done": True})

    @app.get("/healthz")
    def healthz():  # type: ignore[no-untyped-def]
        return jsonify({"status": "ok"})

    return app


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("t=1700000000.5", 1700000000.5),
        ("1700000000500", 1700000000.5),  # milliseconds
        ("t=1700000000500000", 1700000000.5),  # microseconds
        ("", None),
        ("t=abc", None),
        ("-5", None),
        ("nan", None),
        ("inf", None),
    ],
)
def test_request_start_header_forms(value: str, expected: float | None) -> None:
    assert parse_request_start(value) == expected


def test_queued_seconds_takes_the_longer_wait() -> None:
    assert queued_seconds(None) is None
    assert queued_seconds("t=100", now=102.5) == pytest.approx(2.5)
    overload._local.queued_at = time.monotonic() - 5.0
    try:
        assert queued_seconds("t=100", now=101.0) == pytest.approx(5.0, abs=0.5)
    finally:
        overload._local.queued_at = None


@pytest.fixture
def app() -> Iterator[Flask]:
    calls: list[str] = []
    app = slow_app()
    app.view_functions["work"] = lambda: (calls.append("work"), jsonify({"done": True}))[1]
    app.config["calls"] = calls
    yield app
    overload._local.queued_at = None


def test_a_late_request_is_shed_without_running_its_view(app: Flask) -> None:
    client = app.test_client()
    assert client.get("/work").status_code == 200
    overload._local.queued_at = time.monotonic() - 1.0  # waited 1 s for a thread
    shed = client.get("/work")
    assert shed.status_code == 503 and shed.headers["Retry-After"] == "1"
    assert shed.json["error"]["code"] == "overloaded"
    assert client.get("/healthz").status_code == 200  # probes are never shed
    overload._local.queued_at = None
    late = client.get("/work", headers={"X-Request-Start": f"t={time.time() - 2:.3f}"})
    assert late.status_code == 503
    fresh = client.get("/work", headers={"X-Request-Start": f"t={time.time():.3f}"})
    assert fresh.status_code == 200
    assert app.config["calls"] == ["work", "work"]


def test_a_zero_deadline_never_sheds() -> None:
    app = Flask("x")
    plain = app.wsgi_app
    overload.init_app(app, deadline_ms=0)
    assert not isinstance(app.wsgi_app, overload.SheddingMiddleware)
    assert app.wsgi_app == plain


def test_gunicorn_worker_sheds_queued_requests(tmp_path: Path) -> None:
    """1 worker x 1 thread, 0.2 s per request, 300 ms deadline, 12 requests at once: only the
    first few are computed (the rest would have waited up to 12 x 0.2 s), the rest get 503."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SHED_DEADLINE_MS": "300"}
    cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        "--worker-class",
        "serving.overload.QueueTimedThreadWorker",
        "--threads",
        "1",
        "--workers",
        "1",
        "--bind",
        f"127.0.0.1:{port}",
        "tests.unit.test_overload:slow_app()",
    ]
    with open(tmp_path / "gunicorn.log", "wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60, proc=proc)

        def get(_: int) -> tuple[int, float, str | None]:
            started = time.perf_counter()
            with httpx.Client() as client:
                r = client.get(f"http://127.0.0.1:{port}/work", timeout=30)
            return r.status_code, time.perf_counter() - started, r.headers.get("Retry-After")

        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(get, range(12)))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    ok = [r for r in results if r[0] == 200]
    shed = [r for r in results if r[0] == 503]
    assert len(ok) + len(shed) == 12
    assert 1 <= len(ok) <= 6, results  # ~0.3 s of queue / 0.2 s per request, plus slack
    assert shed and all(r[2] == "1" for r in shed)
