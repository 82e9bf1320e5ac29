"""API-key protection for /v1/events and /v1/admin/*, and CORS for browser front ends."""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, Response, request

from serving.errors import ApiKeyNotConfiguredError, UnauthorizedError
from serving.state import state

API_KEY_HEADER = "X-API-Key"
F = TypeVar("F", bound=Callable[..., Any])


def check_api_key(configured: str, given: str | None) -> None:
    """Raise 403 when no key is configured, 401 when ``given`` does not match (constant time)."""
    if not configured:
        raise ApiKeyNotConfiguredError(
            "this endpoint is disabled because the server has no API key; set "
            "RECSYS_SERVING__API_KEY (or serving.api_key in the config file) and restart"
        )
    if given is None or not hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), configured.encode("utf-8")
    ):
        raise UnauthorizedError(f"missing or wrong API key; send it in the {API_KEY_HEADER} header")


def require_api_key(view: F) -> F:
    """Decorator: the view runs only with the right ``X-API-Key`` header."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        configured = state().settings.serving.api_key.get_secret_value()
        check_api_key(configured, request.headers.get(API_KEY_HEADER))
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def init_cors(app: Flask, origins: tuple[str, ...]) -> None:
    """Allow browser calls from ``origins`` (``*`` allows any) - nothing when empty."""
    allowed = set(origins)
    if not allowed:
        return

    @app.after_request
    def _cors(response: Response) -> Response:
        origin = request.headers.get("Origin")
        if origin and ("*" in allowed or origin in allowed):
            response.headers["Access-Control-Allow-Origin"] = "*" if "*" in allowed else origin
            response.headers.add("Vary", "Origin")
            response.headers["Access-Control-Expose-Headers"] = "X-Request-ID"
            if request.method == "OPTIONS":
                response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
                response.headers["Access-Control-Allow-Headers"] = (
                    f"Content-Type, {API_KEY_HEADER}, X-Request-ID"
                )
                response.headers["Access-Control-Max-Age"] = "600"
        return response
