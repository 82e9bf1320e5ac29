"""Ranker training and evaluation frames under protocol v1, built in DuckDB and polars.

A group is (user, cutoff); its rows are the blender's candidates for that user from the events
before the cutoff; the label is the user's engagement with the candidate after the cutoff:

    the store task's grade (``recsys.core.rules.Task.grades``: ratings 3 / 2, engagement 1
    for protocol v1; purchase 2, click 1 for the event presets), 0 otherwise

Training reads ``events_fit_v1`` with cutoff ``val_start`` and labels from the ``val`` part
(text vectors of scope ``fit_v1``); test scoring reads ``events_train_v1`` with cutoff
``test_start`` (scope ``train_v1``).  On impression logs the training frame also holds the
items shown in the label window's served lists, as groups of their own
(``training.ranker.served``: hard negatives).
See docs/ranking.md.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import duckdb
import polars as pl

from feature_store.interactions import Interactions
from feature_store.rules_sql import label_sql, positive_sql
from recsys.algorithms.candidates import Blender, default_generators
from recsys.algorithms.ranking import TextFeatures, assemble
from recsys.core.config import Settings
from recsys.core.errors import TrainingError
from recsys.core.rules import FIT_SCOPE, TRAIN_SCOPE
from training.ranker.served import add_served_rows, candidate_rows, group_columns

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """Which protocol view, cutoff column, label part and text scope a frame is built from."""

    events: str
    cutoff: str
    label_part: str
    text_scope: str


FIT = Stage(
    events=FIT_SCOPE.events, cutoff="val_start", label_part="val", text_scope=FIT_SCOPE.name
)
TEST = Stage(
    events=TRAIN_SCOPE.events,
    cutoff="test_start",
    label_part="test",
    text_scope=TRAIN_SCOPE.name,
)


def cutoffs(con: duckdb.DuckDBPyConnection, stage: Stage) -> pl.DataFrame:
    """(user_id, as_of) of every user with a cutoff for ``stage``."""
    return (
        con.execute(
            f"SELECT user_id, {stage.cutoff} AS as_of FROM split_v1_users "
            f"WHERE {stage.cutoff} IS NOT NULL ORDER BY user_id"
        )
        .pl()
        .with_columns(pl.col("as_of").cast(pl.Datetime("us")))
    )


def labels(con: duckdb.DuckDBPyConnection, stage: Stage) -> pl.DataFrame:
    """(user_id, item_id, label): the best engagement in the stage's label part."""
    return con.execute(
        f"""
        SELECT e.user_id, e.item_id, max({label_sql("e")})::INTEGER AS label
        FROM events e JOIN split_v1 s USING (event_id)
        WHERE s.part = '{stage.label_part}'
        GROUP BY ALL
        """
    ).pl()


def build_frame(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    stage: Stage,
    *,
    text_index: Any | None,
    with_labels: bool = True,
) -> tuple[pl.DataFrame, list[str]]:
    """Candidates with features (and labels) for every user of ``stage``; generator names."""
    started = time.perf_counter()
    data = Interactions.from_store(con, stage.events)
    users = cutoffs(con, stage)
    if users.height == 0:
        raise TrainingError(
            "no users with a cutoff in split_v1_users; ingest ratings and materialize the split"
        )
    blender = Blender(default_generators(settings, text_index), n=settings.ranker.num_candidates)
    blender.fit(data)
    user_ids = users["user_id"].to_list()
    cands = blender.frame(user_ids, as_of=users["as_of"].to_list()).join(users, on="user_id")
    if with_labels and stage == FIT and settings.ranker.served_negatives:
        # impression logs: shown-not-clicked items of the label window are hard negatives
        cands = add_served_rows(con, blender, cands, users)
    log.info(
        "%s: %d candidates for %d users in %.1fs",
        stage.events,
        cands.height,
        users.height,
        time.perf_counter() - started,
    )
    text = TextFeatures(text_index, data) if text_index is not None else None
    frame = assemble(
        con,
        cands,
        events=stage.events,
        text=text,
        covisit_window_days=settings.ranker.covisit_window_days,
    )
    if with_labels:
        frame = frame.join(labels(con, stage), on=["user_id", "item_id"], how="left").with_columns(
            pl.col("label").fill_null(0).cast(pl.Int32)
        )
    log.info(
        "%s frame: %d rows x %d columns in %.1fs",
        stage.events,
        frame.height,
        frame.width,
        time.perf_counter() - started,
    )
    keys = [*group_columns(frame), "blend_rank", "item_id"]
    return frame.sort(keys, nulls_last=True), [g.name for g in blender.generators]


def candidate_recall(frame: pl.DataFrame, truth: pl.DataFrame) -> float:
    """Mean over users with >= 1 positive of (positives among candidates / positives).

    The served groups added for training are not candidates."""
    per_user = (
        truth.join(
            candidate_rows(frame)
            .select("user_id", "item_id")
            .with_columns(pl.lit(True).alias("hit")),
            on=["user_id", "item_id"],
            how="left",
        )
        .group_by("user_id")
        .agg(pl.col("hit").fill_null(False).mean().alias("recall"))
    )
    mean = per_user["recall"].mean()
    return float(mean) if isinstance(mean, int | float) else 0.0


def positives(con: duckdb.DuckDBPyConnection, part: str) -> pl.DataFrame:
    """(user_id, item_id) of the task's positives among the split events of ``part``."""
    return con.execute(
        f"SELECT DISTINCT user_id, item_id FROM split_v1 WHERE part = ? AND {positive_sql()}",
        [part],
    ).pl()
