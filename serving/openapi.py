"""The OpenAPI 3.1 document of the HTTP API, built from the same limits the validators enforce."""

from __future__ import annotations

from typing import Any

from feature_store.db import EVENT_TYPES
from recsys.core.config import Settings
from serving import validation as v
from serving.security import API_KEY_HEADER

_ERRORS = {
    "400": "Malformed request: bad JSON, a wrong type, an unknown field, a value out of range.",
    "401": f"Missing or wrong {API_KEY_HEADER} header.",
    "403": "The server has no API key configured (set RECSYS_SERVING__API_KEY).",
    "404": "The user (or path) does not exist.",
    "405": "Method not allowed on this path.",
    "409": "The new models failed to load; the previous ones keep serving.",
    "413": "Body over serving.max_body_bytes, or too many events / candidates.",
    "415": "The body is not sent as application/json.",
    "503": "No store snapshot or no models loaded yet, or the event log cannot take events now.",
}


def _errors(*codes: str) -> dict[str, Any]:
    return {
        code: {
            "description": _ERRORS[code],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for code in codes
    }


def _json(schema_ref: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_ref}"}}},
    }


def _id(description: str) -> dict[str, Any]:
    """An id as every endpoint takes it: a string, or an integer read as its decimal string."""
    return {
        "oneOf": [
            {"type": "string", "minLength": 1, "maxLength": v.MAX_ID_LENGTH},
            {"type": "integer"},
        ],
        "description": description + " A string, or an integer (read as its decimal string).",
    }


SCORE_DOC = (
    "0 to 1, higher is better, monotone in raw_score within one list kind: the logistic of "
    "the LambdaRank score for ranked lists, the fused popularity/text score over its maximum "
    "for cold-start lists. Compare scores within a list and one model version; it is not a "
    "click probability."
)
REQUEST_ID_PARAM = {
    "name": "X-Request-ID",
    "in": "header",
    "required": False,
    "description": "Your id for this request (1-128 of letters, digits and . _ : -); generated "
    "when absent, echoed on every response and written to the access log.",
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
}


def _schemas(settings: Settings) -> dict[str, Any]:
    nullable_str = {"type": ["string", "null"]}
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                }
            },
        },
        "Recommendation": {
            "type": "object",
            "required": ["item_id", "rank", "score", "raw_score", "title"],
            "properties": {
                "item_id": {"type": "string"},
                "rank": {"type": "integer", "minimum": 1},
                "score": {"type": "number", "minimum": 0, "maximum": 1, "description": SCORE_DOC},
                "raw_score": {
                    "type": "number",
                    "description": "The model's own value (LambdaRank score, or the cold-start "
                    "fusion score): unbounded, meaningful only as an order.",
                },
                "title": {"type": "string"},
                "reasons": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Readable reasons, strongest first (e.g. 'because you liked "
                    "*Heat*', 'matches your interest in Crime: text score 0.71'); only with "
                    "explain=true.",
                    "example": ["because you liked *Heat*", "popular with other users"],
                },
                "contributions": {
                    "type": "object",
                    "additionalProperties": {"type": "number"},
                    "description": "Top feature contributions (LightGBM pred_contrib), "
                    "text score included; only with explain=true.",
                },
            },
        },
        "RecommendationList": {
            "type": "object",
            "required": [
                "recommendation_id",
                "user_id",
                "items",
                "unknown_items",
                "cold_start",
                "model_versions",
            ],
            "properties": {
                "recommendation_id": {
                    "type": "string",
                    "format": "uuid",
                    "description": "Id of this list; send it back as recommendation_id on the "
                    "impression and click events it leads to (POST /v1/events).",
                },
                "user_id": nullable_str,
                "items": {
                    "type": "array",
                    "items": {"$ref": "#/components/schemas/Recommendation"},
                },
                "unknown_items": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Candidate or history ids not in the catalog.",
                },
                "cold_start": {
                    "type": "boolean",
                    "description": "True when the user has no events (or is ranked by a given "
                    "history): a popularity list blended with text matching.",
                },
                "model_versions": {"type": "object", "additionalProperties": {"type": "string"}},
                "interleaved": {
                    "type": "boolean",
                    "description": "Present (true) while a challenger ranker is tested online: "
                    "the list is a team-draft interleaving of the champion's and the "
                    "challenger's, each item scored by the ranker that placed it. Log "
                    "impressions and clicks with the recommendation_id as usual.",
                },
            },
        },
        "RankRequest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["candidates"],
            "properties": {
                "user_id": _id("A known user; unknown or absent users are ranked cold."),
                "history": {
                    "type": "array",
                    "maxItems": v.MAX_HISTORY,
                    "items": _id("An item the (cold) user engaged with."),
                },
                "candidates": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": v.MAX_CANDIDATES,
                    "items": _id("An item id to rank."),
                },
                "k": {"type": "integer", "minimum": 1, "maximum": v.MAX_K, "default": v.DEFAULT_K},
                "explain": {"type": "boolean", "default": False},
            },
        },
        "Event": {
            "type": "object",
            "additionalProperties": False,
            "required": ["user_id", "item_id", "event_type", "ts"],
            "description": "One event. An event that breaks a rule is rejected with a reason "
            "in the response; the rest of the batch is still logged.",
            "properties": {
                "event_id": {
                    "type": "string",
                    "description": "Idempotency key; when absent, "
                    "a hash of the event's content is used.",
                },
                "user_id": _id("User id."),
                "item_id": _id("Item id (must be in the catalog)."),
                "event_type": {"type": "string", "enum": list(EVENT_TYPES)},
                "ts": {
                    "oneOf": [{"type": "string", "format": "date-time"}, {"type": "number"}],
                    "description": "ISO-8601 (UTC when no offset) or unix seconds.",
                },
                "value": {"type": ["number", "null"], "description": "Rating, required for rate."},
                "text": nullable_str,
                "request_id": nullable_str,
                "position": {"type": ["integer", "null"], "minimum": 0},
                "recommendation_id": {
                    "type": ["string", "null"],
                    "format": "uuid",
                    "description": "The recommendation_id of the served list this impression or "
                    "click belongs to; stored with the event so clicks join to lists.",
                },
            },
        },
        "EventBatch": {
            "type": "object",
            "additionalProperties": False,
            "required": ["events"],
            "properties": {
                "events": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": settings.serving.max_events_per_batch,
                    "items": {"$ref": "#/components/schemas/Event"},
                }
            },
        },
        "EventResults": {
            "type": "object",
            "required": ["accepted", "duplicate", "rejected", "results"],
            "properties": {
                "accepted": {"type": "integer"},
                "duplicate": {"type": "integer"},
                "rejected": {"type": "integer"},
                "results": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["index", "event_id", "status", "reason"],
                        "properties": {
                            "index": {"type": "integer"},
                            "event_id": nullable_str,
                            "status": {
                                "type": "string",
                                "enum": ["accepted", "duplicate", "rejected"],
                            },
                            "reason": nullable_str,
                        },
                    },
                },
            },
        },
        "Status": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"type": "string"}},
        },
    }


