"""Product rules, each defined once: every layer that needs one imports it from here.

What counts as a positive interaction, the ranker's label grades, the protocol split's scopes,
the registered model names, how metric names are spelled and how much history a user vector
uses.  Plain values and small pure functions; SQL built from them lives in ``feature_store``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# -- positives, explicit negatives and labels: the task ---------------------------------------

TASK_PRESETS_NAMES: tuple[str, ...] = ("ratings", "impressions", "events")
EXPOSURE_EVENT_TYPE = "impression"  # shown to the user; a click in the same list engages with it


@dataclass(frozen=True)
class Grade:
    """A label grade: ``event_type`` events (``value >= min_value`` when set) get ``grade``."""

    event_type: str
    grade: int
    min_value: float | None = None

    def matches(self, event_type: str, value: float | None) -> bool:
        if event_type != self.event_type:
            return False
        return self.min_value is None or (value is not None and value >= self.min_value)

    def spec(self) -> str:
        cond = "" if self.min_value is None else f">={self.min_value:g}"
        return f"{self.event_type}{cond}:{self.grade}"


@dataclass(frozen=True)
class Task:
    """What the log teaches: positives, explicit negatives and the ranker's label grades.

    One instance per store and settings (``feature_store.task.apply_task`` resolves it and
    installs it as SQL macros); every layer that decides "positive" goes through it.
    """

    preset: str
    positive_event_types: tuple[str, ...]  # positive whatever their value
    positive_rating: float | None  # a ``rate`` event at or above is positive (None: never)
    negative_rating: float | None  # a ``rate`` event at or below is an explicit negative
    impression_negatives: bool  # shown but not clicked in the same served list: negative
    grades: tuple[Grade, ...]  # best first; the first that matches wins, else 0

    def is_positive(self, event_type: str, value: float | None) -> bool:
        if event_type == "rate":
            return (
                self.positive_rating is not None
                and value is not None
                and (value >= self.positive_rating)
            )
        return event_type in self.positive_event_types

    def is_explicit_negative(self, event_type: str, value: float | None) -> bool:
        """A low rating (the SQL form adds unclicked impressions, which need the list)."""
        return (
            event_type == "rate"
            and self.negative_rating is not None
            and value is not None
            and value <= self.negative_rating
        )

    def label_grade(self, event_type: str, value: float | None) -> int:
        for g in self.grades:
            if g.matches(event_type, value):
                return g.grade
        return 0

    def describe(self) -> str:
        rating = (
            f"rate >= {self.positive_rating:g}" if self.positive_rating is not None else "no rating"
        )
        return (
            f"task {self.preset}: positive = {', '.join(self.positive_event_types)} or {rating}; "
            f"explicit negatives = "
            + ", ".join(
                x
                for x in (
                    f"rate <= {self.negative_rating:g}" if self.negative_rating is not None else "",
                    "impressions not clicked" if self.impression_negatives else "",
                )
                if x
            )
            + f"; grades {' '.join(g.spec() for g in self.grades)}"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "preset": self.preset,
            "positive_event_types": list(self.positive_event_types),
            "positive_rating": self.positive_rating,
            "negative_rating": self.negative_rating,
            "impression_negatives": self.impression_negatives,
            "grades": [g.spec() for g in self.grades],
        }


def parse_grade(spec: str) -> Grade:
    """``"purchase:2"`` or ``"rate>=4.5:3"`` -> ``Grade``; ``ValueError`` says what is wrong."""
    head, sep, grade = spec.strip().rpartition(":")
    if not sep or not head:
        raise ValueError(f"grade {spec!r} must read EVENT_TYPE[>=VALUE]:GRADE, e.g. purchase:2")
    event_type, cmp, threshold = head.partition(">=")
    try:
        return Grade(event_type.strip().lower(), int(grade), float(threshold) if cmp else None)
    except ValueError as exc:
        raise ValueError(f"grade {spec!r}: GRADE must be an integer, VALUE a number") from exc


# the product's candidate generators (recsys.algorithms.candidates.default_generators)
GENERATOR_NAMES = (
    "covisit",
    "text",
    "text_cold",
    "als",
    "item_knn",
    "genre",
    "recent_pop",
    "popularity",
)


def parse_generator_weights(entries: Sequence[str]) -> dict[str, float]:
    """``("als:2", ...)`` -> ``{"als": 2.0}``; ``ValueError`` says what is wrong."""
    out: dict[str, float] = {}
    for entry in entries:
        name, sep, value = str(entry).partition(":")
        try:
            weight = float(value) if sep else float("nan")
        except ValueError:
            weight = float("nan")
        if name.strip() not in GENERATOR_NAMES or not np.isfinite(weight) or weight < 0:
            raise ValueError(
                f"{entry!r} must read GENERATOR:WEIGHT with a weight >= 0 and a generator among "
                f"{', '.join(GENERATOR_NAMES)}, e.g. als:2"
            )
        out[name.strip()] = weight
    return out


_ENGAGEMENT = ("click", "like", "share", "purchase")
POSITIVE_RATING = 4.0  # protocol v1: rating >= 4.0
LOW_RATING = 2.5  # a rating at or below is an explicit negative


# ``ratings`` is protocol v1's task (MovieLens); ``impressions`` logs (MIND-style) have served
# lists; ``events`` logs (clicks, purchases) have neither ratings nor lists.
def _engagement_task(name: str) -> Task:
    """Click/impression and plain-event logs share one rule: engagement is positive, purchases
    and high ratings weigh double."""
    return Task(
        name,
        _ENGAGEMENT,
        POSITIVE_RATING,
        LOW_RATING,
        True,
        (
            Grade("purchase", 2),
            Grade("rate", 2, POSITIVE_RATING),
            *(Grade(t, 1) for t in _ENGAGEMENT[:3]),
        ),
    )


TASK_PRESETS: Mapping[str, Task] = {
    "ratings": Task(
        "ratings",
        _ENGAGEMENT,
        POSITIVE_RATING,
        LOW_RATING,
        True,
        (
            Grade("rate", 3, 4.5),
            Grade("rate", 2, POSITIVE_RATING),
            *(Grade(t, 1) for t in _ENGAGEMENT),
        ),
    ),
    "impressions": _engagement_task("impressions"),
    "events": _engagement_task("events"),
}
DEFAULT_TASK = TASK_PRESETS["ratings"]


def detect_preset(event_types: set[str], has_served_lists: bool) -> str:
    """``auto``: ratings when the log has ``rate`` events, impressions when it has served lists
    (impressions with a request id), else events."""
    if "rate" in event_types:
        return "ratings"
    return "impressions" if has_served_lists else "events"


def make_task(
    preset: str,
    *,
    positive_event_types: tuple[str, ...] = (),
    positive_rating: float | None = None,
    negative_rating: float | None = None,
    grades: tuple[str, ...] = (),
    impression_negatives: bool | None = None,
) -> Task:
    """The preset's task with each given field overriding it."""
    if preset not in TASK_PRESETS:
        raise ValueError(f"task preset must be one of {', '.join(TASK_PRESETS)}; got {preset!r}")
    base = TASK_PRESETS[preset]
    return Task(
        preset,
        tuple(t.lower() for t in positive_event_types) or base.positive_event_types,
        base.positive_rating if positive_rating is None else positive_rating,
        base.negative_rating if negative_rating is None else negative_rating,
        base.impression_negatives if impression_negatives is None else impression_negatives,
        tuple(parse_grade(g) for g in grades) or base.grades,
    )


