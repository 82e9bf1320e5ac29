"""The HTTP contract, defined once: pydantic models of every request and response body and of
the query and path parameters.

Validation (``serving.validation`` runs requests through these models), the OpenAPI document
(``serving.openapi`` generates its schemas from them) and the typed client
(``serving.client`` returns them) all read this module, so a rule or a field is written here and
nowhere else.  The rules an event must pass are the store's (``feature_store.validation``): the
``Event`` model calls them, so the API accepts exactly what the writer can store.

No Flask here: the client imports this module without the server's dependencies.  A failed
validation is a ``pydantic.ValidationError``; ``describe`` turns it into one message that names
the field and says what a valid value looks like.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SkipValidation,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from feature_store.db import EVENT_TYPES
from feature_store.validation import (
    POSITION_MAX,
    RATING_MAX,
    RATING_MIN,
    is_valid_unicode,
    validate_event_record,
)

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
SCORE_DOC = (
    "0 to 1, higher is better, monotone in raw_score within one list kind: the logistic of "
    "the LambdaRank score for ranked lists, the fused popularity/text score over its maximum "
    "for cold-start lists. Compare scores within a list and one model version; it is not a "
    "click probability."
)


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


def _id(value: Any, info: ValidationInfo) -> str | None:
    return None if value is None else check_id(value, str(info.field_name))


def _id_list(limit: int, *, empty: bool) -> Callable[[Any, ValidationInfo], tuple[str, ...]]:
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


def _bool(value: Any, info: ValidationInfo) -> bool:
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


def _json_bool(value: Any, info: ValidationInfo) -> bool:
    """A JSON body's boolean: true or false only (no strings)."""
    if isinstance(value, bool):
        return value
    raise invalid(f"{info.field_name} must be true or false, got {type_name(value)}")


def _genre(value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_GENRE_LENGTH:
        raise invalid(f"genre must be 1 to {MAX_GENRE_LENGTH} characters long")
    return value


def _event_list(value: Any, info: ValidationInfo) -> list[Any]:
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
# requests
# --------------------------------------------------------------------------------------------


class UserPath(BaseModel):
    """Path parameters of GET /v1/users/{user_id}/recommendations."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: Annotated[
        str,
        Field(min_length=1, max_length=MAX_ID_LENGTH, description="The user's id."),
        BeforeValidator(_id),
    ]


class RecommendationQuery(BaseModel):
    """Query parameters of GET /v1/users/{user_id}/recommendations."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    k: KText = DEFAULT_K
    exclude_seen: Annotated[
        bool,
        Field(description="Leave out items the user already engaged with."),
        BeforeValidator(_bool),
    ] = True
    genre: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=MAX_GENRE_LENGTH,
            description="Only items of this genre (any case); an unknown genre is a 400 "
            "listing the known ones.",
            examples=["Comedy"],
        ),
        BeforeValidator(_genre),
    ] = None
    explain: Annotated[
        bool,
        Field(description="Add readable reasons and feature contributions to every item."),
        BeforeValidator(_bool),
    ] = False


