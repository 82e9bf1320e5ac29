"""Request models: the query and path parameters and the JSON bodies the API takes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SkipValidation,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from feature_store.db import EVENT_TYPES
from feature_store.validation import (
    POSITION_MAX,
    RATING_MAX,
    RATING_MIN,
    validate_event_record,
)
from serving.contract.fields import (
    DEFAULT_K,
    EVENT_RULE,
    MAX_CANDIDATES,
    MAX_GENRE_LENGTH,
    MAX_HISTORY,
    MAX_ID_LENGTH,
    IdIn,
    K,
    KText,
    bool_from_text,
    event_list,
    genre_text,
    id_list,
    invalid,
    json_bool,
    optional_id,
)


class UserPath(BaseModel):
    """Path parameters of GET /v1/users/{user_id}/recommendations."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: Annotated[
        str,
        Field(min_length=1, max_length=MAX_ID_LENGTH, description="The user's id."),
        BeforeValidator(optional_id),
    ]


class RecommendationQuery(BaseModel):
    """Query parameters of GET /v1/users/{user_id}/recommendations."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    k: KText = DEFAULT_K
    exclude_seen: Annotated[
        bool,
        Field(description="Leave out items the user already engaged with."),
        BeforeValidator(bool_from_text),
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
        BeforeValidator(genre_text),
    ] = None
    explain: Annotated[
        bool,
        Field(description="Add readable reasons and feature contributions to every item."),
        BeforeValidator(bool_from_text),
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
        BeforeValidator(id_list(MAX_CANDIDATES, empty=False)),
    ]
    user_id: Annotated[
        IdIn | None,
        Field(description="A known user; an unknown or absent user is ranked cold."),
        BeforeValidator(optional_id),
    ] = None
    history: Annotated[
        tuple[IdIn, ...],
        Field(
            max_length=MAX_HISTORY,
            description="Items a cold user engaged with (used when user_id is unknown).",
        ),
        BeforeValidator(id_list(MAX_HISTORY, empty=True)),
    ] = ()
    k: K = DEFAULT_K
    explain: Annotated[
        bool,
        Field(description="Add readable reasons and feature contributions to every item."),
        BeforeValidator(json_bool),
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
        BeforeValidator(event_list),
    ]
