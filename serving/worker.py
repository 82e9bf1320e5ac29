"""The gunicorn worker ``recsys serve`` runs: ``gthread``, queue-timed for load shedding
(``serving.overload``), with a boot that gunicorn's request timeout does not cut short.

gunicorn's master kills a worker whose heartbeat is older than ``timeout`` (30 s,
serving/gunicorn_conf.py), and a worker starts beating only once it has built its app.  Building
the app loads the champion models and fits the candidate generators on the store (measured in
docs/deployment.md), which on a busy machine comes close to 30 s: gunicorn < 23 kills a healthy
worker mid-load (and the next one loads from scratch), while gunicorn 26 never times out a worker
that has not beaten yet, so a hung load hangs for good.  Preloading in the master
(``preload_app``) is not an option: DuckDB connections and the watcher thread must not cross a
fork.  So while ``create_app()`` runs, a thread keeps the heartbeat fresh - for at most
``serving.boot_timeout_seconds``; a load that hangs past that stops beating and the master kills
the worker as before.  Once booted, the 30 s timeout guards requests only.
"""

from __future__ import annotations

import threading
import time

from recsys.core.config import ServingSettings, load_settings
from recsys.core.errors import ConfigError
from serving.overload import QueueTimedThreadWorker

BEAT_SECONDS = 1.0


def boot_timeout_seconds() -> float:
    """``serving.boot_timeout_seconds`` as the worker's settings resolve it (RECSYS_* env)."""
    try:
        return float(load_settings().serving.boot_timeout_seconds)
    except ConfigError:  # create_app() reports bad settings; the boot keeps the default bound
        return float(ServingSettings.boot_timeout_seconds)


class RecsysWorker(QueueTimedThreadWorker):
    """``QueueTimedThreadWorker`` whose app load is bounded by the boot timeout, not ``timeout``."""

    def load_wsgi(self) -> None:
        limit = boot_timeout_seconds()
        started = time.monotonic()
        done = threading.Event()

        def beat() -> None:
            self.notify()  # the master's clock starts (gunicorn 26 ignores a never-beating worker)
            while not done.wait(BEAT_SECONDS):
                if time.monotonic() - started > limit:
                    self.log.error(
                        "worker %s still loading after %.0f s (serving.boot_timeout_seconds); "
                        "no longer reporting alive, so the master restarts it",
                        self.pid,
                        limit,
                    )
                    return
                self.notify()

        heartbeat = threading.Thread(target=beat, name="boot-heartbeat", daemon=True)
        heartbeat.start()
        try:
            super().load_wsgi()
        finally:
            done.set()
            heartbeat.join()
        self.notify()
        self.log.info("worker %s built its app in %.1f s", self.pid, time.monotonic() - started)
