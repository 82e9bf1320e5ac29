"""One supervising process owns gunicorn and the event writer; neither outlives it.

``recsys serve`` starts two children and watches them:

* **gunicorn** (the HTTP API) starts at once, serving the last published snapshot while the
  writer drains whatever the log holds - a restart never waits for a backlog;
* **the event writer** (``recsys serve --writer-only``): the only process that writes the store.

When the writer dies it is restarted (at most ``MAX_RESTARTS`` times in ``RESTART_WINDOW_S``;
meanwhile ``/readyz`` reports it dead and answers 503).  When gunicorn dies the writer is stopped
and the supervisor exits non-zero, for systemd/Kubernetes to restart the whole service.  Both
children get ``PR_SET_PDEATHSIG`` (Linux): a ``kill -9`` of the supervisor sends them SIGTERM, so
no orphan gunicorn keeps acknowledging events that nothing ingests, or keeps the port.  gunicorn's
``when_ready`` hook adds a parent watchdog for platforms without it (serving/gunicorn_conf.py).

On SIGTERM/SIGINT gunicorn is stopped first (it closes its listening socket at once and lets
requests in flight finish within ``graceful_timeout``), then the writer, which finishes the
chunk in progress and one more; each child is killed past its bound.  Killing the writer is
safe at any point: the log checkpoint moves only after the store committed.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_SECONDS = 0.5
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
GUNICORN_STOP_SECONDS = 25.0  # gunicorn's graceful_timeout (20 s) plus its own exit
WRITER_STOP_SECONDS = 20.0  # one chunk, one more, a snapshot; the log keeps the rest


def die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets SIGTERM when ``parent_pid`` dies (Linux prctl)."""

    def preexec() -> None:
        if sys.platform.startswith("linux"):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


@dataclass
class Child:
    """One supervised process: how to start it, how long it may take to stop, whether it is
    restarted when it dies."""

    name: str
    cmd: Sequence[str]
    env: dict[str, str]
    stop_seconds: float
    restart: bool = False
    proc: subprocess.Popen[bytes] | None = None
    starts: collections.deque[float] = field(default_factory=collections.deque)

    def start(self) -> None:
        self.starts.append(time.monotonic())
        self.proc = subprocess.Popen(
            list(self.cmd), env=self.env, preexec_fn=die_with_parent(os.getpid())
        )
        log.info("started %s (pid %d)", self.name, self.proc.pid)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def poll(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def may_restart(self) -> bool:
        now = time.monotonic()
        while self.starts and now - self.starts[0] > RESTART_WINDOW_S:
            self.starts.popleft()
        return self.restart and len(self.starts) <= MAX_RESTARTS

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL past ``stop_seconds``; the exit status (None if never run)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=self.stop_seconds)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0f s; killing it", self.name, self.stop_seconds)
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class Supervisor:
    """Starts ``children`` in order, watches them, stops them in order; see the module doc."""

    def __init__(self, children: Sequence[Child], stop: threading.Event) -> None:
        self.children = list(children)
        self.stop = stop

    def run(self) -> int:
        """Until ``stop`` is set (exit 0) or a child that is not restarted dies (its status)."""
        code = 0
        try:
            for child in self.children:
                child.start()
            while not self.stop.wait(POLL_SECONDS):
                failed = self._check_children()
                if failed is not None:
                    code = failed
                    break
        finally:
            self.shutdown()
        return code

    def _check_children(self) -> int | None:
        for child in self.children:
            status = child.poll()
            if status is None:
                continue
            if child.may_restart():
                log.error(
                    "%s (pid %s) exited with %s; restarting it", child.name, child.pid, status
                )
                time.sleep(min(5.0, 0.5 * len(child.starts)))  # back off a crash loop
                child.start()
                continue
            log.error(
                "%s (pid %s) exited with %s; stopping the service", child.name, child.pid, status
            )
            return status or 1
        return None

    def shutdown(self) -> None:
        for child in self.children:
            started = time.monotonic()
            status = child.stop()
            if status is not None:
                log.info(
                    "%s stopped (status %s) in %.1f s",
                    child.name,
                    status,
                    time.monotonic() - started,
                )


def on_stop_signals(stop: threading.Event, *, interrupt: bool = False) -> None:
    """SIGTERM/SIGINT set ``stop``; with ``interrupt`` they also end a blocking server loop.

    The handler never touches ``stop`` itself: ``Event.set`` takes a lock, and a signal that
    arrives while the interrupted code holds it -- a second SIGTERM inside the first handler's
    ``set``, as a ``kill -9`` of the supervisor (parent-death signal) plus its own stop gives --
    blocked the process forever.  The handler writes a byte to a pipe (no lock), and a relay
    thread sets ``stop``.
    """
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)

    def relay() -> None:
        while os.read(read_end, 64):
            stop.set()

    threading.Thread(target=relay, name="stop-signal-relay", daemon=True).start()

    def handler(signum: int, frame: object) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe: stop is on its way anyway
            os.write(write_end, b"s")
        if interrupt:
            raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)
