"""The request path: candidates -> point-in-time features -> text score -> LightGBM -> top-k.

A ``Recommender`` is built from loaded parts (``recsys.pipeline.loader.load_recommender`` reads
them from the registry and the store): the champion ranker, the text index of the text-scorer
version it was trained with, fitted generators and a feature snapshot.  Requests compute
features with the same function as training (``recsys.algorithms.ranking.assemble``), as of
the loaded clock.  No Flask, no torch, no MLflow, no training loop is imported here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb
import numpy as np
import polars as pl

from feature_store.interactions import Interactions
from recsys.algorithms.candidates import Blender, Popularity
from recsys.algorithms.ranking import TextFeatures, assemble, feature_matrix
from recsys.algorithms.text_index import user_text_vector
from recsys.core import rules
from recsys.core.config import Settings
from recsys.pipeline import explain as ex

log = logging.getLogger(__name__)

EXPLAIN_TOP = 5
# Per-user candidates and text vectors are precomputed at load for up to this many users (about
# 15 ms of CPU each at load on MovieLens, ~300 rows each); beyond it requests compute them.
PRECOMPUTE_MAX_USERS = 5000


@dataclass(frozen=True)
class Recommendation:
    item_id: str
    rank: int
    score: float
    title: str
    contributions: dict[str, float] | None = None
    # the served 0-1 score (``explain.unit_score``; ``score`` is the raw model/fusion value)
    unit_score: float | None = None
    reasons: tuple[str, ...] = ()  # readable reasons (with ``explain``)


@dataclass(frozen=True)
class RecommendationResult:
    items: tuple[Recommendation, ...]
    model_versions: dict[str, str]
    cold_start: bool
    unknown_items: tuple[str, ...] = ()


class Recommender:
    """Champion models plus generator state; one per serving worker, shared by its threads.

    Pure: built from loaded parts (``recsys.pipeline.loader.load_recommender`` reads them from
    the registry and the store), so the request path runs on any parts a test assembles.
    ``embedded_at``: when each stored user vector was made.
    """

    def __init__(
        self,
        settings: Settings,
        model: Any,
        data: Interactions,
        blender: Blender,
        text: TextFeatures | None,
        model_versions: dict[str, str],
        clock: datetime,
        snapshot: Any | None = None,
        *,
        titles: dict[str, str] | None = None,
        embedded_at: dict[str, datetime] | None = None,
        precompute: bool = True,
    ) -> None:
        self.settings, self.model, self.data, self.blender, self.text = (
            settings,
            model,
            data,
            blender,
            text,
        )
        self.model_versions = model_versions
        self.clock = clock
        self.snapshot = snapshot
        # the cold-start list: the blender's (published) popularity when it has one
        published = [g for g in blender.generators if isinstance(g, Popularity)]
        self.popularity = published[0] if published else Popularity().fit(data)
        self.titles = titles or {}
        self._embedded_at = embedded_at or {}
        # What a known user's request needs that does not depend on the request.
        self._cands: pl.DataFrame | None = None
        self._cand_rows: dict[str, tuple[int, int]] = {}
        self._vectors: dict[str, np.ndarray | None] = {}
        self._all_genres: list[str] | None = None
        if precompute and 0 < len(data.user_ids) <= PRECOMPUTE_MAX_USERS:
            self._precompute()

    def _precompute(self) -> None:
        """Every known user's blended candidates and text vector, as of the clock.

        Candidates are exactly ``blender.frame([user], as_of=[clock])`` (the blender is per
        user); the vector is what ``user_vector`` gives without a history.
        """
        started = time.perf_counter()
        users = [str(u) for u in self.data.user_ids]
        frame = self.blender.frame(users, as_of=[self.clock] * len(users))
        lengths = frame.group_by("user_id", maintain_order=True).len()
        start = 0
        for user_id, n in lengths.iter_rows():
            self._cand_rows[str(user_id)] = (start, int(n))
            start += int(n)
        self._cands = frame
        if self.text is not None:
            for user_id in users:
                self._vectors[user_id] = self._vector_of(user_id, self._recent_of(user_id))
        log.info(
            "precomputed %d candidate rows and %d text vectors for %d users in %.1f s",
            frame.height,
            len(self._vectors),
            len(users),
            time.perf_counter() - started,
        )

    def _recent_of(self, user_id: str) -> tuple[list[str], datetime] | None:
        """The user's latest ``rules.HISTORY_LENGTH`` positive items and the newest time, from
        the interactions in memory (the answer ``recent_positives`` gives on the store; at 1e7
        events that query scanned the events table on every request)."""
        return self.data.latest_positives(user_id, rules.HISTORY_LENGTH)

    def _vector_of(
        self, user_id: str, recent: tuple[list[str], datetime] | None
    ) -> np.ndarray | None:
        """Stored embedding, unless the user has positive events newer than it."""
        assert self.text is not None  # noqa: S101 - only called when text features are on
        stored = self.text.index.user_vector(user_id)
        if not recent or not recent[0]:
            return stored
        items, newest = recent
        embedded_at = self._embedded_at.get(user_id)
        if stored is not None and embedded_at is not None and newest <= embedded_at:
            return stored
        return user_text_vector(self.text.index, user_id, history=items)

    def candidates(self, user_id: str) -> pl.DataFrame:
        """The blender's candidate frame of a known user (precomputed when possible)."""
        span = self._cand_rows.get(user_id)
        if self._cands is not None and span is not None:
            return self._cands.slice(*span)
        return self.blender.frame([user_id], as_of=[self.clock])

    @property
    def precomputed(self) -> bool:
        """Whether every known user's candidates (and text vector) were built at load."""
        return self._cands is not None

    def known_user(self, user_id: str) -> bool:
        return user_id in self.data.user_index

    def known_items(self, item_ids: Sequence[str]) -> tuple[list[str], list[str]]:
        """(known, unknown) ids, each in the given order."""
        known = [i for i in item_ids if i in self.data.item_index]
        return known, [i for i in item_ids if i not in self.data.item_index]

    # -- known users ---------------------------------------------------------------------

    def recommend(
        self,
        user_id: str | None,
        k: int,
        *,
        exclude_seen: bool = True,
        genre: str | None = None,
        explain: bool = False,
        history: Sequence[str] = (),
        con: duckdb.DuckDBPyConnection | None = None,
    ) -> RecommendationResult:
        """Top-k for a user; unknown users or an explicit history get the cold-start list."""
        if user_id is None or history or not self.known_user(user_id):
            return self._cold(k, history, genre=genre, explain=explain)
        cands = self.candidates(user_id)
        if not exclude_seen:
            seen = self.data.item_ids[self.data.seen_items(user_id)]
            cands = pl.concat(
                [
                    cands,
                    pl.DataFrame(
                        {"user_id": [user_id] * len(seen), "item_id": [str(i) for i in seen]}
                    ),
                ],
                how="diagonal_relaxed",
            ).unique(["user_id", "item_id"], keep="first", maintain_order=True)
        cands = self._genre_filter(cands, genre)
        return self._score(user_id, cands, k, explain=explain, con=con, cold=False)

    def rank(
        self,
        candidates: Sequence[str],
        k: int,
        *,
        user_id: str | None = None,
        history: Sequence[str] = (),
        explain: bool = False,
        con: duckdb.DuckDBPyConnection | None = None,
    ) -> RecommendationResult:
        """Re-rank caller-supplied candidates; unknown ids are reported, not fatal."""
        known, unknown = self.known_items(list(dict.fromkeys(candidates)))
        uid = user_id if user_id is not None and self.known_user(user_id) else None
        frame = pl.DataFrame(
            {"user_id": [uid or ""] * len(known), "item_id": known},
            schema={"user_id": pl.Utf8, "item_id": pl.Utf8},
        )
        if uid is not None and known:
            frame = frame.join(self._rank_rows(uid, frame), on=["user_id", "item_id"], how="left")
        result = self._score(
            uid or "", frame, k, explain=explain, con=con, cold=uid is None, history=history
        )
        return RecommendationResult(
            result.items, result.model_versions, result.cold_start, tuple(unknown)
        )

    def _rank_rows(self, user_id: str, frame: pl.DataFrame) -> pl.DataFrame:
        """Generator columns of the supplied items: their candidate rows, and for items the
        blender did not propose the rows ``Blender.item_frame`` gives (dense generator scores,
        no ranks) -- as the ranker saw served items in training and per-impression evaluation."""
        gen = self.candidates(user_id).join(frame, on=["user_id", "item_id"], how="semi")
        rest = frame.join(gen, on=["user_id", "item_id"], how="anti")["item_id"].to_list()
        if not rest:
            return gen
        extra = self.blender.item_frame([user_id], [rest], as_of=[self.clock])
        return pl.concat([gen, extra.select(gen.columns).cast(gen.schema)], how="vertical")

    def _score(
        self,
        user_id: str,
        cands: pl.DataFrame,
        k: int,
        *,
        explain: bool,
        con: duckdb.DuckDBPyConnection | None,
        cold: bool,
        history: Sequence[str] = (),
    ) -> RecommendationResult:
        if cands.height == 0:
            return RecommendationResult((), dict(self.model_versions), cold)
        cur = con if con is not None else self.data.con.cursor()
        cands = cands.with_columns(pl.lit(self.clock).cast(pl.Datetime("us")).alias("as_of"))
        vectors = {user_id: self.user_vector(user_id, history)} if self.text else None
        frame = assemble(
            cur,
            cands,
            events="events",
            text=self.text,
            covisit_window_days=self.settings.ranker.covisit_window_days,
            vectors=vectors,
            snapshot=self.snapshot,
            histories={user_id: list(history)} if history else None,
        )
        x = feature_matrix(frame, self.model.feature_names)
        scores = self.model.predict(x)
        order = np.lexsort((np.arange(len(scores)), -scores))[:k]
        ids = [str(frame["item_id"][int(i)]) for i in order]
        contrib: list[dict[str, float] | None] = [None] * len(order)
        why: list[tuple[str, ...]] = [()] * len(order)
        if explain and len(order):
            contrib = list(self.model.top_contributions(x[order], EXPLAIN_TOP))
            text = frame["text_score"].to_numpy()[order] if "text_score" in frame.columns else None
            liked = self._liked(user_id, history)
            why = [
                self._reasons(item, c or {}, liked, None if text is None else float(text[n]))
                for n, (item, c) in enumerate(zip(ids, contrib, strict=True))
            ]
        items = tuple(
            Recommendation(
                item_id=item,
                rank=r + 1,
                score=float(scores[i]),
                title=self.titles.get(item, ""),
                contributions=c,
                unit_score=ex.unit_score(float(scores[i]), cold=False),
                reasons=w,
            )
            for r, (item, i, c, w) in enumerate(zip(ids, order, contrib, why, strict=True))
        )
        return RecommendationResult(items, dict(self.model_versions), cold)

    # -- explanations ----------------------------------------------------------------------

    def _liked(self, user_id: str, history: Sequence[str]) -> list[str]:
        """The given history's known items, else the user's latest positives (newest first)."""
        known = [h for h in history if h in self.data.item_index]
        if known or not user_id:
            return known
        recent = self._recent_of(user_id)
        return list(recent[0]) if recent else []

    def _reasons(
        self, item: str, contrib: dict[str, float], liked: list[str], text_score: float | None
    ) -> tuple[str, ...]:
        item_genres = self._genres(item)
        liked_genres = [self._genres(i) for i in liked]
        shared = [g for g in item_genres if any(g in lg for lg in liked_genres)]
        vec = liked_vecs = None
        if self.text is not None and liked:
            vecs, mask = self.text.index.item_vectors([item, *liked])
            vec, liked_vecs = (vecs[0], vecs[1:]) if mask[0] else (None, None)
        best = ex.closest_liked(vec, liked_vecs, liked, item_genres, liked_genres)
        return ex.reasons(
            contrib,
            liked_title=self.titles.get(best, best) if best else None,
            genres=shared or list(item_genres),
            text_score=text_score,
        )

    def user_vector(self, user_id: str, history: Sequence[str] = ()) -> np.ndarray | None:
        """The user's text vector (``None`` without text features or when nothing is known).

        The stored embedding, unless the user has positive events newer than it; with a
        ``history``, the vector of those items instead.
        """
        if self.text is None:
            return None
        known_history = [h for h in history if h in self.data.item_index]
        if known_history or not user_id:
            return self.text.user_vector(None, known_history) if known_history else None
        if user_id in self._vectors:
            return self._vectors[user_id]
        return self._vector_of(user_id, self._recent_of(user_id))

    # -- cold start ------------------------------------------------------------------------

    def _cold(
        self, k: int, history: Sequence[str], *, genre: str | None, explain: bool = False
    ) -> RecommendationResult:
        """Popularity, blended by reciprocal rank with text similarity to the given history."""
        n = self.blender.n
        pop_ids, _ = self.popularity.generate([""], n)[0]
        fused: dict[str, float] = {}
        for r, item in enumerate(pop_ids):
            fused[str(item)] = fused.get(str(item), 0.0) + 1.0 / (ex.RRF_K + r)
        known = [h for h in history if h in self.data.item_index]
        if self.text is not None and known:
            vec = self.text.user_vector(None, known)
            if vec is not None:
                ids, _ = self.text.index.nearest(vec, n, exclude=set(known))
                for r, item in enumerate(ids):
                    fused[str(item)] = fused.get(str(item), 0.0) + 1.0 / (ex.RRF_K + r)
        for item in known:
            fused.pop(item, None)
        ranked = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))
        if genre:
            ranked = [(i, s) for i, s in ranked if genre in self._genres(i)]
        items = tuple(
            Recommendation(
                i,
                r + 1,
                float(s),
                self.titles.get(i, ""),
                unit_score=ex.unit_score(float(s), cold=True),
                reasons=ex.cold_reasons(self._cold_liked_title(i, known)) if explain else (),
            )
            for r, (i, s) in enumerate(ranked[:k])
        )
        return RecommendationResult(items, dict(self.model_versions), True)

    def _cold_liked_title(self, item: str, history: list[str]) -> str | None:
        if not history:
            return None
        item_genres = self._genres(item)
        liked_genres = [self._genres(i) for i in history]
        best = ex.closest_liked(None, None, history, item_genres, liked_genres)
        return self.titles.get(best, best) if best else None

    def genres(self) -> list[str]:
        """Every genre of the catalogue, sorted (what ``genre=`` may name)."""
        if self._all_genres is None:
            self._all_genres = sorted({g for gs in self.data.item_genres for g in gs})
        return self._all_genres

    def _genres(self, item_id: str) -> tuple[str, ...]:
        idx = self.data.item_index.get(item_id)
        return self.data.item_genres[idx] if idx is not None else ()

    def _genre_filter(self, cands: pl.DataFrame, genre: str | None) -> pl.DataFrame:
        if not genre:
            return cands
        return cands.filter(
            pl.col("item_id").map_elements(
                lambda i: genre in self._genres(i), return_dtype=pl.Boolean
            )
        )
