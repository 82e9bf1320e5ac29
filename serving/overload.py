"""Load shedding: a request that waited in the queue past a deadline is answered 503, not computed.

Under overload a gunicorn ``gthread`` worker keeps accepting connections and queues them for its
thread pool; by the time a request reaches Flask its client may have given up, and computing the
answer anyway only delays the requests behind it (goodput collapses).  So the time a request
waited before a thread picked it up is measured, and past ``serving.queue_deadline_ms`` the
request is answered at once with 503 ``overloaded`` and ``Retry-After``.

The wait is measured from the earlier of:

* the moment this worker queued the connection for its thread pool (``QueueTimedThreadWorker``,
  the gunicorn worker class ``recsys serve`` uses), and
* an ``X-Request-Start`` header set by a proxy in front (``t=<epoch seconds>``, or epoch
  milliseconds / microseconds as nginx and Heroku send it), which also counts the proxy's queue.

Probes and metrics are never shed: they are cheap, and shedding them would make a busy worker
look dead.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from flask import Flask
from gunicorn.workers.gthread import ThreadWorker

from serving.errors import OverloadedError, error_body

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger(__name__)

REQUEST_START_HEADER = "X-Request-Start"
NEVER_SHED = frozenset({"/healthz", "/readyz", "/metrics"})
_local = threading.local()


class QueueTimedThreadWorker(ThreadWorker):
    """gunicorn's ``gthread`` worker, remembering when each connection was queued."""

    def enqueue_req(self, conn: Any) -> None:
        conn.recsys_queued_at = time.monotonic()
        super().enqueue_req(conn)

    def handle(self, conn: Any) -> Any:
        _local.queued_at = getattr(conn, "recsys_queued_at", None)
        try:
            return super().handle(conn)
        finally:
            _local.queued_at = None


def queued_seconds(header: str | None = None, *, now: float | None = None) -> float | None:
    """How long the current request waited before a thread took it, or ``None`` if unknown."""
    waits = []
    queued_at = getattr(_local, "queued_at", None)
    if queued_at is not None:
        waits.append(time.monotonic() - queued_at)
    started = parse_request_start(header)
    if started is not None:
        waits.append((time.time() if now is None else now) - started)
    return max(waits) if waits else None


def parse_request_start(value: str | None) -> float | None:
    """Epoch seconds from an ``X-Request-Start`` value (``t=`` prefix; s, ms or us); None if bad."""
    if not value:
        return None
    raw = value.strip().removeprefix("t=")
    try:
        stamp = float(raw)
    except ValueError:
        return None
    if not stamp > 0 or stamp != stamp or stamp == float("inf"):
        return None
    if stamp > 1e14:  # microseconds
        return stamp / 1e6
    if stamp > 1e11:  # milliseconds
        return stamp / 1e3
    return stamp


class SheddingMiddleware:
    """WSGI middleware: answer a late request 503 before Flask does any work for it.

    Shedding must cost far less than computing, or an overloaded worker spends its time
    refusing; so this runs outside Flask (no request context, no body read, a fixed body).
    """

    def __init__(
        self,
        app: WSGIApplication,
        deadline_ms: float,
        on_shed: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.deadline = deadline_ms / 1000.0
        self.retry_after = str(max(1, round(self.deadline)))
        self.on_shed = on_shed
        self._message = (
            "the server is overloaded: this request waited longer than "
            f"{deadline_ms:g} ms in the queue and was not processed; retry later"
        )

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") not in NEVER_SHED:
            waited = queued_seconds(environ.get("HTTP_X_REQUEST_START"))
            if waited is not None and waited > self.deadline:
                return self._shed(waited, start_response)
        return self.app(environ, start_response)

    def _shed(self, waited: float, start_response: StartResponse) -> list[bytes]:
        body = json.dumps(
            error_body(OverloadedError.code, f"{self._message} (waited {waited * 1000:.0f} ms)")
        ).encode()
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Retry-After", self.retry_after),
        ]
        start_response("503 SERVICE UNAVAILABLE", headers)
        if self.on_shed is not None:
            self.on_shed()
        return [body]


def init_app(app: Flask, deadline_ms: float, on_shed: Callable[[], None] | None = None) -> None:
    """Shed requests that waited longer than ``deadline_ms`` (0: never)."""
    if deadline_ms > 0:
        app.wsgi_app = SheddingMiddleware(app.wsgi_app, deadline_ms, on_shed)  # type: ignore[method-assign]
