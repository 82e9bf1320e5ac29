"""A small typed client of the HTTP API (standard library only; no Flask).

It speaks the contract of ``serving.contract``: answers come back as its pydantic models, and a
failed call raises ``ApiError`` carrying the HTTP status and the server's error code and message::

    from serving.client import RecsysClient

    api = RecsysClient("http://127.0.0.1:8000", api_key="...")
    top = api.recommendations("414", k=5, explain=True)
    for item in top.items:
        print(item.rank, item.title, item.score, item.reasons)
    api.post_events([{"user_id": "414", "item_id": top.items[0].item_id,
                      "event_type": "click", "ts": "2024-05-01T12:00:00Z",
                      "recommendation_id": top.recommendation_id}])
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from serving.contract import (
    DEFAULT_K,
    AdminStatus,
    Event,
    EventResults,
    Health,
    Readiness,
    RecommendationList,
    ReloadResult,
)

M = TypeVar("M", bound=BaseModel)


class ApiError(Exception):
    """The server answered with an error (or could not be reached: ``status`` 0).

    ``code`` is the stable ``error.code`` of the answer (``invalid_request``, ``unauthorized``,
    ...), ``message`` its explanation, ``request_id`` the ``X-Request-ID`` to look up in the
    server's access log.
    """

    def __init__(self, status: int, code: str, message: str, request_id: str | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id


class RecsysClient:
    """Calls one server at ``base_url`` (e.g. ``http://127.0.0.1:8000``).

    ``api_key`` is sent as ``X-API-Key`` (needed by ``post_events`` and the admin calls);
    ``timeout`` is in seconds per call.
    """

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    # ---------------------------------------------------------------- recommendations

    def recommendations(
        self,
        user_id: str | int,
        k: int = DEFAULT_K,
        *,
        exclude_seen: bool = True,
        genre: str | None = None,
        explain: bool = False,
    ) -> RecommendationList:
        """Top-k items for a user (a user without events gets a cold-start list)."""
        query: dict[str, str] = {
            "k": str(k),
            "exclude_seen": _flag(exclude_seen),
            "explain": _flag(explain),
        }
        if genre is not None:
            query["genre"] = genre
        path = f"/v1/users/{urllib.parse.quote(str(user_id), safe='')}/recommendations"
        return self._call("GET", path, RecommendationList, query=query)

    def rank(
        self,
        candidates: Iterable[str | int],
        *,
        user_id: str | int | None = None,
        history: Iterable[str | int] = (),
        k: int = DEFAULT_K,
        explain: bool = False,
    ) -> RecommendationList:
        """Re-rank ``candidates`` for a known user, or a cold user described by ``history``."""
        body: dict[str, Any] = {"candidates": list(candidates), "k": k, "explain": explain}
        if user_id is not None:
            body["user_id"] = user_id
        history = list(history)
        if history:
            body["history"] = history
        return self._call("POST", "/v1/rank", RecommendationList, body=body)

    # ---------------------------------------------------------------- events

    def post_events(self, events: Iterable[Event | Mapping[str, Any]]) -> EventResults:
        """Log a batch; the answer says per event: accepted, duplicate or rejected (why)."""
        payload = [
            e.model_dump(mode="json", exclude_none=True) if isinstance(e, Event) else dict(e)
            for e in events
        ]
        return self._call("POST", "/v1/events", EventResults, body={"events": payload})

    # ---------------------------------------------------------------- operations

    def health(self) -> Health:
        return self._call("GET", "/healthz", Health)

    def ready(self) -> Readiness:
        """The readiness checks; a server that is not ready answers them too (503)."""
        return self._call("GET", "/readyz", Readiness, ok_statuses=(200, 503))

    def reload(self) -> ReloadResult:
        """Load the current champion models (API key)."""
        return self._call("POST", "/v1/admin/reload", ReloadResult)

    def admin_status(self) -> AdminStatus:
        return self._call("GET", "/v1/admin/status", AdminStatus)

    def openapi(self) -> dict[str, Any]:
        """The server's OpenAPI document."""
        status, doc, _ = self._request("GET", "/openapi.json")
        if status != 200 or not isinstance(doc, dict):
            raise ApiError(status, "bad_response", "the server sent no OpenAPI document")
        return doc

    # ---------------------------------------------------------------- plumbing

    def _call(
        self,
        method: str,
        path: str,
        model: type[M],
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        ok_statuses: tuple[int, ...] = (200,),
    ) -> M:
        status, payload, request_id = self._request(method, path, query=query, body=body)
        if status not in ok_statuses:
            error = payload.get("error") if isinstance(payload, dict) else None
            if isinstance(error, dict):
                code, message = str(error.get("code")), str(error.get("message"))
            else:
                code, message = "http_error", f"HTTP {status} without an error body"
            raise ApiError(status, code, message, request_id)
        try:
            return model.model_validate(payload)
        except ValidationError as exc:
            raise ApiError(
                status,
                "bad_response",
                f"the answer of {method} {path} does not match {model.__name__}: {exc}",
                request_id,
            ) from None

    def _request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
    ) -> tuple[int, Any, str | None]:
        url = self.base_url + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["X-API-Key"] = self.api_key
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, _json(resp.read()), resp.headers.get("X-Request-ID")
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, _json(exc.read()), exc.headers.get("X-Request-ID")
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiError(0, "unreachable", f"{method} {url} failed: {reason}") from exc


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None
