"""Serving side of team-draft interleaving: one list from the champion's and the challenger's.

The drafted list keeps each item as the ranker that picked it scored and explained it, with
ranks renumbered; which team picked which item is recorded in the event log for the writer
(``EventLog.append_list``), never sent to the client.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from recsys.algorithms.interleaving import Interleaved, seed_for, team_draft
from recsys.core import rules
from recsys.pipeline.recommender import RecommendationResult


def interleave_results(
    champion: RecommendationResult,
    challenger: RecommendationResult,
    k: int,
    recommendation_id: str,
) -> tuple[RecommendationResult, Interleaved]:
    """The team-draft list of the two results (seeded by ``recommendation_id``) and its teams."""
    drafted = team_draft(
        [i.item_id for i in champion.items],
        [i.item_id for i in challenger.items],
        k,
        seed_for(recommendation_id),
    )
    by_team = {
        rules.CHAMPION_TEAM: {i.item_id: i for i in champion.items},
        rules.CHALLENGER_TEAM: {i.item_id: i for i in challenger.items},
    }
    items = tuple(
        dataclasses.replace(by_team[team][item], rank=n + 1)
        for n, (item, team) in enumerate(zip(drafted.items, drafted.teams, strict=True))
    )
    return dataclasses.replace(champion, items=items), drafted


def list_record(
    recommendation_id: str,
    user_id: str,
    drafted: Interleaved,
    champion_versions: dict[str, str],
    challenger_versions: dict[str, str],
) -> dict[str, Any]:
    """What the event log keeps of one served interleaved list (``feature_store.interleaving``)."""
    return {
        "recommendation_id": recommendation_id,
        "user_id": user_id,
        # naive UTC, like the store's event times
        "served_at": datetime.now(UTC).replace(tzinfo=None).isoformat(),
        "champion_version": champion_versions.get(rules.RANKER_MODEL_NAME, "?"),
        "challenger_version": challenger_versions.get(rules.RANKER_MODEL_NAME, "?"),
        "items": list(drafted.items),
        "teams": list(drafted.teams),
    }
