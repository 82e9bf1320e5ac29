"""HTTP error types and the one handler that turns every failure into the JSON error body.

Every error answer has the shape ``{"error": {"code": ..., "message": ...}}``: ``RecsysError``
subclasses carry their own ``code`` and ``http_status``; werkzeug's ``HTTPException``s (404 for
an unknown path, 405, 413 from the body-size limit, ...) get a stable code from their status.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from recsys.core.errors import RecsysError

log = logging.getLogger(__name__)


class RequestValidationError(RecsysError):
    """The request is malformed: bad JSON, a wrong type, an unknown field, a value out of range."""

    code = "invalid_request"
    http_status = 400


class MalformedJSONError(RequestValidationError):
    code = "malformed_json"


class UnsupportedMediaTypeError(RecsysError):
    code = "unsupported_media_type"
    http_status = 415


class PayloadTooLargeError(RecsysError):
    """A body over ``serving.max_body_bytes`` or a batch over ``serving.max_events_per_batch``."""

    code = "payload_too_large"
    http_status = 413


class UnauthorizedError(RecsysError):
    """The API key header is missing or wrong."""

    code = "unauthorized"
    http_status = 401


class ApiKeyNotConfiguredError(RecsysError):
    """The server has no API key, so protected endpoints refuse every request."""

    code = "api_key_not_configured"
    http_status = 403


class ReloadRefusedError(RecsysError):
    """A new model failed to load; the previous one keeps serving."""

    code = "reload_refused"
    http_status = 409


class OverloadedError(RecsysError):
    """The request waited in the queue past ``serving.queue_deadline_ms`` and was not computed."""

    code = "overloaded"
    http_status = 503

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StoreNotReadyError(RecsysError):
    """No published store snapshot yet (the event writer has not run)."""

    code = "store_not_ready"
    http_status = 503


# An absolute file path of two or more segments (not an API route such as /v1/admin/reload).
_PATH = re.compile(r"(?<![\w.:/])/(?!v1/)[\w.@+-]+(?:/[\w.@+-]*)+")


def redact_paths(text: str | None) -> str | None:
    """``text`` with absolute file paths replaced by ``<path>``: for unauthenticated answers."""
    return None if text is None else _PATH.sub("<path>", text)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    411: "length_required",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    429: "too_many_requests",
    431: "request_header_fields_too_large",
}


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """The JSON error body every endpoint uses."""
    return {"error": {"code": code, "message": message, **extra}}


def register_error_handlers(app: Flask) -> None:
    """Map RecsysError subclasses, HTTP exceptions and anything unexpected to JSON errors."""

    @app.errorhandler(RecsysError)
    def _recsys_error(exc: RecsysError) -> ResponseReturnValue:
        status = int(getattr(exc, "http_status", 500))
        if status == 500:
            log.error("%s: %s", exc.code, exc, exc_info=True)
        elif status > 500:
            log.debug("%s: %s", exc.code, exc)
        # answers never carry file paths (the log keeps the whole message)
        response = jsonify(error_body(exc.code, redact_paths(str(exc)) or ""))
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            response.headers["Retry-After"] = str(int(retry_after))
        return response, status

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> ResponseReturnValue:
        status = exc.code or 500
        code = _HTTP_CODES.get(status, "http_error" if status < 500 else "internal_error")
        response = jsonify(error_body(code, exc.description or exc.name))
        if status == 405 and exc.get_headers():
            # keep the Allow header werkzeug computed for the route
            for name, value in exc.get_headers():
                if name.lower() == "allow":
                    response.headers["Allow"] = value
        return response, status

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> ResponseReturnValue:
        log.exception("unhandled error")
        return jsonify(
            error_body("internal_error", "internal server error; see the server log")
        ), 500
