"""Request ids and the structured access log.

Every request carries an id: the caller's ``X-Request-ID`` when it is a sane token (1 to 128
characters of letters, digits and ``._:-``; anything else is a 400 saying so), else a fresh
uuid4.  The id is echoed on every response, error answers included, and written with the
method, route (the URL rule, never the raw path, so user ids stay out), status and latency as
one JSON line per request to the ``recsys.access`` logger.  Headers and bodies, where API keys
travel, are never logged.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from typing import Any, TextIO

from flask import Flask, Response, g, request

from serving.errors import RequestValidationError

REQUEST_ID_HEADER = "X-Request-ID"
MAX_REQUEST_ID_LENGTH = 128
_REQUEST_ID = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_REQUEST_ID_LENGTH}}}")

access_log = logging.getLogger("recsys.access")


def request_id() -> str:
    """This request's id (the caller's X-Request-ID or a generated uuid4)."""
    rid = g.get("request_id")
    return rid if isinstance(rid, str) else ""


def check_request_id(value: str | None) -> str:
    """The caller's id when valid, a new uuid4 when absent; RequestValidationError otherwise."""
    if value is None or value == "":
        return str(uuid.uuid4())
    if not _REQUEST_ID.fullmatch(value):
        raise RequestValidationError(
            f"{REQUEST_ID_HEADER} must be 1 to {MAX_REQUEST_ID_LENGTH} characters of letters, "
            "digits and . _ : - (a uuid works); leave it out to get a generated one"
        )
    return value


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (test runners swap it)."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure_access_log() -> None:
    """Bare JSON lines on stderr for ``recsys.access`` (once per process)."""
    if any(isinstance(h, _StderrHandler) for h in access_log.handlers):
        return
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False  # not again, prefixed, through the root handler


def init_app(app: Flask) -> None:
    """Assign request ids, echo them, and write one access-log line per request."""
    configure_access_log()

    @app.before_request
    def _assign() -> None:
        g.access_started = time.perf_counter()
        header = request.headers.get(REQUEST_ID_HEADER)
        g.request_id = str(uuid.uuid4())  # the id of the 400 below, if the header is bad
        g.request_id = check_request_id(header)

    @app.after_request
    def _echo_and_log(response: Response) -> Response:
        rid = request_id() or str(uuid.uuid4())
        response.headers[REQUEST_ID_HEADER] = rid
        started = g.get("access_started")
        latency_ms = (time.perf_counter() - started) * 1000 if started is not None else None
        rule = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
        access_log.info(
            json.dumps(
                {
                    "ts": round(time.time(), 3),
                    "request_id": rid,
                    "method": request.method,
                    "route": rule,
                    "status": response.status_code,
                    "latency_ms": None if latency_ms is None else round(latency_ms, 3),
                    "bytes": response.calculate_content_length(),
                },
                separators=(",", ":"),
            )
        )
        return response
