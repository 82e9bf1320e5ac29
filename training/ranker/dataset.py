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

import itertools
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import polars as pl

from feature_store.features import FeatureSnapshot
from feature_store.interactions import Interactions
from feature_store.rules_sql import label_sql, positive_sql
from recsys.algorithms.candidates import (
    Blender,
    candidate_limits,
    candidate_weights,
    default_generators,
)
from recsys.algorithms.ranking import TextFeatures, assemble
from recsys.core import rules
from recsys.core.config import Settings
from recsys.core.errors import TrainingError
from recsys.core.rules import FIT_SCOPE, TRAIN_SCOPE
from training import cluster
from training.ranker.served import add_served_rows, candidate_rows, group_columns, served_items

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
    users: Sequence[str] | None = None,
    max_users: int | None = None,
    client: Any | None = None,
) -> tuple[pl.DataFrame, list[str]]:
    """Candidates with features (and labels) for the users of ``stage``; generator names.

    ``users`` restricts the groups to those users; ``max_users`` keeps a seeded sample of them
    (``rules.sample_users``).  Groups are built ``ranker.frame_chunk_users`` users at a time
    with float features stored as float32, so peak memory follows the chunk, not the store.
    With a Dask ``client`` (``training.cluster.connect``) the chunks are built on its workers
    (``_on_cluster``); the frame is the same.
    """
    started = time.perf_counter()
    data = Interactions.from_store(con, stage.events)
    groups = select_groups(cutoffs(con, stage), users, max_users, settings.seed)
    if groups.height == 0:
        raise TrainingError(
            "no users with a cutoff in split_v1_users; ingest ratings and materialize the split"
        )
    blender = Blender(
        default_generators(settings, text_index),
        n=settings.ranker.num_candidates,
        limits=candidate_limits(settings),
        weights=candidate_weights(settings),
    )
    blender.fit(data)
    log.info("%s: generators fitted in %.1fs", stage.events, time.perf_counter() - started)
    text = TextFeatures(text_index, data) if text_index is not None else None
    truth = labels(con, stage) if with_labels else None
    step = settings.ranker.frame_chunk_users
    chunks = [groups.slice(k, step) for k in range(0, groups.height, step)]
    built: Iterable[pl.DataFrame] = (
        (_chunk_frame(con, settings, stage, blender, text, c, truth) for c in chunks)
        if client is None
        else _on_cluster(client, con, settings, stage, (blender, text), chunks, truth)
    )
    parts = []
    for part, chunk_users in zip(
        built, itertools.accumulate(c.height for c in chunks), strict=True
    ):
        parts.append(part)
        log.info(
            "%s frame: %d of %d users, %d rows (%.0fs)",
            stage.events,
            chunk_users,
            groups.height,
            sum(p.height for p in parts),
            time.perf_counter() - started,
        )
    frame = pl.concat(parts, how="vertical_relaxed", rechunk=True)
    del parts
    log.info(
        "%s frame: %d rows x %d columns for %d users (%.0f MB) in %.1fs",
        stage.events,
        frame.height,
        frame.width,
        groups.height,
        frame.estimated_size("mb"),
        time.perf_counter() - started,
    )
    return frame, [g.name for g in blender.generators]


def select_groups(
    groups: pl.DataFrame, users: Sequence[str] | None, max_users: int | None, seed: int
) -> pl.DataFrame:
    """The (user_id, as_of) rows of ``users`` (all when None), sampled down to ``max_users``."""
    if users is not None:
        groups = groups.filter(pl.col("user_id").is_in(list(users)))
    if max_users is not None and groups.height > max_users:
        kept = rules.sample_users(groups["user_id"].to_list(), max_users, seed)
        log.info("sampled %d of %d users (seed %d)", len(kept), groups.height, seed)
        groups = groups.filter(pl.col("user_id").is_in(kept))
    return groups.sort("user_id")


