"""Field rules of the HTTP contract: limits, id and flag parsing, and one message per
failed validation (``describe``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from feature_store.validation import is_valid_unicode

MAX_K = 100
DEFAULT_K = 10
MAX_ID_LENGTH = 256
MAX_CANDIDATES = 1000
MAX_HISTORY = 1000
MAX_GENRE_LENGTH = 100
DEFAULT_MAX_EVENTS = 1000  # serving.max_events_per_batch's default; the document uses the setting

INVALID = "invalid_request"  # error type of a message that already names its field
TOO_LARGE = "payload_too_large"  # error type answered with 413 instead of 400
EVENT_RULE = "event_rule"  # a store rule refused one event (its reason is the message)

_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}

ID_SCHEMA: dict[str, Any] = {
    "oneOf": [
        {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH},
        {"type": "integer"},
    ],
    "description": "An id: a string, or an integer (read as its decimal string).",
}


def invalid(message: str, kind: str = INVALID) -> PydanticCustomError:
    """A validation error whose message is ``message`` as written (braces included)."""
    return PydanticCustomError(kind, "{message}", {"message": message})


def type_name(value: Any) -> str:
    """How a JSON value's type reads in an error message ("a list", "a number", ...)."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if type(value) in names:
        return names[type(value)]
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__


# --------------------------------------------------------------------------------------------
# field rules (before-validators: they see the raw JSON or query text)
# --------------------------------------------------------------------------------------------


def check_id(value: Any, name: str) -> str:
    """A non-empty id of at most MAX_ID_LENGTH characters without control characters.

    A string (surrounding blanks dropped) or an integer (MovieLens ids are numbers), read as
    its decimal string, as /v1/events reads ids.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    elif isinstance(value, str):
        value = value.strip()
    else:
        raise invalid(f"{name} must be a string or an integer, got {type_name(value)}")
    if not value or len(value) > MAX_ID_LENGTH:
        raise invalid(f"{name} must be 1 to {MAX_ID_LENGTH} characters long")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise invalid(f"{name} must not contain control characters")
    if not is_valid_unicode(value):
        raise invalid(f"{name} is not valid Unicode (a lone UTF-16 surrogate?)")
    return value


def optional_id(value: Any, info: ValidationInfo) -> str | None:
    return None if value is None else check_id(value, str(info.field_name))


def id_list(limit: int, *, empty: bool) -> Callable[[Any, ValidationInfo], tuple[str, ...]]:
    def check(value: Any, info: ValidationInfo) -> tuple[str, ...]:
        name = str(info.field_name)
        if not isinstance(value, list | tuple):
            raise invalid(
                f"{name} must be a list of item ids (strings or integers), got {type_name(value)}"
            )
        if not value and not empty:
            raise invalid(f"{name} must contain at least one item id")
        if len(value) > limit:
            raise invalid(f"{name} has {len(value)} entries; the limit is {limit}", TOO_LARGE)
        return tuple(check_id(item, f"{name}[{i}]") for i, item in enumerate(value))

    return check


def _k(value: Any) -> int:
    """k in a JSON body: an integer (not a boolean, not 2.0)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"k must be an integer from 1 to {MAX_K}, got {type_name(value)}")
    if not 1 <= value <= MAX_K:
        raise invalid(f"k must be from 1 to {MAX_K}, got {value}")
    return value


def _k_text(value: Any) -> int:
    """k in a query string: its decimal text (an int when the model is built in Python)."""
    if not isinstance(value, str):
        return _k(value)
    text = value.strip()
    digits = text[1:] if text[:1] in "+-" else text
    # ASCII digits only: str.isdigit() also accepts "²" and "٣", which int() refuses or reads
    if not digits or not digits.isascii() or not digits.isdigit() or len(text) > 12:
        raise invalid(f"k must be an integer from 1 to {MAX_K}, got {value!r}")
    return _k(int(text))


def bool_from_text(value: Any, info: ValidationInfo) -> bool:
    """true/false from JSON, or true/1/yes and false/0/no (any case) from a query string."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise invalid(f"{info.field_name} must be true or false, got {value!r}")
    raise invalid(f"{info.field_name} must be true or false, got {type_name(value)}")


def json_bool(value: Any, info: ValidationInfo) -> bool:
    """A JSON body's boolean: true or false only (no strings)."""
    if isinstance(value, bool):
        return value
    raise invalid(f"{info.field_name} must be true or false, got {type_name(value)}")


def genre_text(value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_GENRE_LENGTH:
        raise invalid(f"genre must be 1 to {MAX_GENRE_LENGTH} characters long")
    return value


def event_list(value: Any, info: ValidationInfo) -> list[Any]:
    """The batch envelope only: each event is checked on its own (``Event``), so one bad event
    is rejected with its reason while the others are logged."""
    if not isinstance(value, list):
        raise invalid(f"events must be a list, got {type_name(value)}")
    if not value:
        raise invalid("events must contain at least one event")
    limit = int((info.context or {}).get("max_events", DEFAULT_MAX_EVENTS))
    if len(value) > limit:
        raise invalid(
            f"batch of {len(value)} events is over the limit of {limit} "
            "(serving.max_events_per_batch); split it into smaller batches",
            TOO_LARGE,
        )
    return value


IdIn = Annotated[str, WithJsonSchema(ID_SCHEMA)]
_K_DOC = "How many items to return."
# Field before BeforeValidator: so the constraints reach the JSON schema as minimum/maxItems
K = Annotated[int, Field(ge=1, le=MAX_K, description=_K_DOC), BeforeValidator(_k)]
KText = Annotated[int, Field(ge=1, le=MAX_K, description=_K_DOC), BeforeValidator(_k_text)]


# --------------------------------------------------------------------------------------------
# one message from a ValidationError
# --------------------------------------------------------------------------------------------


def describe(exc: ValidationError, model: type[BaseModel], where: str) -> tuple[str, bool]:
    """``(message, too_large)`` for a failed validation of ``model``; ``where`` is "request
    body" or "query parameter".  Every part names its field and what a valid value looks like;
    ``too_large`` says a size limit was passed (answered with 413)."""
    messages: list[str] = []
    unknown: list[str] = []
    too_large = False
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        kind = err["type"]
        if kind in (INVALID, TOO_LARGE, EVENT_RULE):
            too_large |= kind == TOO_LARGE
            messages.append(str(err["msg"]))
        elif kind == "extra_forbidden":
            unknown.append(loc)
        elif kind == "missing":
            field = model.model_fields.get(loc)
            hint = f": {field.description}" if field is not None and field.description else ""
            messages.append(f"{loc} is required{hint}")
        elif kind in ("model_type", "dict_type") and not loc:
            messages.append(f"{where} must be a JSON object, got {type_name(err['input'])}")
        else:  # a type rule of pydantic's own: its message names the expected value
            messages.append(f"{loc or where}: {err['msg']}")
    if unknown:
        allowed = ", ".join(model.model_fields)
        what = "query parameter(s)" if where == "query parameter" else "field(s)"
        suffix = "" if where == "query parameter" else f" in {where}"
        messages.insert(0, f"unknown {what} {', '.join(unknown)}{suffix}; allowed: {allowed}")
    return "; ".join(dict.fromkeys(messages)), too_large
