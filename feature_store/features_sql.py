"""The reads behind the point-in-time features: the event log from DuckDB, as integer codes.

One query reads the events the features need (sorted by ``(ts, event_id)`` after), with user
and item ids replaced by integer codes (DuckDB joins them against small dictionary tables,
which is far cheaper than encoding ten million strings in Python) and the event type reduced
to the flags the definitions use.  For a small request set the query is restricted to the rows
that can matter: the requested items' events, the requested users' interactions, and the full
interaction sequences of every user who touched one of the requested users' recent items (for
co-visitation).  Every feature itself is computed in ``features_snapshot`` from these arrays.
Relation names passed here must already be validated and quoted.
"""

from __future__ import annotations

from feature_store.rules_sql import positive_sql

# The event's flags packed in one byte (less to transfer and reorder than four booleans):
# FLAG_BITS order, bit 0 first.
FLAG_BITS: tuple[str, ...] = ("is_pos", "is_impr", "is_click", "has_rating")
_FLAGS = f"""(CASE WHEN {positive_sql("e")} THEN 1 ELSE 0 END
            + CASE WHEN e.event_type = 'impression' THEN 2 ELSE 0 END
            + CASE WHEN e.event_type = 'click' THEN 4 ELSE 0 END
            + CASE WHEN e.event_type = 'rate' AND e.value IS NOT NULL THEN 8 ELSE 0 END
           )::UTINYINT AS flags,
           CASE WHEN e.event_type = 'rate' THEN coalesce(e.value, 0) ELSE 0 END AS rating"""
RECENT_ITEMS = 5


def users_sql(events: str) -> str:
    """Every user id of the relation with its code ``u`` (0.., in id order): the user
    dictionary.  Deterministic, so the events query joins the same SQL as a subquery: joining a
    registered Arrow copy of it instead hung DuckDB 1.5 (idle in ``WaitForTask``) when the
    result was materialized at 1e7 events (benchmarks/scale.py)."""
    return (
        "SELECT user_id, (row_number() OVER (ORDER BY user_id) - 1)::UINTEGER AS u "
        f"FROM (SELECT DISTINCT user_id FROM {events})"
    )


def items_sql(events: str) -> str:
    """Every item id of the catalog and of the relation with its code ``i`` (the item
    dictionary; see ``users_sql``)."""
    return (
        "SELECT item_id, (row_number() OVER (ORDER BY item_id) - 1)::UINTEGER AS i "
        f"FROM (SELECT item_id FROM items UNION SELECT item_id FROM {events})"
    )


def item_keys_sql() -> str:
    """Genres and category of every catalog item."""
    return "SELECT i.item_id, i.genres, i.category FROM items i"


def events_sql(events: str, users: str, items: str) -> str:
    """The whole relation as codes and flags (the caller sorts by ``ts, event_id``).

    ``users`` and ``items`` name registered dictionaries ``(user_id, u)`` and ``(item_id, i)``.
    """
    return f"""
    SELECT du.u, di.i, epoch_us(e.ts) AS ts, e.event_id, {_FLAGS}
    FROM {events} e JOIN {users} du USING (user_id) JOIN {items} di USING (item_id)"""


def restricted_events_sql(events: str, users: str, items: str, requests: str) -> str:
    """The rows a small request set ``requests (user_id, item_id, as_of)`` can depend on.

    ``in_items``: an event of a requested item (impressions included); ``in_users``: an
    interaction of a requested user; ``in_seq``: an interaction of a user who touched one of
    the requested users' last ``RECENT_ITEMS`` interactions before a requested ``as_of`` (the
    co-visitation pairs of those items need every such user's whole sequence).
    """
    return f"""
    WITH moments AS (SELECT DISTINCT user_id, as_of FROM {requests}),
    recent AS (
        SELECT DISTINCT item_id FROM (
            SELECT e.item_id, row_number() OVER (
                PARTITION BY m.user_id, m.as_of ORDER BY e.ts DESC, e.event_id DESC) AS rn
            FROM moments m JOIN {events} e ON e.user_id = m.user_id AND e.ts < m.as_of
            WHERE e.event_type <> 'impression')
        WHERE rn <= {RECENT_ITEMS}),
    seq_users AS (
        SELECT DISTINCT user_id FROM {events} WHERE item_id IN (SELECT item_id FROM recent)),
    marked AS (
        SELECT e.*,
               e.item_id IN (SELECT item_id FROM {requests}) AS in_items,
               e.event_type <> 'impression'
                   AND e.user_id IN (SELECT user_id FROM {requests}) AS in_users,
               e.event_type <> 'impression'
                   AND e.user_id IN (SELECT user_id FROM seq_users) AS in_seq
        FROM {events} e)
    SELECT du.u, di.i, epoch_us(e.ts) AS ts, e.event_id, {_FLAGS},
           e.in_items, e.in_users, e.in_seq
    FROM marked e JOIN {users} du USING (user_id) JOIN {items} di USING (item_id)
    WHERE e.in_items OR e.in_users OR e.in_seq"""
