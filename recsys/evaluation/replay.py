"""Logged-click replay: re-rank logged impression lists and score them against the clicks.

An impression list is the set of ``impression`` events sharing a ``request_id`` (a MIND
impression); an item is clicked when a ``click`` event has the same request id and item.
Every system scores each list from point-in-time features (events strictly before the
impression's time, ``feature_store.features.compute_features``); the MIND metrics (AUC, MRR,
nDCG@5, nDCG@10; ``recsys.algorithms.metrics``) are averaged over lists with at least one click
and one non-click, as in the MIND competition.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import duckdb
import numpy as np
import polars as pl

from feature_store.features import compute_features
from feature_store.interactions import click_histories
from recsys.algorithms.metrics import auc, mrr, ndcg_graded
from recsys.algorithms.ranking import add_text_features, feature_matrix
from recsys.algorithms.text_index import user_text_vector
from recsys.core.errors import RecsysError
from recsys.core.rules import HISTORY_LENGTH

log = logging.getLogger(__name__)

Scorer = Callable[[pl.DataFrame], np.ndarray]


def impressions(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """(request_id, user_id, item_id, position, as_of, label) of every logged impression."""
    return (
        con.execute(
            """
        WITH clicks AS (SELECT DISTINCT request_id, item_id FROM events
                        WHERE event_type = 'click' AND request_id IS NOT NULL)
        SELECT i.request_id, i.user_id, i.item_id, coalesce(i.position, 0) AS position,
               i.ts AS as_of, (c.item_id IS NOT NULL)::INTEGER AS label
        FROM events i LEFT JOIN clicks c USING (request_id, item_id)
        WHERE i.event_type = 'impression' AND i.request_id IS NOT NULL
        ORDER BY i.request_id, position
        """
        )
        .pl()
        .with_columns(pl.col("as_of").cast(pl.Datetime("us")))
    )


def builtin_scorers() -> dict[str, Scorer]:
    """Systems that need no trained model: logged order and point-in-time popularity."""
    return {
        "logged_order": lambda f: -f["position"].cast(pl.Float64).to_numpy(),
        "popularity": lambda f: f["item_positives_all"].fill_null(0).to_numpy(),
        "recent_popularity": lambda f: f["item_events_7d"].fill_null(0).to_numpy(),
    }


def ranker_scorer(model: Any) -> Scorer:
    """A trained ranker over the replay rows (features it lacks, e.g. generator ranks, are NaN)."""

    return lambda f: model.predict(feature_matrix(f, model.feature_names))


def replay(
    con: duckdb.DuckDBPyConnection, scorers: dict[str, Scorer], text: Any | None = None
) -> dict[str, Any]:
    """Replay every impression list of the store under each scorer; MIND metrics per system."""

    started = time.perf_counter()
    rows = impressions(con)
    if rows.height == 0:
        raise RecsysError(
            "no impression events with a request id in the store; ingest a "
            "MIND-style log (`recsys ingest mind DIR`) before --replay"
        )
    feats = compute_features(con, rows.select("user_id", "item_id", "as_of"), events="events")
    frame = pl.concat([rows, feats.drop("user_id", "item_id", "as_of")], how="horizontal")
    scores = text.replay_scores(frame) if text is not None else np.full(frame.height, np.nan)
    frame = add_text_features(frame, scores)
    out: dict[str, Any] = {"systems": {}, "requests": int(rows["request_id"].n_unique())}
    for name, scorer in scorers.items():
        out["systems"][name] = score_lists(frame, scorer(frame))
        log.info("replay %-18s %s", name, {k: round(v, 4) for k, v in out["systems"][name].items()})
    out["seconds"] = round(time.perf_counter() - started, 2)
    return out


def score_lists(frame: pl.DataFrame, scores: np.ndarray) -> dict[str, Any]:
    """Mean MIND metrics over lists with both a click and a non-click."""
    f = frame.select("request_id", "label").with_columns(pl.Series("s", np.asarray(scores, float)))
    per: dict[str, list[float]] = {"auc": [], "mrr": [], "ndcg@5": [], "ndcg@10": []}
    for _, labels, s in f.group_by("request_id", maintain_order=True).agg("label", "s").iter_rows():
        y = np.asarray(labels, dtype=float)
        if y.sum() == 0 or y.sum() == len(y):
            continue
        sc = np.nan_to_num(np.asarray(s, dtype=float), nan=-np.inf)
        sc = np.where(np.isneginf(sc), np.finfo(float).min, sc)
        per["auc"].append(auc(y, sc))
        per["mrr"].append(mrr(y, sc))
        per["ndcg@5"].append(ndcg_graded(y, sc, 5))
        per["ndcg@10"].append(ndcg_graded(y, sc, 10))
    result: dict[str, Any] = {k: float(np.mean(v)) if v else float("nan") for k, v in per.items()}
    result["impressions"] = len(per["auc"])
    return result


def history_vectors(
    con: duckdb.DuckDBPyConnection, index: Any, frame: pl.DataFrame, recent: int = HISTORY_LENGTH
) -> np.ndarray:
    """Text scores from each request's click history strictly before the impression time."""
    reqs = frame.select("request_id", "user_id", "as_of").unique(maintain_order=True)
    hist = click_histories(con, reqs, recent)
    vec = {req: user_text_vector(index, None, history=items, recent=recent) for req, items in hist}
    out = np.full(frame.height, np.nan)
    groups = frame.with_row_index("_row").group_by("request_id", maintain_order=True)
    for req, rows_, items in groups.agg("_row", "item_id").iter_rows():
        v = vec.get(req)
        if v is not None:
            out[np.asarray(rows_)] = index.scores(v, list(items))
    return out


class HistoryText:
    """Text scores for replay rows from a ``TextIndex`` and the point-in-time click history."""

    def __init__(self, con: duckdb.DuckDBPyConnection, index: Any) -> None:
        self.con, self.index = con, index

    def replay_scores(self, frame: pl.DataFrame) -> np.ndarray:
        return history_vectors(self.con, self.index, frame)


def systems_for(names: Sequence[str] | None, extra: dict[str, Scorer]) -> dict[str, Scorer]:
    """Built-in scorers plus ``extra`` (e.g. the ranker, text), filtered to ``names``."""
    scorers = {**builtin_scorers(), **extra}
    if names:
        return {k: v for k, v in scorers.items() if k in names}
    return scorers
