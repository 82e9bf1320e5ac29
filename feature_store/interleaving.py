"""Interleaved lists in the store: written by the event writer, read by ``recsys evaluate
--online``.

A served team-draft list is one row per item of ``interleaved_items`` (schema.sql) with the
team that picked it.  A list is credited with the positives (the store's task:
``recsys_positive``) that its user logged on its items with its ``recommendation_id``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb

from feature_store.db import transaction
from feature_store.rules_sql import positive_sql
from recsys.core.rules import CHALLENGER_TEAM, CHAMPION_TEAM


@dataclass(frozen=True)
class ListOutcome:
    """One interleaved list and how many of each team's items its user engaged with."""

    recommendation_id: str
    served_at: datetime
    champion_version: str
    challenger_version: str
    champion_clicks: int
    challenger_clicks: int


def write_interleaved(con: duckdb.DuckDBPyConnection, lists: Sequence[Mapping[str, Any]]) -> int:
    """Store served lists (``recommendation_id``, ``user_id``, ``served_at`` (ISO or datetime),
    ``champion_version``, ``challenger_version``, ``items``, ``teams``); a list already stored
    is skipped (the writer may deliver one twice).  Returns how many lists were new."""
    ids = list(dict.fromkeys(str(x["recommendation_id"]) for x in lists))
    if not ids:
        return 0
    known = {
        str(r[0])
        for r in con.execute(
            "SELECT DISTINCT recommendation_id FROM interleaved_items "
            "WHERE recommendation_id IN (SELECT unnest($ids))",
            {"ids": ids},
        ).fetchall()
    }
    rows: list[tuple[Any, ...]] = []
    for x in lists:
        rid = str(x["recommendation_id"])
        if rid in known:
            continue
        known.add(rid)
        items, teams = list(x["items"]), list(x["teams"])
        if len(items) != len(teams):
            raise ValueError(f"list {rid}: {len(items)} items but {len(teams)} teams")
        served = x["served_at"]
        served_at = datetime.fromisoformat(served) if isinstance(served, str) else served
        for position, (item, team) in enumerate(zip(items, teams, strict=True)):
            rows.append(
                (
                    rid,
                    position,
                    str(item),
                    str(team),
                    str(x["user_id"]),
                    served_at,
                    str(x["champion_version"]),
                    str(x["challenger_version"]),
                )
            )
    if rows:
        with transaction(con):
            con.executemany("INSERT INTO interleaved_items VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    return len({r[0] for r in rows})


def list_outcomes(
    con: duckdb.DuckDBPyConnection, since: datetime | None = None
) -> list[ListOutcome]:
    """Every interleaved list served at or after ``since`` (all when ``None``) with the number
    of distinct items of each team that its user engaged with through that list, oldest first."""
    rows = con.execute(
        f"""
        WITH lists AS (
            SELECT * FROM interleaved_items
            WHERE $since IS NULL OR served_at >= $since
        ),
        engaged AS (
            SELECT DISTINCT l.recommendation_id, l.item_id, l.team
            FROM lists l
            JOIN events e
              ON e.recommendation_id = l.recommendation_id
             AND e.item_id = l.item_id
             AND e.user_id = l.user_id
            WHERE {positive_sql("e")}
        ),
        heads AS (
            SELECT recommendation_id, min(served_at) AS served_at,
                   any_value(champion_version) AS champion_version,
                   any_value(challenger_version) AS challenger_version
            FROM lists GROUP BY recommendation_id
        )
        SELECT h.recommendation_id, h.served_at, h.champion_version, h.challenger_version,
               count(g.item_id) FILTER (WHERE g.team = $champion),
               count(g.item_id) FILTER (WHERE g.team = $challenger)
        FROM heads h LEFT JOIN engaged g USING (recommendation_id)
        GROUP BY ALL
        ORDER BY h.served_at, h.recommendation_id
        """,
        {"since": since, "champion": CHAMPION_TEAM, "challenger": CHALLENGER_TEAM},
    ).fetchall()
    return [ListOutcome(str(r[0]), r[1], str(r[2]), str(r[3]), int(r[4]), int(r[5])) for r in rows]
