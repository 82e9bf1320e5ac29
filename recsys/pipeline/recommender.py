"""The request path: candidates -> point-in-time features -> text score -> LightGBM -> top-k.

``Recommender.load`` builds everything a serving worker needs from the champion ``ranker`` (its
LightGBM text file), the text-scorer version it was trained with (a numpy ``TextIndex`` of
scope ``live``) and the generators fitted on the store's events.  Requests compute features
with the same function as training (``recsys.algorithms.ranking.assemble``), as of the store's
clock: the latest event time in the store when it was loaded, so a snapshot behaves the same
whether it is live or historical.  No Flask, no torch, no training loop is imported here.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl

from feature_store.interactions import POSITIVE_SQL, Interactions
from recsys.algorithms.candidates import Blender, Popularity, default_generators
from recsys.algorithms.ranking import TextFeatures, assemble, feature_matrix
from recsys.core.config import Settings
from recsys.core.errors import ModelNotReadyError

log = logging.getLogger(__name__)

EXPLAIN_TOP = 5
_RECENT = 20
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


@dataclass(frozen=True)
class RecommendationResult:
    items: tuple[Recommendation, ...]
    model_versions: dict[str, str]
    cold_start: bool
    unknown_items: tuple[str, ...] = ()


class Recommender:
    """Champion models plus generator state; one per serving worker, shared by its threads."""

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
        self.popularity = Popularity().fit(data)
        rows = data.con.execute(
            "SELECT item_id, any_value(title) FROM items GROUP BY item_id"
        ).fetchall()
        self.titles = {str(i): str(t) for i, t in rows}
        self._embedded_at: dict[str, datetime] = {}
        if text is not None:
            self._embedded_at = dict(
                data.con.execute(
                    "SELECT user_id, max(as_of) FROM user_embeddings WHERE model_version = ? "
                    "AND scope = 'live' GROUP BY user_id",
                    [text.index.model_version],
                ).fetchall()
            )
        # What a known user's request needs that does not depend on the request.
        self._cands: pl.DataFrame | None = None
        self._cand_rows: dict[str, tuple[int, int]] = {}
        self._vectors: dict[str, np.ndarray | None] = {}
        if precompute and 0 < len(data.user_ids) <= PRECOMPUTE_MAX_USERS:
            self._precompute()

    @classmethod
    def load(
        cls, settings: Settings, con: duckdb.DuckDBPyConnection, *, precompute: bool = True
    ) -> Recommender:
        """Champion ranker + its text model's index + generators fitted on ``con``'s events.

        ``precompute`` builds every known user's candidates and text vector now (see
        ``PRECOMPUTE_MAX_USERS``) so that a request only looks them up.
        """
        from training import registry
        from training.ranker.model import RankerModel

        try:
            ref, path = _cached_champion(settings, registry.RANKER_MODEL_NAME)
        except ModelNotReadyError as exc:
            raise ModelNotReadyError(f"{exc}; run `recsys train ranker`") from exc
        model = RankerModel.load(path)
        versions = {registry.RANKER_MODEL_NAME: ref.version}
        data = Interactions.from_store(con, "events")
        if len(data.user_ids) == 0:
            raise ModelNotReadyError("the store has no events; run `recsys ingest` first")
        text = None
        if model.uses_text:
            from recsys.algorithms.text_index import TextIndex

            index = TextIndex.load(con, model_version=model.text_model_version, scope="live")
            text = TextFeatures(index, data)
            versions[registry.TEXT_MODEL_NAME] = str(model.text_model_version)
        wanted = list(model.spec.get("generators", []))
        gens = [
            g
            for g in default_generators(settings, text.index if text else None)
            if g.name in wanted
        ]
        n = int(model.spec.get("num_candidates", settings.ranker.num_candidates))
        blender = Blender(gens, n=n).fit(data)
        row = con.execute("SELECT max(ts) FROM events").fetchone()
        clock = (row[0] if row and row[0] else datetime.now()) + timedelta(seconds=1)
        from feature_store.features import FeatureSnapshot

        # the request path's features from memory (same definitions as compute_features)
        snapshot = FeatureSnapshot.build(
            con, events="events", covisit_window_days=settings.ranker.covisit_window_days
        )
        log.info(
            "recommender loaded: %s, %d users, %d items, clock %s",
            versions,
            len(data.user_ids),
            data.n_items,
            clock,
        )
        return cls(
            settings, model, data, blender, text, versions, clock, snapshot, precompute=precompute
        )

    def _precompute(self) -> None:
        """Every known user's blended candidates and text vector, as of the clock.

        Candidates are exactly ``blender.frame([user], as_of=[clock])`` (the blender is per
        user); the vector is what ``_user_vector`` gives without a history.
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
            recent = self._recent_positives(self.data.con.cursor())
            for user_id in users:
                self._vectors[user_id] = self._vector_of(user_id, recent.get(user_id))
        log.info(
            "precomputed %d candidate rows and %d text vectors for %d users in %.1f s",
            frame.height,
            len(self._vectors),
            len(users),
            time.perf_counter() - started,
        )

    def _recent_positives(
        self, con: duckdb.DuckDBPyConnection, user_id: str | None = None
    ) -> dict[str, tuple[list[str], datetime]]:
        """Per user: their latest ``_RECENT`` positive items, oldest first, and the newest time.

        Ties in time are broken by item id so that every load picks the same items.
        """
        where = "AND user_id = ?" if user_id is not None else ""
        rows = con.execute(
            f"SELECT user_id, list(item_id ORDER BY ts DESC, item_id DESC)[1:{_RECENT}], max(ts) "
            f"FROM events WHERE {POSITIVE_SQL} {where} GROUP BY user_id",
            [user_id] if user_id is not None else [],
        ).fetchall()
        return {str(u): ([str(i) for i in reversed(items)], ts) for u, items, ts in rows}

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
        return self.text.index.vector_from_history(items)

    def _candidates(self, user_id: str) -> pl.DataFrame:
        """The blender's candidate frame of a known user (precomputed when possible)."""
        span = self._cand_rows.get(user_id)
        if self._cands is not None and span is not None:
            return self._cands.slice(*span)
        return self.blender.frame([user_id], as_of=[self.clock])

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
            return self._cold(k, history, genre=genre)
        cands = self._candidates(user_id)
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
            gen = self._candidates(uid)
            frame = frame.join(gen, on=["user_id", "item_id"], how="left")
        result = self._score(
            uid or "", frame, k, explain=explain, con=con, cold=uid is None, history=history
        )
        return RecommendationResult(
            result.items, result.model_versions, result.cold_start, tuple(unknown)
        )

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
        vectors = {user_id: self._user_vector(user_id, history, cur)} if self.text else None
        frame = assemble(
            cur,
            cands,
            events="events",
            text=self.text,
            covisit_window_days=self.settings.ranker.covisit_window_days,
            vectors=vectors,
            snapshot=self.snapshot,
        )
        x = feature_matrix(frame, self.model.feature_names)
        scores = self.model.predict(x)
        order = np.lexsort((np.arange(len(scores)), -scores))[:k]
        contrib = (
            self.model.top_contributions(x[order], EXPLAIN_TOP) if explain else [None] * len(order)
        )
        items = tuple(
            Recommendation(
                item_id=str(frame["item_id"][int(i)]),
                rank=r + 1,
                score=float(scores[i]),
                title=self.titles.get(str(frame["item_id"][int(i)]), ""),
                contributions=c,
            )
            for r, (i, c) in enumerate(zip(order, contrib, strict=True))
        )
        return RecommendationResult(items, dict(self.model_versions), cold)

    def _user_vector(
        self, user_id: str, history: Sequence[str], con: duckdb.DuckDBPyConnection
    ) -> np.ndarray | None:
        """Stored embedding, unless the user has events newer than it (or a history is given)."""
        assert self.text is not None  # noqa: S101 - only called when text features are on
        known_history = [h for h in history if h in self.data.item_index]
        if known_history or not user_id:
            return self.text.user_vector(None, known_history) if known_history else None
        if user_id in self._vectors:
            return self._vectors[user_id]
        return self._vector_of(user_id, self._recent_positives(con, user_id).get(user_id))

    # -- cold start ------------------------------------------------------------------------

    def _cold(self, k: int, history: Sequence[str], *, genre: str | None) -> RecommendationResult:
        """Popularity, blended by reciprocal rank with text similarity to the given history."""
        n = self.blender.n
        pop_ids, _ = self.popularity.generate([""], n)[0]
        fused: dict[str, float] = {}
        for r, item in enumerate(pop_ids):
            fused[str(item)] = fused.get(str(item), 0.0) + 1.0 / (60 + r)
        known = [h for h in history if h in self.data.item_index]
        if self.text is not None and known:
            vec = self.text.user_vector(None, known)
            if vec is not None:
                ids, _ = self.text.index.nearest(vec, n, exclude=set(known))
                for r, item in enumerate(ids):
                    fused[str(item)] = fused.get(str(item), 0.0) + 1.0 / (60 + r)
        for item in known:
            fused.pop(item, None)
        ranked = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))
        if genre:
            ranked = [(i, s) for i, s in ranked if genre in self._genres(i)]
        items = tuple(
            Recommendation(i, r + 1, float(s), self.titles.get(i, ""))
            for r, (i, s) in enumerate(ranked[:k])
        )
        return RecommendationResult(items, dict(self.model_versions), True)

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


def _cached_champion(settings: Settings, name: str) -> tuple[Any, Path]:
    """The champion of ``name`` and its artifacts in a per-version cache folder.

    ``<home>/serving/models/<name>/<version>`` is downloaded once (into a temporary sibling,
    then renamed, so a reader never sees half a download) and reused by every later load.
    """
    from training import registry

    ref = registry.champion(settings, name)
    if ref is None:
        return registry.download(settings, name)  # raises the registry's "no champion" error
    cache = settings.home / "serving" / "models" / name / str(ref.version)
    if cache.is_dir() and any(cache.iterdir()):
        return ref, cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=cache.parent))
    try:
        _, local = registry.download(settings, name, str(ref.version), dst=tmp)
        try:
            os.replace(local, cache)
        except OSError:
            if not (cache.is_dir() and any(cache.iterdir())):
                raise  # not a concurrent download that finished first
        log.info("downloaded %s v%s to %s", name, ref.version, cache)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ref, cache