class RankRequest(BaseModel):
    """Body of POST /v1/rank: candidates to re-rank for a known user or a history."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "examples": [
                {"user_id": "414", "candidates": ["1", "2", "1210", "2571"], "k": 3},
                {"history": ["260", "1196"], "candidates": [1, 2, 1210, 2571], "k": 2},
            ]
        },
    )

    candidates: Annotated[
        tuple[IdIn, ...],
        Field(
            min_length=1,
            max_length=MAX_CANDIDATES,
            description="a list of item ids to re-rank (duplicates count once; ids not in the "
            "catalog come back in unknown_items)",
        ),
        BeforeValidator(_id_list(MAX_CANDIDATES, empty=False)),
    ]
    user_id: Annotated[
        IdIn | None,
        Field(description="A known user; an unknown or absent user is ranked cold."),
        BeforeValidator(_id),
    ] = None
    history: Annotated[
        tuple[IdIn, ...],
        Field(
            max_length=MAX_HISTORY,
            description="Items a cold user engaged with (used when user_id is unknown).",
        ),
        BeforeValidator(_id_list(MAX_HISTORY, empty=True)),
    ] = ()
    k: K = DEFAULT_K
    explain: Annotated[
        bool,
        Field(description="Add readable reasons and feature contributions to every item."),
        BeforeValidator(_json_bool),
    ] = False

    @field_validator("candidates")
    @classmethod
    def _once(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(value))  # a duplicate would be ranked twice


# the store's rules take any non-blank id for events (the catalog check bounds item ids)
_EVENT_ID_SCHEMA: dict[str, Any] = {
    "oneOf": [{"type": "string", "minLength": 1}, {"type": "integer"}],
}
_TS_SCHEMA = {
    "oneOf": [{"type": "string", "format": "date-time"}, {"type": "number"}],
    "description": "ISO-8601 (UTC when no offset) or unix seconds, from 1970 to 2100.",
    "examples": ["2024-05-01T12:00:00Z", 1714564800],
}
_OPT_ID_SCHEMA = {"oneOf": [*_EVENT_ID_SCHEMA["oneOf"], {"type": "null"}]}


class Event(BaseModel):
    """One event as POST /v1/events takes it; validated by the store's own rules.

    After validation the fields are the stored row: ids as strings, ``event_type`` in lower
    case, ``ts`` a naive UTC datetime, ``event_id`` the content hash when none was given.
    Whether ``item_id`` is in the catalog is checked against the store by the server.
    """

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "description": "One event. An event that breaks a rule is rejected with a reason "
            "in the response; the rest of the batch is still logged.",
            "examples": [
                {
                    "event_id": "web-1",
                    "user_id": "5",
                    "item_id": "1",
                    "event_type": "click",
                    "ts": "2024-05-01T12:00:00Z",
                    "recommendation_id": "6f1c2a8e-2b7d-4c1e-9d0a-3f5e8b9c7a11",
                    "position": 0,
                },
                {"user_id": 5, "item_id": 1, "event_type": "rate", "value": 4.5, "ts": 1714564800},
            ],
        },
    )

    user_id: Annotated[str, WithJsonSchema({**_EVENT_ID_SCHEMA, "description": "User id."})]
    item_id: Annotated[
        str,
        WithJsonSchema({**_EVENT_ID_SCHEMA, "description": "Item id (must be in the catalog)."}),
    ]
    event_type: Annotated[
        str,
        WithJsonSchema(
            {
                "type": "string",
                "enum": list(EVENT_TYPES),
                "description": "The kind of event (any case).",
            }
        ),
    ]
    ts: Annotated[datetime, WithJsonSchema(_TS_SCHEMA)]
    event_id: Annotated[
        str | None,
        WithJsonSchema(
            {
                "type": ["string", "null"],
                "description": "Idempotency key; when absent, a hash of the event's content.",
            }
        ),
    ] = None
    value: Annotated[
        float | None,
        WithJsonSchema(
            {
                "type": ["number", "null"],
                "description": f"A rating, required for rate ({RATING_MIN:g} to {RATING_MAX:g}).",
            }
        ),
    ] = None
    text: str | None = Field(default=None, description="A comment or review text.")
    request_id: Annotated[str | None, WithJsonSchema(_OPT_ID_SCHEMA)] = None
    position: Annotated[
        int | None,
        Field(ge=0, le=POSITION_MAX, description="0-based position in the list shown."),
    ] = None
    recommendation_id: Annotated[
        str | None,
        WithJsonSchema(
            {
                "type": ["string", "null"],
                "format": "uuid",
                "description": "The recommendation_id of the served list this impression or "
                "click belongs to; stored with the event so clicks join to lists.",
            }
        ),
    ] = None

    @model_validator(mode="before")
    @classmethod
    def _store_rules(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("ts"), datetime):
            data = {**data, "ts": data["ts"].isoformat()}  # built in Python (the client)
        row, reason = validate_event_record(data)
        if row is None:
            raise invalid(reason or "invalid event", EVENT_RULE)
        return row

    def to_row(self) -> dict[str, Any]:
        """The row the event log stores (``recommendation_id`` only when given)."""
        return self.model_dump(exclude_unset=True)


class EventBatch(BaseModel):
    """Body of POST /v1/events."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "events": [
                        {
                            "event_id": "web-1",
                            "user_id": "5",
                            "item_id": "1",
                            "event_type": "like",
                            "ts": "2024-05-01T12:00:00Z",
                        }
                    ]
                }
            ]
        },
    )

    events: Annotated[
        SkipValidation[list[Event]],
        Field(
            description='{"events": [{"event_id": ..., "user_id": ..., ...}]}, at most '
            "serving.max_events_per_batch events",
            json_schema_extra={"minItems": 1},
        ),
        BeforeValidator(_event_list),
    ]


# --------------------------------------------------------------------------------------------
# responses
# --------------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    code: str = Field(description="Stable, machine-readable: invalid_request, unauthorized, ...")
    message: str = Field(description="What went wrong and how to fix it.")