def is_positive(event_type: str, value: float | None, task: Task = DEFAULT_TASK) -> bool:
    """The positive-interaction rule on one event (the SQL form is ``feature_store.rules_sql``)."""
    return task.is_positive(event_type, value)


def label_grade(event_type: str, value: float | None, task: Task = DEFAULT_TASK) -> int:
    """The ranker's label for one event: its task grade, or 0."""
    return task.label_grade(event_type, value)


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

# -- sampling users at scale -------------------------------------------------------------------


def sample_users(user_ids: Sequence[str], limit: int, seed: int) -> list[str]:
    """At most ``limit`` of ``user_ids``, sorted: all of them when there are no more than
    ``limit``, else a uniform sample without replacement drawn with ``seed`` from the sorted
    ids, so the same store, limit and seed always give the same users (ranker training groups
    ``ranker.max_train_users``, evaluated users ``ranker.max_eval_users``)."""
    ids = sorted(set(user_ids))
    if limit <= 0:
        raise ValueError(f"the user sample size must be positive; got {limit}")
    if len(ids) <= limit:
        return ids
    picked = np.random.default_rng(seed).choice(len(ids), size=limit, replace=False)
    return [ids[i] for i in sorted(picked.tolist())]


# -- registered models -------------------------------------------------------------------------

TEXT_MODEL_NAME = "text-scorer"
RANKER_MODEL_NAME = "ranker"
MODEL_NAMES: tuple[str, ...] = (TEXT_MODEL_NAME, RANKER_MODEL_NAME)
CHAMPION_ALIAS = "champion"

# -- online evaluation -------------------------------------------------------------------------

# The two teams of a team-draft interleaved list (recsys.algorithms.interleaving): the ranker
# behind the ``champion`` alias and the one behind ``serving.interleave_challenger``.
CHAMPION_TEAM = "champion"
CHALLENGER_TEAM = "challenger"

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
