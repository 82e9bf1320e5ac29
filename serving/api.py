"""The /v1 blueprint: recommendations, re-ranking and event logging."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from feature_store.db import existing_event_ids, existing_items
from feature_store.validation import (
    is_valid_unicode,
    item_ids_to_look_up,
    validate_event_record,
)
from recsys.core.errors import NotFoundError
from serving.errors import MalformedJSONError, UnsupportedMediaTypeError
from serving.security import require_api_key
from serving.state import get_cursor, state
from serving.validation import (
    check_id,
    parse_events_body,
    parse_rank_body,
    parse_recommendation_query,
)

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__, url_prefix="/v1")


@bp.get("/users/<path:user_id>/recommendations")
def recommendations(user_id: str) -> ResponseReturnValue:
    """Top-k items for a known user."""
    check_id(user_id, "user_id")
    query = parse_recommendation_query(request.args.to_dict(flat=False))
    rec = state().models.require()
    cursor = get_cursor()
    if not rec.known_user(user_id):
        raise NotFoundError(
            f"user {user_id!r} has no events; POST /v1/events to record some, or POST /v1/rank "
            "with a history of item ids for a cold user"
        )
    result = rec.recommend(
        user_id,
        query.k,
        exclude_seen=query.exclude_seen,
        genre=query.genre,
        explain=query.explain,
        con=cursor,
    )
    return jsonify({"user_id": user_id, **_result_json(result, query.explain)})


@bp.post("/rank")
def rank() -> ResponseReturnValue:
    """Re-rank caller-supplied candidates for a user or a history (cold users welcome)."""
    req = parse_rank_body(json_body())
    rec = state().models.require()
    cursor = get_cursor()
    result = rec.rank(
        list(req.candidates),
        req.k,
        user_id=req.user_id,
        history=req.history,
        explain=req.explain,
        con=cursor,
    )
    return jsonify({"user_id": req.user_id, **_result_json(result, req.explain)})


@bp.post("/events")
@require_api_key
def post_events() -> ResponseReturnValue:
    """Durably log a batch of events; per event: accepted, duplicate or rejected (with a reason)."""
    st = state()
    records = parse_events_body(json_body(), st.settings.serving.max_events_per_batch)
    cursor = get_cursor()
    known = existing_items(cursor, item_ids_to_look_up(records))
    checked = [validate_event_record(r, known.__contains__) for r in records]
    in_store = existing_event_ids(cursor, [row["event_id"] for row, _ in checked if row])
    results: list[dict[str, Any]] = []
    to_log: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, (row, reason) in enumerate(checked):
        if row is None:
            results.append(_status(index, _raw_event_id(records[index]), "rejected", reason))
        elif row["event_id"] in in_store or row["event_id"] in seen:
            results.append(_status(index, row["event_id"], "duplicate"))
        else:
            seen.add(row["event_id"])
            to_log.append(row)
            results.append(_status(index, row["event_id"], "accepted"))
    already_logged = st.event_log.append(to_log)  # durable (fsynced) before we answer
    for res in results:
        if res["status"] == "accepted" and res["event_id"] in already_logged:
            res["status"] = "duplicate"
    counts = {
        s: sum(1 for r in results if r["status"] == s)
        for s in ("accepted", "duplicate", "rejected")
    }
    for status, n in counts.items():
        if n:
            st.metrics.events.labels(status).inc(n)
    return jsonify({**counts, "results": results})


def json_body() -> Any:
    """The request's JSON value; 415 for another content type, 400 for malformed JSON."""
    if not request.is_json:
        raise UnsupportedMediaTypeError("send the body as JSON with Content-Type: application/json")
    raw = request.get_data(cache=False)  # 413 past serving.max_body_bytes
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise MalformedJSONError(f"the body is not valid JSON: {exc}") from exc


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _result_json(result: Any, explain: bool) -> dict[str, Any]:
    items = []
    for item in result.items:
        row: dict[str, Any] = {
            "item_id": item.item_id,
            "rank": int(item.rank),
            "score": float(item.score),
            "title": item.title,
        }
        if explain:
            row["contributions"] = {k: float(v) for k, v in (item.contributions or {}).items()}
        items.append(row)
    return {
        "items": items,
        "unknown_items": list(result.unknown_items),
        "cold_start": bool(result.cold_start),
        "model_versions": dict(result.model_versions),
    }


def _status(
    index: int, event_id: str | None, status: str, reason: str | None = None
) -> dict[str, Any]:
    return {"index": index, "event_id": event_id, "status": status, "reason": reason}


def _raw_event_id(record: Any) -> str | None:
    value = record.get("event_id") if isinstance(record, Mapping) else None
    return value if isinstance(value, str) and is_valid_unicode(value) else None