class ErrorResponse(BaseModel):
    """Every error answer: ``{"error": {"code": ..., "message": ...}}``."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"error": {"code": "invalid_request", "message": "k must be from 1 to 100, got 0"}}
            ]
        }
    )

    error: ErrorDetail


class Recommendation(BaseModel):
    item_id: str
    rank: int = Field(ge=1)
    score: float = Field(ge=0, le=1, description=SCORE_DOC)
    raw_score: float = Field(
        description="The model's own value (LambdaRank score, or the cold-start fusion "
        "score): unbounded, meaningful only as an order."
    )
    title: str
    reasons: list[str] | None = Field(
        default=None,
        description="Readable reasons, strongest first; only with explain=true.",
        examples=[["because you liked *Heat*", "popular with other users"]],
    )
    contributions: dict[str, float] | None = Field(
        default=None,
        description="Top feature contributions (LightGBM pred_contrib), text score included; "
        "only with explain=true.",
    )


class RecommendationList(BaseModel):
    """A ranked list (GET /v1/users/{user_id}/recommendations, POST /v1/rank)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "recommendation_id": "6f1c2a8e-2b7d-4c1e-9d0a-3f5e8b9c7a11",
                    "user_id": "414",
                    "items": [
                        {
                            "item_id": "2571",
                            "rank": 1,
                            "score": 0.71,
                            "raw_score": 0.9,
                            "title": "Matrix, The (1999)",
                        }
                    ],
                    "unknown_items": [],
                    "cold_start": False,
                    "model_versions": {"ranker": "3", "text-scorer": "2"},
                }
            ]
        }
    )

    recommendation_id: str = Field(
        json_schema_extra={"format": "uuid"},
        description="Id of this list; send it back as recommendation_id on the impression "
        "and click events it leads to (POST /v1/events).",
    )
    user_id: str | None
    items: list[Recommendation]
    unknown_items: list[str] = Field(description="Candidate or history ids not in the catalog.")
    cold_start: bool = Field(
        description="True when the user has no events (or is ranked by a given history): a "
        "popularity list blended with text matching."
    )
    model_versions: dict[str, str]


class EventResult(BaseModel):
    index: int = Field(ge=0, description="Position of the event in the batch.")
    event_id: str | None
    status: Literal["accepted", "duplicate", "rejected"]
    reason: str | None = Field(description="Why the event was rejected (null otherwise).")


class EventResults(BaseModel):
    """The per-event outcome of POST /v1/events."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "accepted": 1,
                    "duplicate": 0,
                    "rejected": 1,
                    "results": [
                        {"index": 0, "event_id": "web-1", "status": "accepted", "reason": None},
                        {
                            "index": 1,
                            "event_id": "web-2",
                            "status": "rejected",
                            "reason": "unknown item id",
                        },  # noqa: E501
                    ],
                }
            ]
        }
    )

    accepted: int = Field(ge=0)
    duplicate: int = Field(ge=0)
    rejected: int = Field(ge=0)
    results: list[EventResult]


class Health(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: Literal["ok"]


class Check(BaseModel):
    """One readiness check; more keys (ages, versions, details) depend on the check."""

    model_config = ConfigDict(extra="allow")

    ok: bool
    state: str | None = None


class Readiness(BaseModel):
    """GET /readyz: states, versions and ages, never file paths."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "ready",
                    "checks": {
                        "store": {"ok": True, "state": "published"},
                        "models": {"ok": True, "state": "loaded"},
                        "event_log": {"ok": True, "state": "writable"},
                        "writer": {"ok": True, "state": "running"},
                    },
                }
            ]
        }
    )

    status: Literal["ready", "not_ready"]
    checks: dict[str, Check]
    error: ErrorDetail | None = Field(default=None, description="Only when not ready.")


class ReloadResult(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "reloaded": True,
                    "model_versions": {"ranker": "4", "text-scorer": "2"},
                    "previous_model_versions": {"ranker": "3", "text-scorer": "2"},
                }
            ]
        },
    )

    reloaded: bool
    model_versions: dict[str, str] = Field(description="The versions now served.")
    previous_model_versions: dict[str, str] | None = None


class AdminStatus(BaseModel):
    """This worker's models, snapshot and event-log backlog (paths included: key required)."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "pid": 4242,
                    "model_versions": {"ranker": "3", "text-scorer": "2"},
                    "model_error": None,
                    "model_fallback": None,
                    "models_loaded_at": 1714564800.0,
                    "snapshot": {"path": "/srv/home/serving/snapshots/store-1.duckdb"},
                    "snapshot_age_seconds": 4.2,
                    "event_log": {"ok": True, "state": "writable", "backlog": 0},
                }
            ]
        },
    )

    pid: int
    model_versions: dict[str, str]
    model_error: str | None
    model_fallback: dict[str, Any] | None
    models_loaded_at: float | None
    snapshot: dict[str, Any] | None
    snapshot_age_seconds: float | None
    event_log: dict[str, Any]


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


def new_recommendation_id() -> str:
    """The id of a served list (a uuid4), echoed by clients on the events it leads to."""
    return str(uuid.uuid4())
