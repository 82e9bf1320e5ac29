"""The OpenAPI 3.1 document, generated from the contract's models (``serving.contract``).

Schemas come from ``pydantic.json_schema.models_json_schema`` with refs into
``#/components/schemas``; query and path parameters from the fields of their models.  What a
model cannot say (operationIds, tags, summaries, which errors an operation answers) is listed
once per operation in ``OPERATIONS``, which a test checks against the app's routes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from recsys.core.config import Settings
from serving import contract as c
from serving.access import MAX_REQUEST_ID_LENGTH, REQUEST_ID_HEADER
from serving.security import API_KEY_HEADER

REF = "#/components/schemas/{model}"

ERRORS = {
    400: "Malformed request: bad JSON, a wrong type, an unknown field, a value out of range.",
    401: f"Missing or wrong {API_KEY_HEADER} header.",
    403: "The server has no API key configured (set RECSYS_SERVING__API_KEY).",
    404: "No such path.",
    405: "Method not allowed on this path.",
    409: "The new models failed to load; the previous ones keep serving.",
    413: "Body over serving.max_body_bytes, or too many events / candidates / history items.",
    415: "The body is not sent as application/json.",
    503: "No store snapshot or no models loaded yet, the event log cannot take events now, or "
    "the request waited past serving.queue_deadline_ms (see Retry-After).",
}
TAGS = [
    {"name": "recommendations", "description": "Ranked lists for users and for given candidates."},
    {"name": "events", "description": "Impressions, clicks, ratings: durably logged, idempotent."},
    {"name": "admin", "description": f"Model reload and worker status ({API_KEY_HEADER})."},
    {"name": "operations", "description": "Probes and Prometheus metrics."},
    {"name": "documentation", "description": "This document and the page that renders it."},
]


@dataclass(frozen=True)
class Operation:
    """One route of the API as the document describes it."""

    method: str
    path: str
    operation_id: str
    tag: str
    summary: str
    description: str
    ok: type[BaseModel] | tuple[str, Any]  # a model, or (content type, example)
    errors: tuple[int, ...] = (405,)
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    path_params: type[BaseModel] | None = None
    secured: bool = False
    other: dict[int, type[BaseModel]] = field(default_factory=dict)  # more answers than ok


OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "get",
        "/v1/users/{user_id}/recommendations",
        "getRecommendations",
        "recommendations",
        "Top-k recommendations for a user",
        "Candidates, point-in-time features, text score, LightGBM. A user with no events gets a "
        "cold-start list (200, cold_start: true). genre matches in any case; an unknown genre "
        "is a 400 listing the known ones. "
        "Example: `curl 'localhost:8000/v1/users/1/recommendations?k=5&explain=true'`",
        c.RecommendationList,
        (400, 405, 503),
        query=c.RecommendationQuery,
        path_params=c.UserPath,
    ),
    Operation(
        "post",
        "/v1/rank",
        "rankCandidates",
        "recommendations",
        "Re-rank caller-supplied candidates",
        "For a known user, or a cold user described by a history of item ids (popularity "
        "blended with text matching). Unknown candidate ids are reported in unknown_items, "
        "not fatal.",
        c.RecommendationList,
        (400, 405, 413, 415, 503),
        body=c.RankRequest,
    ),
    Operation(
        "post",
        "/v1/events",
        "postEvents",
        "events",
        "Log a batch of events (idempotent by event_id)",
        "Each event is validated on its own and, if accepted, durably logged before the "
        "response; a bad event is rejected with its reason while the others are logged. "
        "Accepted events reach the features within serving.event_flush_seconds plus one flush.",
        c.EventResults,
        (400, 401, 403, 405, 413, 415, 503),
        body=c.EventBatch,
        secured=True,
    ),
    Operation(
        "post",
        "/v1/admin/reload",
        "reloadModels",
        "admin",
        "Reload the champion models (atomic; a failing model is refused)",
        "Loads the current champions beside the served ones and swaps them in; the other "
        "workers follow. A model that fails to load is refused (409) and the old ones serve on.",
        c.ReloadResult,
        (401, 403, 405, 409, 503),
        secured=True,
    ),
    Operation(
        "get",
        "/v1/admin/status",
        "getAdminStatus",
        "admin",
        "This worker's models, snapshot and event-log backlog",
        "File paths included, hence behind the API key (GET /readyz reports states only).",
        c.AdminStatus,
        (401, 403, 405),
        secured=True,
    ),
    Operation(
        "get",
        "/healthz",
        "getHealth",
        "operations",
        "Liveness",
        "200 while the process answers.",
        c.Health,
    ),
    Operation(
        "get",
        "/readyz",
        "getReadiness",
        "operations",
        "Readiness: snapshot, models, a writable event log, a live writer",
        "503 with the same body, saying which check failed, when not ready.",
        c.Readiness,
        other={503: c.Readiness},
    ),
    Operation(
        "get",
        "/metrics",
        "getMetrics",
        "operations",
        "Prometheus metrics",
        "Text exposition format; labels are bounded (routes, not raw paths).",
        (
            "text/plain",
            'recsys_http_requests_total{endpoint="/healthz",method="GET",status="200"} 3.0\n',
        ),
    ),
    Operation(
        "get",
        "/openapi.json",
        "getOpenApi",
        "documentation",
        "This document",
        "OpenAPI 3.1, generated from the request and response models.",
        ("application/json", {"openapi": "3.1.0", "info": {"title": "recsys-text"}}),
    ),
    Operation(
        "get",
        "/docs",
        "getDocs",
        "documentation",
        "Interactive API docs (Swagger UI, served offline)",
        "Swagger UI from files bundled with the package: no CDN, no request leaves the host.",
        ("text/html", "<!doctype html><title>recsys-text API</title>..."),
    ),
)


def component_schemas(settings: Settings) -> dict[str, Any]:
    """Every request and response model's JSON schema, refs into ``#/components/schemas``."""
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [(c.ErrorResponse, "serialization")]
    for op in OPERATIONS:
        if op.body is not None:
            models.append((op.body, "validation"))
        for answer in (op.ok, *op.other.values()):
            if isinstance(answer, type):
                models.append((answer, "serialization"))
    _, defs = models_json_schema(list(dict.fromkeys(models)), ref_template=REF)
    schemas: dict[str, Any] = defs["$defs"]
    # the batch limit is a setting: the document states this server's value
    schemas["EventBatch"]["properties"]["events"]["maxItems"] = (
        settings.serving.max_events_per_batch
    )
    return schemas


