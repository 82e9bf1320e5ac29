"""Training pairs (user text, item, label) from the store, point in time.

Every pair's user text is rebuilt from the user's events strictly before the pair's event, and
only events of ``events_fit_v1`` are read, so no validation or test interaction informs training.

- positives: the store's task (``recsys.core.rules.Task``: a good rating, click, like, share,
  purchase by default);
- explicit negatives, also from the task: low ratings and, when ``impression_negatives`` is on,
  the items of a served list (impressions sharing a request id) that the user did not click;
- sampled negatives: ``negatives_per_positive`` items per positive, drawn by popularity (count
  of fit-period events) among items the user never touched in the fit period.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import duckdb
import numpy as np

from feature_store.rules_sql import low_rating_sql
from feature_store.task import stored_task
from recsys.core.config import Settings
from recsys.core.errors import TrainingError
from recsys.core.rules import EXPOSURE_EVENT_TYPE, FIT_SCOPE
from training.text.texts import (
    POSITIVE_SQL,
    ItemSummaries,
    UserHistory,
    item_summaries,
    user_histories,
)

log = logging.getLogger(__name__)

FIT_RELATION = FIT_SCOPE.events


@dataclass(frozen=True)
class PairSet:
    """Parallel lists: the user text, the item id and the label (1 positive, 0 negative)."""

    user_ids: list[str]
    user_texts: list[str]
    item_ids: list[str]
    labels: np.ndarray  # float32
    kinds: list[str]  # positive | low_rating | not_clicked | sampled

    def __len__(self) -> int:
        return len(self.item_ids)

    def counts(self) -> dict[str, int]:
        kinds, n = np.unique(np.array(self.kinds), return_counts=True)
        return {str(k): int(c) for k, c in zip(kinds, n, strict=True)}


@dataclass(frozen=True)
class _Row:
    user_id: str
    item_id: str
    ts: datetime
    kind: str


def _labelled_events(con: duckdb.DuckDBPyConnection, relation: str) -> list[_Row]:
    """Positives and explicit negatives of the store's task, in (user, time, item) order."""
    not_clicked = (
        f"""UNION ALL
        SELECT i.user_id, i.item_id, i.ts, 'not_clicked' FROM ev i
        WHERE i.event_type = '{EXPOSURE_EVENT_TYPE}' AND i.request_id IS NOT NULL
          AND NOT EXISTS (
              SELECT 1 FROM ev c
              WHERE c.user_id = i.user_id AND c.item_id = i.item_id
                AND c.request_id = i.request_id AND c.event_type <> '{EXPOSURE_EVENT_TYPE}')"""
        if stored_task(con).impression_negatives
        else ""
    )
    rows = con.execute(
        f"""
        WITH ev AS (SELECT * FROM {relation})
        SELECT user_id, item_id, ts, 'positive' AS kind FROM ev WHERE {POSITIVE_SQL}
        UNION ALL
        SELECT user_id, item_id, ts, 'low_rating' FROM ev WHERE {low_rating_sql()}
        {not_clicked}
        ORDER BY 1, 3, 2
        """
    ).fetchall()
    return [_Row(str(u), str(i), ts, str(k)) for u, i, ts, k in rows]


def _popularity(con: duckdb.DuckDBPyConnection, relation: str) -> tuple[np.ndarray, np.ndarray]:
    rows = con.execute(
        f"""
        SELECT it.item_id, count(e.item_id) + 1 AS n
        FROM items it LEFT JOIN {relation} e ON e.item_id = it.item_id
        GROUP BY it.item_id ORDER BY it.item_id
        """
    ).fetchall()
    ids = np.array([str(r[0]) for r in rows], dtype=object)
    weights = np.array([float(r[1]) for r in rows])
    return ids, weights / weights.sum()


def _touched(con: duckdb.DuckDBPyConnection, relation: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for user_id, item_id in con.execute(
        f"SELECT DISTINCT user_id, item_id FROM {relation}"
    ).fetchall():
        out.setdefault(str(user_id), set()).add(str(item_id))
    return out


def build_training_pairs(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    *,
    max_pairs: int | None = None,
    relation: str = FIT_RELATION,
    summaries: ItemSummaries | None = None,
) -> PairSet:
    """Point-in-time training pairs from ``relation`` (default the protocol's fit events).

    Raises ``TrainingError`` when there are no positives or no negatives at all.
    """
    rng = np.random.default_rng(settings.seed)
    text_cfg = settings.text
    summaries = summaries or item_summaries(con)
    histories = user_histories(con, relation)
    events = _labelled_events(con, relation)
    # A pair needs some history to describe the user: the first liked item has none.
    events = [r for r in events if _has_history(histories.get(r.user_id), r.ts)]
    positives = [r for r in events if r.kind == "positive"]
    if not positives:
        raise TrainingError(
            f"no positive interactions with prior history in {relation}; the text model needs "
            f"users with at least two positives ({stored_task(con).describe()})"
        )
    pop_ids, pop_p = _popularity(con, relation)
    touched = _touched(con, relation)
    rows = list(events)
    for r in positives:
        for item_id in _sample_negatives(
            rng, pop_ids, pop_p, touched.get(r.user_id, set()), text_cfg.negatives_per_positive
        ):
            rows.append(_Row(r.user_id, item_id, r.ts, "sampled"))
    if not any(r.kind != "positive" for r in rows):
        raise TrainingError(
            "training set is one-class: no low ratings, unclicked impressions or sampleable "
            "items to use as negatives; add items to the catalog or more interactions"
        )
    cap = max_pairs if max_pairs is not None else (text_cfg.max_pairs or None)
    if cap is not None and cap < 2:
        raise TrainingError(f"--max-pairs must be at least 2, got {cap}")
    if cap is not None and len(rows) > cap:
        keep = np.sort(rng.choice(len(rows), size=cap, replace=False))
        rows = [rows[k] for k in keep]
    labels = np.array([1.0 if r.kind == "positive" else 0.0 for r in rows], dtype=np.float32)
    if labels.min() == labels.max():
        raise TrainingError(
            f"the {len(rows)} sampled training pairs are all of one class; raise --max-pairs"
        )
    pairs = PairSet(
        user_ids=[r.user_id for r in rows],
        user_texts=[
            histories[r.user_id].text_before(r.ts, summaries, text_cfg.user_history_items)
            for r in rows
        ],
        item_ids=[r.item_id for r in rows],
        labels=labels,
        kinds=[r.kind for r in rows],
    )
    log.info("training pairs from %s: %d (%s)", relation, len(pairs), pairs.counts())
    return pairs


def _has_history(hist: UserHistory | None, ts: datetime) -> bool:
    if hist is None:
        return False
    # Both lists are in time order, so their first entries are the earliest.
    firsts = [lst[0][0] for lst in (hist.liked, hist.notes) if lst]
    return bool(firsts) and min(firsts) < ts


def _sample_negatives(
    rng: np.random.Generator, ids: np.ndarray, p: np.ndarray, exclude: set[str], n: int
) -> list[str]:
    if n <= 0 or len(ids) == 0:
        return []
    out: list[str] = []
    # Oversample then filter: the excluded set is small next to the catalog.
    for _ in range(4):
        draw = rng.choice(len(ids), size=2 * n + len(exclude) // 50 + 2, p=p)
        out.extend(
            str(ids[k]) for k in draw if str(ids[k]) not in exclude and str(ids[k]) not in out
        )
        if len(out) >= n:
            return out[:n]
    return out
