"""Request parsing: query strings and JSON bodies into small frozen request objects.

Pure functions with no Flask import, so every rule is unit-testable on plain values.  Each
failure raises ``RequestValidationError`` (400) or ``PayloadTooLargeError`` (413) with a message
naming the field and what a valid value looks like.  Limits here are also published in the
OpenAPI document (serving/openapi.py), which reads them from this module.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from feature_store.validation import is_valid_unicode
from serving.errors import PayloadTooLargeError, RequestValidationError

MAX_K = 100
DEFAULT_K = 10
MAX_ID_LENGTH = 256
MAX_CANDIDATES = 1000
MAX_HISTORY = 1000
MAX_GENRE_LENGTH = 100

RECOMMENDATION_PARAMS = ("k", "exclude_seen", "genre", "explain")
RANK_FIELDS = ("user_id", "history", "candidates", "k", "explain")
EVENT_FIELDS = (
    "event_id",
    "user_id",
    "item_id",
    "event_type",
    "value",
    "text",
    "ts",
    "request_id",
    "position",
    "recommendation_id",
)

_INTEGER = re.compile(r"[+-]?[0-9]+")
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


@dataclass(frozen=True)
class RecommendationQuery:
    k: int = DEFAULT_K
    exclude_seen: bool = True
    genre: str | None = None
    explain: bool = False


@dataclass(frozen=True)
class RankRequest:
    candidates: tuple[str, ...]
    user_id: str | None = None
    history: tuple[str, ...] = ()
    k: int = DEFAULT_K
    explain: bool = False


def check_id(value: Any, name: str) -> str:
    """A non-empty id of at most MAX_ID_LENGTH characters without control characters.

    Accepted as /v1/events accepts ids: a string (surrounding blanks dropped) or an integer
    (MovieLens ids are numbers), read as its decimal string.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    elif isinstance(value, str):
        value = value.strip()
    else:
        raise RequestValidationError(
            f"{name} must be a string or an integer, got {_type_name(value)}"
        )
    if not value or len(value) > MAX_ID_LENGTH:
        raise RequestValidationError(f"{name} must be 1 to {MAX_ID_LENGTH} characters long")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise RequestValidationError(f"{name} must not contain control characters")
    if not is_valid_unicode(value):
        raise RequestValidationError(f"{name} is not valid Unicode (a lone UTF-16 surrogate?)")
    return value


def parse_recommendation_query(args: Mapping[str, list[str]]) -> RecommendationQuery:
    """Parse ``?k=&exclude_seen=&genre=&explain=`` given as ``{name: [values]}``."""
    unknown = sorted(set(args) - set(RECOMMENDATION_PARAMS))
    if unknown:
        raise RequestValidationError(
            f"unknown query parameter(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(RECOMMENDATION_PARAMS)}"
        )
    values: dict[str, str] = {}
    for name, given in args.items():
        if len(given) != 1:
            raise RequestValidationError(
                f"query parameter {name} given {len(given)} times; give it once"
            )
        values[name] = given[0]
    k = _parse_k_text(values["k"]) if "k" in values else DEFAULT_K
    genre = values.get("genre")
    if genre is not None and not 1 <= len(genre) <= MAX_GENRE_LENGTH:
        raise RequestValidationError(f"genre must be 1 to {MAX_GENRE_LENGTH} characters long")
    return RecommendationQuery(
        k=k,
        exclude_seen=_parse_bool_text(values.get("exclude_seen"), "exclude_seen", True),
        genre=genre,
        explain=_parse_bool_text(values.get("explain"), "explain", False),
    )


def parse_rank_body(body: Any) -> RankRequest:
    """Parse ``{"user_id"?, "history"?, "candidates", "k"?, "explain"?}``."""
    obj = _object(body, "request body", RANK_FIELDS)
    if "candidates" not in obj:
        raise RequestValidationError("candidates is required: a list of item ids to re-rank")
    candidates = _id_list(obj["candidates"], "candidates", MAX_CANDIDATES)
    if not candidates:
        raise RequestValidationError("candidates must contain at least one item id")
    user_id = obj.get("user_id")
    if user_id is not None:
        user_id = check_id(user_id, "user_id")
    history = _id_list(obj.get("history", []), "history", MAX_HISTORY)
    k = _check_k(obj["k"]) if "k" in obj else DEFAULT_K
    explain = obj.get("explain", False)
    if not isinstance(explain, bool):
        raise RequestValidationError(f"explain must be true or false, got {_type_name(explain)}")
    return RankRequest(
        candidates=tuple(dict.fromkeys(candidates)),  # duplicates would rank twice
        user_id=user_id,
        history=tuple(history),
        k=k,
        explain=explain,
    )


def parse_events_body(body: Any, max_events: int) -> list[Any]:
    """Parse ``{"events": [...]}``; the events themselves are validated one by one later."""
    obj = _object(body, "request body", ("events",))
    if "events" not in obj:
        raise RequestValidationError('events is required: {"events": [{"event_id": ..., ...}]}')
    events = obj["events"]
    if not isinstance(events, list):
        raise RequestValidationError(f"events must be a list, got {_type_name(events)}")
    if not events:
        raise RequestValidationError("events must contain at least one event")
    if len(events) > max_events:
        raise PayloadTooLargeError(
            f"batch of {len(events)} events is over the limit of {max_events} "
            "(serving.max_events_per_batch); split it into smaller batches"
        )
    return events


def _object(body: Any, what: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise RequestValidationError(f"{what} must be a JSON object, got {_type_name(body)}")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise RequestValidationError(
            f"unknown field(s) {', '.join(unknown)} in {what}; allowed: {', '.join(allowed)}"
        )
    return body


def _id_list(value: Any, name: str, limit: int) -> list[str]:
    if not isinstance(value, list):
        raise RequestValidationError(
            f"{name} must be a list of item ids (strings or integers), got {_type_name(value)}"
        )
    if len(value) > limit:
        raise PayloadTooLargeError(f"{name} has {len(value)} entries; the limit is {limit}")
    return [check_id(item, f"{name}[{i}]") for i, item in enumerate(value)]


def _check_k(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestValidationError(
            f"k must be an integer from 1 to {MAX_K}, got {_type_name(value)}"
        )
    if not 1 <= value <= MAX_K:
        raise RequestValidationError(f"k must be from 1 to {MAX_K}, got {value}")
    return value


def _parse_k_text(text: str) -> int:
    stripped = text.strip()
    # ASCII digits only: str.isdigit() also accepts "²" and "٣", which int() refuses or reads
    if not _INTEGER.fullmatch(stripped) or len(stripped) > 12:
        raise RequestValidationError(f"k must be an integer from 1 to {MAX_K}, got {text!r}")
    return _check_k(int(stripped))


def _parse_bool_text(text: str | None, name: str, default: bool) -> bool:
    if text is None:
        return default
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise RequestValidationError(f"{name} must be true or false, got {text!r}")


def _type_name(value: Any) -> str:
    names = {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
    }
    if type(value) in names:
        return names[type(value)]
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__
