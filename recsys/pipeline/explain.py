"""Readable reasons for a recommended item, and the 0-1 score served beside the raw one.

The ranker's per-feature contributions (LightGBM ``pred_contrib``, in model units) say *which
signals* lifted an item; this module groups them into a few kinds a person understands and
words each with the evidence behind it: the liked item closest to the recommendation
("because you liked *Heat*"), the shared genres and the text score ("matches your interest in
Crime, Thriller: text score 0.71"), popularity.  Pure functions on plain values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from recsys.algorithms.ranking import SIMILARITY_FEATURES, is_text_feature

MAX_REASONS = 3
# Cold-start lists fuse ranked lists by reciprocal rank 1 / (RRF_K + rank); an item first in
# both fused lists scores 2 / RRF_K, the most a cold list can give.
RRF_K = 60
COLD_MAX = 2.0 / RRF_K

_COLLABORATIVE = ("covisit", "gen_covisit", "gen_itemknn", "gen_als", "user_item_events")
_GENRE = ("user_genre_affinity", "user_category_affinity", "gen_genre")
_TRENDING = ("item_trend", "item_events_7d", "gen_recent_pop")
_POPULAR = ("item_", "gen_popularity", "blend_rank")


def feature_kind(name: str) -> str | None:
    """The reason a feature speaks for: liked, similar (text), text, genre, trending, popular
    (None: user-only)."""
    if name in SIMILARITY_FEATURES:
        return "similar"
    if is_text_feature(name):
        return "text"
    for kind, prefixes in (
        ("liked", _COLLABORATIVE),
        ("genre", _GENRE),
        ("trending", _TRENDING),
        ("popular", _POPULAR),
    ):
        if name.startswith(prefixes):
            return kind
    return None


def reasons(
    contributions: Mapping[str, float],
    *,
    liked_title: str | None = None,
    genres: Sequence[str] = (),
    text_score: float | None = None,
) -> tuple[str, ...]:
    """Up to ``MAX_REASONS`` sentences, strongest first, for the kinds that raised the score."""
    lift: dict[str, float] = {}
    for name, value in contributions.items():
        kind = feature_kind(name)
        if kind is not None and value > 0:
            lift[kind] = lift.get(kind, 0.0) + float(value)
    out: list[str] = []
    for kind in sorted(lift, key=lambda k: -lift[k]):
        sentence = _sentence(kind, liked_title, genres, text_score)
        if sentence and sentence not in out:
            out.append(sentence)
    return tuple(out[:MAX_REASONS])


def cold_reasons(liked_title: str | None) -> tuple[str, ...]:
    """Reasons for a cold-start list entry (popularity, plus the given history when any)."""
    first = f"similar to *{liked_title}*, which you picked" if liked_title else None
    return tuple(r for r in (first, "popular with other users") if r)


def _sentence(
    kind: str, liked_title: str | None, genres: Sequence[str], text_score: float | None
) -> str | None:
    if kind == "liked":
        if liked_title:
            return f"because you liked *{liked_title}*"
        return "liked by people with tastes like yours"
    if kind == "similar":
        # text_sim_*: the item's text is close to a liked item's (no user vector needed)
        return (
            f"its description is close to *{liked_title}*, which you liked" if liked_title else None
        )
    if kind == "text":
        if text_score is None or math.isnan(text_score):
            return None
        topic = ", ".join(genres) if genres else "what you read and watch"
        return f"matches your interest in {topic}: text score {text_score:.2f}"
    if kind == "genre":
        return f"in a genre you often pick: {', '.join(genres)}" if genres else None
    if kind == "trending":
        return "trending with other users now"
    return "popular with other users"


def closest_liked(
    item_vector: np.ndarray | None,
    liked_vectors: np.ndarray | None,
    liked: Sequence[str],
    item_genres: Sequence[str],
    liked_genres: Sequence[Sequence[str]],
) -> str | None:
    """The liked item most like the recommended one: text cosine when vectors are known,
    else the most shared genres (ties: the first in ``liked``, newest first)."""
    if not liked:
        return None
    if item_vector is not None and liked_vectors is not None and len(liked_vectors):
        sims = liked_vectors @ item_vector
        if np.any(sims != 0):
            return liked[int(np.argmax(sims))]
    overlap = [len(set(item_genres) & set(g)) for g in liked_genres]
    best = int(np.argmax(overlap)) if overlap else 0
    return liked[best] if overlap and overlap[best] > 0 else None


def unit_score(raw: float, *, cold: bool) -> float:
    """The served 0-1 ``score``: monotone in ``raw_score`` within one list kind.

    Ranker lists: the logistic of the LambdaRank score (a monotone squashing, not a click
    probability).  Cold-start lists: the fused reciprocal-rank score over its maximum.
    """
    if cold:
        return float(min(1.0, max(0.0, raw / COLD_MAX)))
    return float(1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, raw)))))
