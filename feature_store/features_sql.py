"""The reads behind the point-in-time features: events of the requested entities, from DuckDB.

Each query reads only what the features need (the requested items' events, the requested
users' events, the sequences of users who touched one of the requested users' recent items,
and the items' genres), so a request for 300 candidates reads a few thousand rows, not the
whole log.  Every feature itself is computed in ``features_frames`` from these frames.
Relation names passed here must already be validated and quoted.
"""

from __future__ import annotations

from feature_store.db import POSITIVE_EVENT_TYPES, POSITIVE_RATING

_POSITIVE_TYPES = ", ".join(f"'{t}'" for t in POSITIVE_EVENT_TYPES)
# Positive engagement: a rating >= POSITIVE_RATING or a positive event type.
POSITIVE_SQL = (
    f"((e.event_type = 'rate' AND e.value >= {POSITIVE_RATING}) "
    f"OR e.event_type IN ({_POSITIVE_TYPES}))"
)
_FLAGS = f"""{POSITIVE_SQL} AS is_pos,
           e.event_type = 'impression' AS is_impr,
           e.event_type = 'click' AS is_click,
           CASE WHEN e.event_type = 'rate' THEN e.value END AS rating"""


def item_events_sql(events: str, requests: str) -> str:
    """Every event (impressions included) of the requested items."""
    return f"""
    SELECT e.item_id, e.ts, {_FLAGS}
    FROM {events} e
    WHERE e.item_id IN (SELECT DISTINCT item_id FROM {requests})"""


def user_events_sql(events: str, requests: str) -> str:
    """The requested users' interactions (impressions excluded)."""
    return f"""
    SELECT e.user_id, e.item_id, e.event_id, e.ts, {_FLAGS}
    FROM {events} e
    WHERE e.user_id IN (SELECT DISTINCT user_id FROM {requests})
      AND e.event_type <> 'impression'"""


def item_keys_sql(items: str) -> str:
    """Genres and category of the items listed in relation ``items``."""
    return f"""
    SELECT i.item_id, i.genres, i.category FROM items i
    WHERE i.item_id IN (SELECT item_id FROM {items})"""


def sequences_sql(events: str, recent_items: str) -> str:
    """Interactions of every user who touched one of ``recent_items`` (their full sequences)."""
    return f"""
    SELECT e.user_id, e.item_id, e.event_id, e.ts
    FROM {events} e
    WHERE e.event_type <> 'impression'
      AND e.user_id IN (
          SELECT DISTINCT x.user_id FROM {events} x
          WHERE x.item_id IN (SELECT item_id FROM {recent_items})
      )"""
