"""Response models: every JSON body the API answers with."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCORE_DOC = (
    "0 to 1, higher is better, monotone in raw_score within one list kind: the logistic of "
    "the LambdaRank score for ranked lists, the fused popularity/text score over its maximum "
    "for cold-start lists. Compare scores within a list and one model version; it is not a "
    "click probability."
)


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
    interleaved: bool | None = Field(
        default=None,
        description="Present (true) while a challenger ranker is tested online: the list is a "
        "team-draft interleaving of the champion's and the challenger's, each item scored by the "
        "ranker that placed it. Log impressions and clicks with the recommendation_id as usual.",
    )


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
    challenger_versions: dict[str, str] = Field(
        default_factory=dict,
        description="The interleaving challenger's model versions ({} when not interleaving).",
    )
    snapshot: dict[str, Any] | None
    snapshot_age_seconds: float | None
    event_log: dict[str, Any]


def new_recommendation_id() -> str:
    """The id of a served list (a uuid4), echoed by clients on the events it leads to."""
    return str(uuid.uuid4())
