"""Product rules, each defined once: every layer that needs one imports it from here.

What counts as a positive interaction, the ranker's label grades, the protocol split's scopes,
the registered model names, how metric names are spelled and how much history a user vector
uses.  Plain values and small pure functions; SQL built from them lives in ``feature_store``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# -- positives and labels ----------------------------------------------------------------------

# Engagement events that count as a positive signal whatever their value.
POSITIVE_EVENT_TYPES: tuple[str, ...] = ("click", "like", "share", "purchase")
# A ``rate`` event is positive when its value is at least this (protocol v1: rating >= 4.0).
POSITIVE_RATING = 4.0
# The ranker's graded labels, best first: (minimum rating, grade); positive engagement events
# without a qualifying rating get ``ENGAGEMENT_GRADE``, anything else 0.
RATING_GRADES: tuple[tuple[float, int], ...] = ((4.5, 3), (POSITIVE_RATING, 2))
ENGAGEMENT_GRADE = 1


def is_positive(event_type: str, value: float | None) -> bool:
    """The positive-interaction rule on one event (the SQL form is ``feature_store.rules_sql``)."""
    if event_type == "rate":
        return value is not None and value >= POSITIVE_RATING
    return event_type in POSITIVE_EVENT_TYPES


def label_grade(event_type: str, value: float | None) -> int:
    """The ranker's label for one event: a rating grade, the engagement grade, or 0."""
    if event_type == "rate":
        for threshold, grade in RATING_GRADES:
            if value is not None and value >= threshold:
                return grade
        return 0
    return ENGAGEMENT_GRADE if event_type in POSITIVE_EVENT_TYPES else 0


# -- protocol v1 split -------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitScope:
    """A view of the store's events: what a model fitted in this scope may see."""

    name: str  # the scope of stored user embeddings
    events: str  # the events relation


FIT_SCOPE = SplitScope("fit_v1", "events_fit_v1")  # fit part: ranker training, text model fit
TRAIN_SCOPE = SplitScope("train_v1", "events_train_v1")  # fit + val: scoring test users
LIVE_SCOPE = SplitScope("live", "events")  # everything: serving
SCOPES: Mapping[str, SplitScope] = {s.name: s for s in (FIT_SCOPE, TRAIN_SCOPE, LIVE_SCOPE)}

# Test positives whose item has at most this many train ratings form the cold-item slice; the
# same bound marks the items the cold text generator proposes.
COLD_ITEM_MAX_EVENTS = 5

# -- registered models -------------------------------------------------------------------------

TEXT_MODEL_NAME = "text-scorer"
RANKER_MODEL_NAME = "ranker"
MODEL_NAMES: tuple[str, ...] = (TEXT_MODEL_NAME, RANKER_MODEL_NAME)
CHAMPION_ALIAS = "champion"

# -- user history ------------------------------------------------------------------------------

# A user's text vector is the mean of their latest this-many positive items' embeddings.
HISTORY_LENGTH = 20

# -- metric names ------------------------------------------------------------------------------


def metric_name(metric: str, k: int | None = None, *, prefix: str = "") -> str:
    """One spelling for every report: ``metric_name("ndcg", 10, prefix="val_")`` is
    ``val_ndcg@10``; ``mlflow_key`` turns it into the key MLflow accepts."""
    return f"{prefix}{metric}" if k is None else f"{prefix}{metric}@{k}"


def mlflow_key(name: str) -> str:
    """MLflow metric keys cannot contain '@': ``val_ndcg@10`` is logged as ``val_ndcg_at_10``."""
    return name.replace("@", "_at_")


def mlflow_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """``metrics`` with MLflow-safe keys."""
    return {mlflow_key(k): float(v) for k, v in metrics.items()}
