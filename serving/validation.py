"""Requests through the contract's models (``serving.contract``), failures as HTTP errors.

Each parser validates with one pydantic model and raises ``RequestValidationError`` (400) or
``PayloadTooLargeError`` (413, a size limit) whose message names the field and what a valid
value looks like.  The views pass plain values (no request object), so every rule is
unit-testable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError

from serving import contract
from serving.contract import (
    DEFAULT_K,
    MAX_CANDIDATES,
    MAX_GENRE_LENGTH,
    MAX_HISTORY,
    MAX_ID_LENGTH,
    MAX_K,
    Event,
    EventBatch,
    RankRequest,
    RecommendationQuery,
    UserPath,
    describe,
)
from serving.errors import PayloadTooLargeError, RequestValidationError

__all__ = [
    "DEFAULT_K",
    "MAX_CANDIDATES",
    "MAX_GENRE_LENGTH",
    "MAX_HISTORY",
    "MAX_ID_LENGTH",
    "MAX_K",
    "RankRequest",
    "RecommendationQuery",
    "check_id",
    "parse_user_id",
    "parse_event",
    "parse_events_body",
    "parse_rank_body",
    "parse_recommendation_query",
]

M = TypeVar("M", bound=BaseModel)


def validate(model: type[M], data: Any, where: str, context: dict[str, Any] | None = None) -> M:
    """``model`` validated from ``data``; 400 (or 413 for a size limit) naming the field."""
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        message, too_large = describe(exc, model, where)
        if too_large:
            raise PayloadTooLargeError(message) from None
        raise RequestValidationError(message) from None


def check_id(value: Any, name: str) -> str:
    """An id (string or integer, read as a string) of 1 to MAX_ID_LENGTH characters."""
    try:
        return contract.check_id(value, name)
    except PydanticCustomError as exc:
        raise RequestValidationError(exc.message()) from None


def parse_user_id(user_id: str) -> str:
    """The ``{user_id}`` path parameter."""
    return validate(UserPath, {"user_id": user_id}, "path parameter").user_id


def parse_recommendation_query(args: Mapping[str, list[str]]) -> RecommendationQuery:
    """Parse ``?k=&exclude_seen=&genre=&explain=`` given as ``{name: [values]}``."""
    values: dict[str, str] = {}
    for name, given in args.items():
        if len(given) != 1 and name in RecommendationQuery.model_fields:
            raise RequestValidationError(
                f"query parameter {name} given {len(given)} times; give it once"
            )
        values[name] = given[0] if given else ""
    return validate(RecommendationQuery, values, "query parameter")


def parse_rank_body(body: Any) -> RankRequest:
    """Parse ``{"user_id"?, "history"?, "candidates", "k"?, "explain"?}``."""
    return validate(RankRequest, body, "request body")


def parse_events_body(body: Any, max_events: int) -> list[Any]:
    """The raw events of ``{"events": [...]}``; each is validated on its own by parse_event."""
    return validate(EventBatch, body, "request body", {"max_events": max_events}).events


def parse_event(record: Any) -> tuple[Event | None, str | None]:
    """``(event, None)`` or ``(None, reason)``: the store's rules, through the Event model."""
    try:
        return Event.model_validate(record), None
    except ValidationError as exc:
        message, _ = describe(exc, Event, "event")
        return None, message
