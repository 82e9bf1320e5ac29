"""gunicorn settings for ``recsys serve``.

``recsys serve`` runs ``gunicorn -c python:serving.gunicorn_conf --bind HOST:PORT --workers N
'serving.app:create_app()'`` with the resolved settings in ``RECSYS_*`` environment variables.
Every worker builds its own app after the fork (``preload_app`` off): DuckDB connections and
the watcher thread must not cross a fork.  ``GUNICORN_CMD_ARGS`` overrides anything here.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

from prometheus_client import multiprocess

# Threads let one worker overlap DuckDB queries (which release the GIL) and keep-alive clients.
# gthread, timing each request's wait in the queue for load shedding (serving/overload.py), and
# booting under serving.boot_timeout_seconds rather than ``timeout`` (serving/worker.py)
worker_class = "serving.worker.RecsysWorker"
threads = 4
preload_app = False
# a request (or a reload) silent this long gets its worker restarted; the app load at boot is
# bounded by serving.boot_timeout_seconds instead (serving/worker.py)
timeout = 30
graceful_timeout = 20
keepalive = 5
# Request-line and header limits (the body limit is serving.max_body_bytes, enforced by Flask).
limit_request_line = 8190
limit_request_fields = 100
errorlog = "-"
loglevel = os.environ.get("RECSYS_LOG_LEVEL", "info").lower()
accesslog = None
# gunicorn >= 25 opens a control socket under ~/.gunicorn; servers on one machine would share it.
control_socket_disable = True


def child_exit(server: Any, worker: Any) -> None:
    """Drop a dead worker's live gauges from the shared Prometheus files."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)


def when_ready(server: Any) -> None:
    """Parent watchdog: the master stops when the supervisor that started it is gone.

    ``recsys serve`` also sets PR_SET_PDEATHSIG on Linux; this covers the rest (and a master
    whose parent died between fork and prctl).  Reparenting changes ``getppid()``.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        server.log.error("the supervisor (pid %d) is gone; stopping gunicorn", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    if parent != 1:
        threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()