def openapi_document(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 document served at /openapi.json."""
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "recsys-text",
            "version": "1",
            "description": "Personalized recommendations with text-aware ranking. Errors are "
            '`{"error": {"code": "...", "message": "..."}}`; a client mistake is a 4xx. '
            f"Operations marked with a lock need the {API_KEY_HEADER} header.",
        },
        "tags": TAGS,
        "paths": paths,
        "components": {
            "schemas": component_schemas(settings),
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER}
            },
        },
    }


def _operation(op: Operation) -> dict[str, Any]:
    out: dict[str, Any] = {
        "operationId": op.operation_id,
        "tags": [op.tag],
        "summary": op.summary,
        "description": op.description,
        "parameters": [
            *_parameters(op.path_params, "path"),
            *_parameters(op.query, "query"),
            _REQUEST_ID_PARAM,
        ],
    }
    if op.body is not None:
        out["requestBody"] = {
            "required": True,
            "content": {"application/json": _media(op.body)},
        }
    responses: dict[str, Any] = {"200": {"description": "OK.", "content": _content(op.ok)}}
    for status, model in op.other.items():
        responses[str(status)] = {"description": ERRORS[status], "content": _content(model)}
    for status in op.errors:
        responses[str(status)] = {
            "description": ERRORS[status],
            "content": _content(c.ErrorResponse),
        }
    out["responses"] = responses
    if op.secured:
        out["security"] = [{"apiKey": []}]
    return out


def _content(answer: type[BaseModel] | tuple[str, Any]) -> dict[str, Any]:
    if isinstance(answer, tuple):
        media_type, example = answer
        schema = {"type": "string"} if isinstance(example, str) else {"type": "object"}
        return {media_type: {"schema": schema, "example": example}}
    return {"application/json": _media(answer)}


def _media(model: type[BaseModel]) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": {"$ref": REF.format(model=model.__name__)}}
    extra = model.model_config.get("json_schema_extra")
    examples = extra.get("examples") if isinstance(extra, dict) else None
    if isinstance(examples, list) and examples:
        media["example"] = examples[0]
    return media


def _parameters(model: type[BaseModel] | None, where: str) -> list[dict[str, Any]]:
    if model is None:
        return []
    properties = model.model_json_schema(ref_template=REF)["properties"]
    params = []
    for name, info in model.model_fields.items():
        schema = _not_null(properties[name])
        param: dict[str, Any] = {
            "name": name,
            "in": where,
            "required": where == "path" or info.is_required(),
            "description": info.description or "",
            "schema": schema,
        }
        if info.examples:
            param["example"] = info.examples[0]
        params.append(param)
    return params


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A parameter's schema without title, description and the null branch of an optional
    (a query string has no null: the parameter is left out instead)."""
    out = {k: v for k, v in schema.items() if k not in ("title", "description")}
    if out.get("default", 0) is None:
        del out["default"]
    branches = [b for b in out.pop("anyOf", []) if b.get("type") != "null"]
    if len(branches) == 1:
        out.update(branches[0])
    elif branches:
        out["anyOf"] = branches
    return out


_REQUEST_ID_PARAM = {
    "name": REQUEST_ID_HEADER,
    "in": "header",
    "required": False,
    "description": "Your id for this request (1-128 of letters, digits and . _ : -); generated "
    "when absent, echoed on every response and written to the access log.",
    "schema": {"type": "string", "pattern": f"^[A-Za-z0-9._:-]{{1,{MAX_REQUEST_ID_LENGTH}}}$"},
}
