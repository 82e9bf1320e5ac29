"""The gunicorn worker ``recsys serve`` runs builds its app outside gunicorn's request timeout:
an app load longer than ``timeout`` survives, one longer than ``serving.boot_timeout_seconds``
is killed.  Real gunicorn, a 2 s ``timeout`` and an app factory that sleeps."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from flask import Flask, jsonify

from recsys.core.config import load_settings
from recsys.core.errors import ConfigError
from tests.servers import free_port, wait_http

ROOT = Path(__file__).resolve().parents[2]


def slow_boot_app() -> Flask:
    """An app whose factory takes ``BOOT_SLEEP`` seconds, as a model load does."""
    time.sleep(float(os.environ["BOOT_SLEEP"]))
    app = Flask("slow-boot")

    @app.get("/healthz")
    def healthz():  # type: ignore[no-untyped-def]
        return jsonify({"status": "ok"})

    return app


def _gunicorn(tmp_path: Path, boot_sleep: float, boot_timeout: float) -> subprocess.Popen[bytes]:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "BOOT_SLEEP": str(boot_sleep),
        "RECSYS_HOME": str(tmp_path / "home"),
        "RECSYS_SERVING__BOOT_TIMEOUT_SECONDS": str(boot_timeout),
    }
    cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        "--worker-class",
        "serving.worker.RecsysWorker",
        "--timeout",
        "2",
        "--workers",
        "1",
        "--bind",
        f"127.0.0.1:{port}",
        "tests.unit.test_serving_worker:slow_boot_app()",
    ]
    with open(tmp_path / "gunicorn.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    proc.port = port  # type: ignore[attr-defined]
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_app_load_longer_than_the_request_timeout_boots(tmp_path: Path) -> None:
    proc = _gunicorn(tmp_path, boot_sleep=5.0, boot_timeout=60.0)
    try:
        wait_http(f"http://127.0.0.1:{proc.port}/healthz", timeout=60, proc=proc)  # type: ignore[attr-defined]
    finally:
        _stop(proc)
    log = (tmp_path / "gunicorn.log").read_text()
    assert "WORKER TIMEOUT" not in log
    assert "built its app in" in log


def test_app_load_past_the_boot_timeout_is_killed(tmp_path: Path) -> None:
    proc = _gunicorn(tmp_path, boot_sleep=30.0, boot_timeout=1.0)
    log_path = tmp_path / "gunicorn.log"
    try:
        deadline = time.monotonic() + 30
        while "WORKER TIMEOUT" not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.3)
    finally:
        _stop(proc)
    log = log_path.read_text()
    assert "still loading after 1 s" in log
    assert "WORKER TIMEOUT" in log


@pytest.mark.parametrize("value", ["0", "-5"])
def test_boot_timeout_must_be_positive(value: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="boot_timeout_seconds"):
        load_settings(
            environ={"RECSYS_HOME": str(tmp_path), "RECSYS_SERVING__BOOT_TIMEOUT_SECONDS": value}
        )
