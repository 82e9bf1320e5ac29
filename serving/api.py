"""The /v1 blueprint: recommendations, re-ranking and event logging."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, Literal

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from feature_store.db import existing_event_ids, existing_items
from feature_store.validation import UNKNOWN_ITEM, is_valid_unicode, item_ids_to_look_up
from recsys.pipeline.explain import unit_score
from serving.contract import (
    EventResult,
    EventResults,
    Recommendation,
    RecommendationList,
    new_recommendation_id,
)
from serving.errors import MalformedJSONError, RequestValidationError, UnsupportedMediaTypeError
from serving.interleave import interleave_results, list_record
from serving.security import require_api_key
from serving.state import get_cursor, state
from serving.validation import (
    parse_event,
    parse_events_body,
    parse_rank_body,
    parse_recommendation_query,
    parse_user_id,
)

log = logging.getLogger(__name__)

Outcome = Literal["accepted", "duplicate", "rejected"]

bp = Blueprint("api", __name__, url_prefix="/v1")


@bp.get("/users/<path:user_id>/recommendations")
def recommendations(user_id: str) -> ResponseReturnValue:
    """Top-k items for a user; a user without events gets the cold-start list (200,
    ``cold_start: true``).  While a challenger is interleaved the list is a team draft of the
    champion's and the challenger's (``interleaved: true``)."""
    user_id = parse_user_id(user_id)
    query = parse_recommendation_query(request.args.to_dict(flat=False))
    st = state()
    rec, challenger = st.models.require_pair()
    cursor = get_cursor()
    options: dict[str, Any] = {
        "exclude_seen": query.exclude_seen,
        "genre": resolve_genre(rec, query.genre),
        "explain": query.explain,
        "con": cursor,
    }
    result = rec.recommend(user_id, query.k, **options)
    # clients echo it on /v1/events (impressions, clicks) so clicks join to this list
    recommendation_id = new_recommendation_id()
    if challenger is None:
        return _list_json(user_id, result, query.explain, recommendation_id)
    # an A/A test (the challenger is the champion's version) computes the list once
    other = result if challenger is rec else challenger.recommend(user_id, query.k, **options)
    result, drafted = interleave_results(result, other, query.k, recommendation_id)
    record = list_record(
        recommendation_id, user_id, drafted, rec.model_versions, challenger.model_versions
    )
    # not fsynced, a short lock wait, never raises: the list is served either way
    recorded = st.event_log.append_list(record)
    st.metrics.interleaved.labels("recorded" if recorded else "not_recorded").inc()
    return _list_json(user_id, result, query.explain, recommendation_id, interleaved=True)


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
    return _list_json(req.user_id, result, req.explain, new_recommendation_id())


@bp.post("/events")
@require_api_key
def post_events() -> ResponseReturnValue:
    """Durably log a batch of events; per event: accepted, duplicate or rejected (with a reason)."""
    st = state()
    records = parse_events_body(json_body(), st.settings.serving.max_events_per_batch)
    cursor = get_cursor()
    known = existing_items(cursor, item_ids_to_look_up(records))
    checked = [_check_event(r, known) for r in records]
    in_store = existing_event_ids(cursor, [row["event_id"] for row, _ in checked if row])
    results: list[EventResult] = []
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
        if res.status == "accepted" and res.event_id in already_logged:
            res.status = "duplicate"
    counts = {
        s: sum(1 for r in results if r.status == s) for s in ("accepted", "duplicate", "rejected")
    }
    for status, n in counts.items():
        if n:
            st.metrics.events.labels(status).inc(n)
    body = EventResults(
        accepted=counts["accepted"],
        duplicate=counts["duplicate"],
        rejected=counts["rejected"],
        results=results,
    )
    return jsonify(body.model_dump(mode="json"))


def _check_event(record: Any, known: set[str]) -> tuple[dict[str, Any] | None, str | None]:
    """The event's row, or its reason: the contract's rules, then the catalog."""
    event, reason = parse_event(record)
    if event is None:
        return None, reason
    if event.item_id not in known:
        return None, UNKNOWN_ITEM
    return event.to_row(), None


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


def resolve_genre(rec: Any, genre: str | None) -> str | None:
    """The catalogue's spelling of ``genre`` (any case); 400 listing the known ones otherwise."""
    if genre is None:
        return None
    known = list(rec.genres())
    by_lower = {g.casefold(): g for g in known}
    found = by_lower.get(genre.strip().casefold())
    if found is None:
        raise RequestValidationError(
            f"unknown genre {genre!r}; known genres (any case): {', '.join(known)}"
        )
    return found


def _list_json(
    user_id: str | None,
    result: Any,
    explain: bool,
    recommendation_id: str,
    *,
    interleaved: bool = False,
) -> ResponseReturnValue:
    items = []
    for item in result.items:
        raw = float(item.score)
        unit = item.unit_score
        extra: dict[str, Any] = {}
        if explain:  # absent otherwise (exclude_unset below)
            extra["reasons"] = list(item.reasons)
            extra["contributions"] = {k: float(v) for k, v in (item.contributions or {}).items()}
        score = float(unit) if unit is not None else unit_score(raw, cold=False)
        items.append(
            Recommendation(
                item_id=item.item_id,
                rank=int(item.rank),
                score=score,
                raw_score=raw,
                title=item.title,
                **extra,
            )
        )
    body = RecommendationList(
        # clients echo it on /v1/events (impressions, clicks) so clicks join to this list
        recommendation_id=recommendation_id,
        user_id=user_id,
        items=items,
        unknown_items=list(result.unknown_items),
        cold_start=bool(result.cold_start),
        model_versions=dict(result.model_versions),
        **({"interleaved": True} if interleaved else {}),
    )
    return jsonify(body.model_dump(mode="json", exclude_unset=True))


def _status(
    index: int, event_id: str | None, status: Outcome, reason: str | None = None
) -> EventResult:
    return EventResult(index=index, event_id=event_id, status=status, reason=reason)


def _raw_event_id(record: Any) -> str | None:
    value = record.get("event_id") if isinstance(record, Mapping) else None
    return value if isinstance(value, str) and is_valid_unicode(value) else None