def _recommendations_op() -> dict[str, Any]:
    return {
        "summary": "Top-k recommendations for a user",
        "description": "Candidates, point-in-time features, text score, LightGBM. A user with "
        "no events gets a cold-start list (200, cold_start: true). genre matches in any case; "
        "an unknown genre is a 400 listing the known ones. "
        "Example: `curl 'localhost:8000/v1/users/1/recommendations?k=5&explain=true'`",
        "parameters": [
            {
                "name": "user_id",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "minLength": 1, "maxLength": v.MAX_ID_LENGTH},
            },
            REQUEST_ID_PARAM,
            {
                "name": "k",
                "in": "query",
                "schema": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": v.MAX_K,
                    "default": v.DEFAULT_K,
                },
            },
            {"name": "exclude_seen", "in": "query", "schema": {"type": "boolean", "default": True}},
            {
                "name": "genre",
                "in": "query",
                "schema": {"type": "string", "minLength": 1, "maxLength": v.MAX_GENRE_LENGTH},
            },
            {"name": "explain", "in": "query", "schema": {"type": "boolean", "default": False}},
        ],
        "responses": {
            "200": _json("RecommendationList", "Ranked items."),
            **_errors("400", "405", "503"),
        },
    }


def openapi_document(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 document served at /openapi.json."""
    key: list[dict[str, list[str]]] = [{"apiKey": []}]
    status_ok = _json("Status", "OK.")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "recsys-text",
            "version": "1",
            "description": "Personalized recommendations with text-aware ranking.",
        },
        "paths": {
            "/v1/users/{user_id}/recommendations": {"get": _recommendations_op()},
            "/v1/rank": {
                "post": {
                    "summary": "Re-rank caller-supplied candidates",
                    "description": "For a known user, or a cold user described by a history of "
                    "item "
                    "ids (popularity blended with text matching). Unknown candidate "
                    "ids are reported in unknown_items, not fatal.",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/RankRequest"}
                            }
                        },
                    },
                    "responses": {
                        "200": _json("RecommendationList", "The candidates, re-ranked."),
                        **_errors("400", "405", "413", "415", "503"),
                    },
                }
            },
            "/v1/events": {
                "post": {
                    "summary": "Log a batch of events (idempotent by event_id)",
                    "description": "Each event is validated and, if accepted, durably logged "
                    "before "
                    "the response; it reaches the features within the documented "
                    "delay (serving.event_flush_seconds plus one flush).",
                    "security": key,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/EventBatch"}
                            }
                        },
                    },
                    "responses": {
                        "200": _json("EventResults", "Per-event outcome."),
                        **_errors("400", "401", "403", "405", "413", "415", "503"),
                    },
                }
            },
            "/v1/admin/reload": {
                "post": {
                    "summary": "Reload the champion models (atomic; a failing model is refused)",
                    "security": key,
                    "responses": {
                        "200": {"description": "Reloaded; the versions now served."},
                        **_errors("401", "403", "405", "409", "503"),
                    },
                }
            },
            "/v1/admin/status": {
                "get": {
                    "summary": "This worker's models, snapshot and event-log backlog",
                    "security": key,
                    "responses": {
                        "200": {"description": "Status."},
                        **_errors("401", "403", "405"),
                    },
                }
            },
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": status_ok}}},
            "/readyz": {
                "get": {
                    "summary": "Readiness: snapshot, models, a writable event log, a live writer",
                    "responses": {"200": status_ok, "503": _json("Status", "Not ready, and why.")},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "Text exposition format.",
                            "content": {"text/plain": {}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {
                        "200": {"description": "OpenAPI 3.1.", "content": {"application/json": {}}}
                    },
                }
            },
            "/docs": {
                "get": {
                    "summary": "Human-readable API docs",
                    "responses": {"200": {"description": "HTML.", "content": {"text/html": {}}}},
                }
            },
        },
        "components": {
            "schemas": _schemas(settings),
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER}
            },
        },
    }