def _on_cluster(
    client: Any,
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    stage: Stage,
    fitted: tuple[Blender, TextFeatures | None],
    chunks: list[pl.DataFrame],
    truth: pl.DataFrame | None,
) -> Iterator[pl.DataFrame]:
    """``_chunk_frame`` of each chunk on the workers of ``client``, in chunk order.

    The workers never open the store (the job holds it read-write): everything a chunk reads
    of it is read here once and shipped.  The fitted generators and text features, and a
    ``FeatureSnapshot`` of the stage's events (the point-in-time features for any ``as_of``
    from memory: the values the store gives, ``feature_store.features``), go to every worker
    once (``scatter``, broadcast); each task carries its chunk's groups, labels and, on
    impression logs, served items.
    """
    started = time.perf_counter()
    snapshot = FeatureSnapshot.build(
        con, events=stage.events, covisit_window_days=settings.ranker.covisit_window_days
    )
    served = truth is not None and stage == FIT and settings.ranker.served_negatives
    shown = served_items(con, pl.concat(chunks)) if served else None
    [shared] = client.scatter([(*fitted, snapshot)], broadcast=True)
    log.info(
        "%s frame on %d Dask workers: %d chunks; state shipped in %.1fs",
        stage.events,
        cluster.worker_count(client),
        len(chunks),
        time.perf_counter() - started,
    )

    def of(frame: pl.DataFrame | None, chunk: pl.DataFrame) -> pl.DataFrame | None:
        return (
            None if frame is None else frame.join(chunk.select("user_id"), on="user_id", how="semi")
        )

    futures = [
        client.submit(
            _remote_chunk, shared, settings, stage, c, of(truth, c), of(shown, c), pure=False
        )
        for c in chunks
    ]
    try:
        for future in futures:
            yield future.result()
    finally:
        client.cancel(futures)


def _remote_chunk(
    shared: tuple[Blender, TextFeatures | None, FeatureSnapshot],
    settings: Settings,
    stage: Stage,
    groups: pl.DataFrame,
    truth: pl.DataFrame | None,
    shown: pl.DataFrame | None,
) -> pl.DataFrame:
    """One chunk on a worker: no store, an in-memory DuckDB that nothing reads from."""
    blender, text, snapshot = shared
    with duckdb.connect() as con:
        return _chunk_frame(
            con, settings, stage, blender, text, groups, truth, snapshot=snapshot, shown=shown
        )


def _chunk_frame(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    stage: Stage,
    blender: Blender,
    text: TextFeatures | None,
    groups: pl.DataFrame,
    truth: pl.DataFrame | None,
    *,
    snapshot: FeatureSnapshot | None = None,
    shown: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """One chunk of users' candidates + features (+ labels), sorted by (user, blend rank).
    ``snapshot`` and ``shown`` (served items) answer what ``con`` would be asked otherwise."""
    cands = blender.frame(groups["user_id"].to_list(), as_of=groups["as_of"].to_list()).join(
        groups, on="user_id"
    )
    if truth is not None and stage == FIT and settings.ranker.served_negatives:
        # impression logs: shown-not-clicked items of the label window are hard negatives
        cands = add_served_rows(con, blender, cands, groups, shown=shown)
    frame = assemble(
        con,
        cands,
        events=stage.events,
        text=text,
        covisit_window_days=settings.ranker.covisit_window_days,
        snapshot=snapshot,
    )
    if truth is not None:
        frame = frame.join(truth, on=["user_id", "item_id"], how="left").with_columns(
            pl.col("label").fill_null(0).cast(pl.Int32)
        )
    keys = [*group_columns(frame), "blend_rank", "item_id"]
    return frame.with_columns(pl.col(pl.Float64).cast(pl.Float32)).sort(keys, nulls_last=True)


def spec_settings(settings: Settings, spec: dict[str, Any]) -> Settings:
    """``settings`` with the candidate settings a ranker was trained with (from its spec;
    a spec without ``candidate_limits`` predates the caps: its generators were uncapped)."""
    n = int(spec.get("num_candidates", settings.ranker.num_candidates))
    limits = spec.get("candidate_limits", {})
    # a spec without ``candidate_weights`` predates them: every generator weighed 1
    weights = spec.get("candidate_weights", {})
    return settings.replace(
        **{
            "ranker.num_candidates": n,
            "ranker.text_candidates": limits.get("text", n),
            "ranker.text_cold_candidates": limits.get("text_cold", n),
            "ranker.candidate_weights": tuple(f"{k}:{v}" for k, v in weights.items()),
        }
    )


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
