"""``recsys serve``: gunicorn workers for the HTTP API plus the single event writer.

The command is a small supervisor (serving/supervisor.py): it starts gunicorn at once and the
event writer (``recsys serve --writer-only``, the only process that opens the store read-write)
as two children, restarts the writer when it dies, stops the writer when gunicorn dies, and
takes both down on SIGTERM/SIGINT - or with it, on ``kill -9`` (PR_SET_PDEATHSIG).  ``--dev``
runs Flask's server and the writer in one process.  Flask is imported only inside the command.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Any

import click

from recsys.cli import settings_from
from recsys.core.config import ENV_PREFIX, Settings
from serving.app import create_app
from serving.heartbeat import HEARTBEAT_FILE, Heartbeat
from serving.memory import arena_env
from serving.priority import worker_thread_env
from serving.snapshot import serving_dir
from serving.supervisor import (
    GUNICORN_STOP_SECONDS,
    WRITER_STOP_SECONDS,
    Child,
    Supervisor,
    on_stop_signals,
)
from serving.writer import EventWriter, ensure_snapshot, writer_lock

log = logging.getLogger(__name__)

# a supervised writer restarted while its predecessor still finishes a chunk waits for the lock
_WRITER_LOCK_WAIT_SECONDS = 30.0


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
@click.option("--supervised", is_flag=True, hidden=True, help="Set by the supervisor.")
@click.pass_context
def serve(
    ctx: click.Context,
    host: str | None,
    port: int | None,
    workers: int | None,
    dev: bool,
    writer_only: bool,
    supervised: bool,
) -> None:
    """Serve the HTTP API (gunicorn) and ingest posted events (one writer process)."""
    settings = settings_from(
        ctx, **{"serving.host": host, "serving.port": port, "serving.workers": workers}
    )
    stop = threading.Event()
    on_stop_signals(stop, interrupt=dev and not writer_only)
    if writer_only:
        click.echo(
            f"event writer for {settings.home} (flush every "
            f"{settings.serving.event_flush_seconds:g} s); Ctrl-C stops it"
        )
        run_writer(settings, stop, supervised=supervised)
    elif dev:
        _serve_dev(settings, stop)
    else:
        code = _serve_gunicorn(settings, stop)
        if code:
            raise click.ClickException(
                f"the service stopped: a child exited with status {code}; see the log above"
            )


def run_writer(settings: Settings, stop: threading.Event, *, supervised: bool = False) -> None:
    """The event writer until ``stop``: heartbeat, flush loop, one bounded last flush."""
    wait = _WRITER_LOCK_WAIT_SECONDS if supervised else 0.0
    with writer_lock(settings, wait_seconds=wait):
        writer = EventWriter(settings)
        heartbeat = Heartbeat(serving_dir(settings) / HEARTBEAT_FILE, writer.status)
        heartbeat.start()
        try:
            writer.run(stop)
        finally:
            stop.set()  # the last flush ingests one chunk at most: shutdown stays bounded
            writer.flush_safely(stop)
            heartbeat.stop()
            log.info("event writer stopped; %d events wait in the log", writer.event_log.backlog())


def _serve_gunicorn(settings: Settings, stop: threading.Event) -> int:
    ensure_snapshot(settings)  # a first run: workers boot with the store; never drains the log

    s = settings.serving
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env.update(settings_env(settings))
    env.update(arena_env(os.environ))  # bounded glibc arenas: flat worker RSS (serving/memory.py)
    env.update(worker_thread_env(os.environ))  # single-threaded BLAS (serving/priority.py)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(_fresh_dir(settings.home / "serving" / "prometheus"))
    gunicorn = [
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
    writer = [sys.executable, "-m", "recsys", "serve", "--writer-only", "--supervised"]
    log.info("starting gunicorn: %s", " ".join(gunicorn))
    click.echo(
        f"serving http://{s.host}:{s.port} with {s.workers} gunicorn workers; events "
        f"reach the store every {s.event_flush_seconds:g} s; Ctrl-C stops"
    )
    children = [
        Child("gunicorn", gunicorn, env, GUNICORN_STOP_SECONDS),
        Child("event writer", writer, env, WRITER_STOP_SECONDS, restart=True),
    ]
    return Supervisor(children, stop).run()


def _serve_dev(settings: Settings, stop: threading.Event) -> None:
    thread = threading.Thread(
        target=run_writer, args=(settings, stop), name="event-writer", daemon=True
    )
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
    # to_dict() masks secrets; the child needs their values (through its environment only)
    for key, value in settings.secrets().items():
        out[ENV_PREFIX + key.upper().replace(".", "__")] = value
    return out


def _fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path
