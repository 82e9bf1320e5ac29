"""``recsys serve``: gunicorn workers for the HTTP API plus the single event writer.

The command itself is the writer (the only process that opens the store read-write) and the
supervisor of gunicorn: it publishes a first store snapshot, starts gunicorn, flushes the event
log every ``serving.event_flush_seconds`` while gunicorn runs, and on SIGTERM/SIGINT stops
gunicorn first and then flushes once more.  Flask is imported only inside the command.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import click

from recsys.cli import settings_from
from recsys.core.config import Settings

log = logging.getLogger(__name__)

_GUNICORN_STOP_SECONDS = 30


@click.command()
@click.option("--host", help="Address to bind (serving.host, default 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (serving.port, default 8000).")
@click.option("--workers", type=click.IntRange(1, 64), help="gunicorn workers (serving.workers).")
@click.option(
    "--dev", is_flag=True, help="Flask's development server in one process (not for production)."
)
@click.option(
    "--writer-only", is_flag=True, help="Run only the event writer (gunicorn managed elsewhere)."
)
@click.pass_context
def serve(
    ctx: click.Context,
    host: str | None,
    port: int | None,
    workers: int | None,
    dev: bool,
    writer_only: bool,
) -> None:
    """Serve the HTTP API (gunicorn) and ingest posted events (one writer process)."""
    from serving.writer import EventWriter, writer_lock

    settings = settings_from(
        ctx, **{"serving.host": host, "serving.port": port, "serving.workers": workers}
    )
    with writer_lock(settings):
        writer = EventWriter(settings)
        writer.flush_safely()  # publish a snapshot before the workers look for one
        stop = threading.Event()
        _on_stop_signals(stop, interrupt=dev and not writer_only)
        if writer_only:
            click.echo(
                f"event writer for {settings.home} (flush every "
                f"{settings.serving.event_flush_seconds:g} s); Ctrl-C stops it"
            )
            writer.run(stop)
        elif dev:
            _serve_dev(settings, writer, stop)
        else:
            code = _serve_gunicorn(settings, writer, stop)
            if code:
                raise click.ClickException(f"gunicorn exited with status {code}; see its log above")
        writer.flush_safely()  # events acknowledged just before shutdown
        log.info("stopped; %d events wait in the log", writer.event_log.backlog())


def _on_stop_signals(stop: threading.Event, *, interrupt: bool) -> None:
    """SIGTERM/SIGINT set ``stop``; with ``interrupt`` they also end Flask's blocking server."""

    def handler(signum: int, frame: Any) -> None:
        stop.set()
        if interrupt:
            raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


def _serve_gunicorn(settings: Settings, writer: Any, stop: threading.Event) -> int:
    s = settings.serving
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env.update(settings_env(settings))
    env["PROMETHEUS_MULTIPROC_DIR"] = str(_fresh_dir(settings.home / "serving" / "prometheus"))
    cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        "python:serving.gunicorn_conf",
        "--bind",
        f"{s.host}:{s.port}",
        "--workers",
        str(s.workers),
        "serving.app:create_app()",
    ]
    log.info("starting gunicorn: %s", " ".join(cmd))
    proc = subprocess.Popen(cmd, env=env)
    click.echo(
        f"serving http://{s.host}:{s.port} with {s.workers} gunicorn workers; events "
        f"reach the store every {s.event_flush_seconds:g} s; Ctrl-C stops"
    )
    try:
        writer.run(stop, alive=lambda: proc.poll() is None)
    finally:
        if proc.poll() is None:
            proc.terminate()  # graceful: workers finish their requests
            try:
                proc.wait(timeout=_GUNICORN_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                log.warning("gunicorn did not stop in %d s; killing it", _GUNICORN_STOP_SECONDS)
                proc.kill()
                proc.wait()
    code = proc.returncode
    return 0 if stop.is_set() and code in (0, -signal.SIGTERM, -signal.SIGINT) else int(code)


def _serve_dev(settings: Settings, writer: Any, stop: threading.Event) -> None:
    from serving.app import create_app

    thread = threading.Thread(target=writer.run, args=(stop,), name="event-writer", daemon=True)
    thread.start()
    app = create_app(settings)
    click.echo("Flask development server: single process, not for production")
    try:
        app.run(
            host=settings.serving.host,
            port=settings.serving.port,
            threaded=True,
            use_reloader=False,
        )
    except KeyboardInterrupt:
        log.info("stopping the development server")
    finally:
        stop.set()
        thread.join(timeout=60)
        app.extensions["recsys"].close()


def settings_env(settings: Settings) -> dict[str, str]:
    """``RECSYS_*`` variables that make ``load_settings()`` in a child reproduce ``settings``."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}__{key}" if prefix else key, sub)
            return
        if isinstance(value, list | tuple):
            text = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        out[f"RECSYS_{prefix.upper()}"] = text

    data = settings.to_dict()
    data["home"] = str(Path(settings.home).resolve())
    data["data_dir"] = str(Path(settings.data_dir).resolve())
    walk("", data)
    return out


def _fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path
