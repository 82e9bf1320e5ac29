"""Candidate generators and the blender.

Every generator (and every baseline in ``recsys.algorithms.baselines``) implements one small,
batch-first protocol, like implicit's ``recommend``: ``fit(data)`` on an :class:`Interactions`, then
``generate(user_ids, n, as_of=None)`` returns, per user, ``(item_ids, scores)`` best first,
excluding what the user has already seen.  Users a generator knows nothing about get empty
arrays (popularity answers everyone).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import numpy as np
import polars as pl
import scipy.sparse as sp

from feature_store.interactions import Interactions
from recsys.algorithms.baselines import ALS, ItemKNN
from recsys.algorithms.state import Arrays, Maps, csr_arrays, csr_from
from recsys.algorithms.text_index import user_text_vector
from recsys.algorithms.topk import (
    EMPTY,
    DenseGenerator,
    Scored,
    ranked,
    row_sum,
    top_n,
    top_n_ranked,
)
from recsys.core.errors import ConfigError
from recsys.core.rules import COLD_ITEM_MAX_EVENTS, HISTORY_LENGTH, parse_generator_weights

log = logging.getLogger(__name__)


@runtime_checkable
class Generator(Protocol):
    """What candidate generators and baselines share."""

    name: str

    def fit(self, data: Interactions) -> Generator: ...

    def generate(
        self, user_ids: Sequence[str], n: int, as_of: Sequence[datetime] | None = None
    ) -> list[Scored]: ...


class Popularity(DenseGenerator):
    """Count of positive interactions per item (protocol v1's popularity baseline)."""

    name = "popularity"

    def fit(self, data: Interactions) -> Popularity:
        self.data = data
        self.counts = np.asarray(data.positives.astype(bool).sum(axis=0)).ravel().astype(np.float64)
        self._order = ranked(self.counts)
        return self

    def user_scores(self, u: int | None, as_of: datetime | None) -> np.ndarray:
        return self.counts

    def top(self, user_id: str, scores: np.ndarray | None, n: int) -> Scored:
        """One ordering of the catalog for everyone, sorted once at fit."""
        seen = self.data.seen_items(user_id)
        return top_n_ranked(self._order, self.counts, seen, n, self.data.item_ids)

    def state(self) -> dict[str, np.ndarray]:
        return {"counts": self.counts}

    def restore(self, arrays: Arrays, data: Interactions, maps: Maps) -> Popularity:
        self.data = data
        self.counts = maps.items.rows(arrays["counts"], 0.0)
        self._order = ranked(self.counts)
        return self


# counts kept for this many as_of moments: one per moment grew the ranker's frame build by
# 1.6 GB per 2,000 users at 1e7 events (a per-user split gives each user its own as_of;
# 100,000 items x 8 bytes each); a global split or serving reuses one moment
RECENT_POP_CACHE = 16


class _Window:
    """One recent-popularity window: counts, scores (-inf where none) and, from its second
    use, the scores' ``ranked`` order."""

    def __init__(self, counts: np.ndarray) -> None:
        self.counts = counts
        self.scores = np.where(counts > 0, counts, -np.inf)
        self.uses = 0
        self._order: np.ndarray | None = None

    def order(self) -> np.ndarray | None:
        """``ranked(scores)`` once the window has served two users (None before)."""
        if self._order is None and self.uses >= 2:
            self._order = ranked(self.scores)
        return self._order


class RecentPopularity(DenseGenerator):
    """Positive interactions per item in the ``window_days`` before each user's ``as_of``."""

    name = "recent_pop"

    def __init__(self, window_days: float = 365.0) -> None:
        self.window = np.timedelta64(int(window_days * 86400), "s")

    def fit(self, data: Interactions) -> RecentPopularity:
        self.data = data
        ev = data.positive_events
        order = np.argsort(ev.ts, kind="stable")
        self.ts = ev.ts[order].astype("datetime64[s]")
        self.items = ev.item[order]
        self._cache: dict[Any, _Window] = {}
        return self

    def _window(self, as_of: datetime | None) -> _Window:
        end = (self.ts[-1] + np.timedelta64(1, "s")) if as_of is None else np.datetime64(as_of, "s")
        window = self._cache.pop(end, None)
        if window is None:
            lo, hi = np.searchsorted(self.ts, [end - self.window, end], side="left")
            sel = self.items[lo:hi]
            window = _Window(np.bincount(sel[sel >= 0], minlength=self.data.n_items).astype(float))
        self._cache[end] = window  # most recently used last
        while len(self._cache) > RECENT_POP_CACHE:
            self._cache.pop(next(iter(self._cache), end), None)  # threads may race here
        return window

    def counts_at(self, as_of: datetime | None) -> np.ndarray:
        """Item counts in [as_of - window, as_of) (the latest window when ``as_of`` is None)."""
        return self._window(as_of).counts

    def user_scores(self, u: int | None, as_of: datetime | None) -> np.ndarray | None:
        if len(self.ts) == 0:
            return None
        window = self._window(as_of)
        window.uses += 1
        return window.scores

    def top(self, user_id: str, scores: np.ndarray | None, n: int) -> Scored:
        """Sorted once per window when a window serves more than one user (a global split's
        moment, serving's clock); a partial sort per user otherwise."""
        if scores is None or len(self.ts) == 0:
            return EMPTY
        seen = self.data.seen_items(user_id)
        window = next((w for w in list(self._cache.values()) if w.scores is scores), None)
        order = None if window is None else window.order()
        if order is None:
            return top_n(scores, seen, n, self.data.item_ids)
        return top_n_ranked(order, scores, seen, n, self.data.item_ids)

    def state(self) -> dict[str, np.ndarray]:
        return {"ts": self.ts, "items": self.items}

    def restore(self, arrays: Arrays, data: Interactions, maps: Maps) -> RecentPopularity:
        self.data = data
        ts, items = arrays["ts"], maps.items.positions(arrays["items"])
        if not maps.items.identity:
            keep = items >= 0
            ts, items = ts[keep], items[keep]
        self.ts, self.items = ts, items
        self._cache = {}
        return self


class CoVisitation(DenseGenerator):
    """Item-item co-occurrence within ``window_days`` in users' positive histories.

    Each positive event pairs with up to ``neighbours`` events on either side of it in the
    same user's timeline (bounding the pair count on binge sessions); weights are cosine
    normalised by item frequency.  A user's score sums the rows of their ``recent`` latest
    positive items.
    """

    name = "covisit"

    def __init__(self, window_days: float = 1.0, neighbours: int = 20, recent: int = 30) -> None:
        self.window_s = float(window_days) * 86400.0
        self.neighbours = int(neighbours)
        self.recent = int(recent)

    def fit(self, data: Interactions) -> CoVisitation:
        self.data = data
        counts = self._pair_counts(data).tocoo()
        a, b = counts.row.astype(np.int64), counts.col.astype(np.int64)
        w = np.asarray(counts.data, dtype=np.float64)
        freq = np.asarray(data.positives.astype(bool).sum(axis=0)).ravel() + 1.0
        w = w / np.sqrt(freq[a] * freq[b])
        self.matrix = sp.csr_matrix((w, (a, b)), shape=(data.n_items, data.n_items))
        log.info("co-visitation: %d item pairs", self.matrix.nnz)
        return self

    def _pair_counts(self, data: Interactions) -> sp.csr_matrix:
        """(item a, item b) -> how often b is within ``neighbours`` positions and ``window``
        seconds of a in one user's positive timeline, ordered by (time, item id)."""
        ev = data.positive_events
        order, _ = data.latest_order()  # by (user, time, item id), shared with the requests
        user, item = ev.user[order], ev.item[order]
        t = ev.ts.astype(np.int64)[order].astype(np.float64) / 1e6
        left: list[np.ndarray] = []
        right: list[np.ndarray] = []
        for d in range(1, self.neighbours + 1):
            ok = (user[d:] == user[:-d]) & (item[d:] != item[:-d])
            ok &= np.abs(t[d:] - t[:-d]) <= self.window_s
            left += [item[:-d][ok], item[d:][ok]]
            right += [item[d:][ok], item[:-d][ok]]
        rows = np.concatenate(left) if left else np.empty(0, dtype=np.int64)
        cols = np.concatenate(right) if right else np.empty(0, dtype=np.int64)
        n = data.n_items
        counts = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
        counts.sum_duplicates()
        return counts

    def user_scores(self, u: int | None, as_of: datetime | None) -> np.ndarray | None:
        if u is None:
            return None
        recent = self.data.newest_positive_items(u, self.recent)
        if len(recent) == 0:
            return None
        scores = row_sum(self.matrix, recent)
        return np.where(scores > 0, scores, -np.inf)

    def state(self) -> dict[str, np.ndarray]:
        return {f"matrix/{k}": v for k, v in csr_arrays(self.matrix).items()}

    def restore(self, arrays: Arrays, data: Interactions, maps: Maps) -> CoVisitation:
        """The published pair matrix; users' recent items from ``data`` (new events count)."""
        self.data = data
        self.matrix = maps.items.square(csr_from(arrays, "matrix"))
        return self


class GenreAffinity(DenseGenerator):
    """Items in the genres (categories) the user likes, weighted by log popularity."""

    name = "genre"

    def fit(self, data: Interactions) -> GenreAffinity:
        self.data = data
        vocab = sorted({g for gs in data.item_genres for g in gs})
        col = {g: k for k, g in enumerate(vocab)}
        rows = [i for i, gs in enumerate(data.item_genres) for _ in gs]
        cols = [col[g] for gs in data.item_genres for g in gs]
        lens = np.array([max(len(gs), 1) for gs in data.item_genres], dtype=np.float64)
        vals = 1.0 / lens[rows] if rows else np.empty(0)
        self.item_genre = sp.csr_matrix((vals, (rows, cols)), shape=(data.n_items, len(vocab)))
        self.genres = vocab
        pop = np.asarray(data.positives.astype(bool).sum(axis=0)).ravel()
        self.pop_weight = np.log2(2.0 + pop)
        return self

    def user_genres(self, u: int) -> sp.csr_matrix:
        """The user's genre preference (1 x genres): the share of their positives in each
        genre, built per request from the shared interactions (a users x genres table was 15
        MB of every serving worker at 1e7 events; the same sparse products, row by row)."""
        x = self.data.positives
        liked_items = x.indices[x.indptr[u] : x.indptr[u + 1]]
        row = sp.csr_matrix(
            (np.ones(len(liked_items)), liked_items, [0, len(liked_items)]), shape=(1, x.shape[1])
        )
        ug = sp.csr_matrix(row @ self.item_genre)
        totals = np.asarray(ug.sum(axis=1)).ravel()
        return sp.csr_matrix(sp.diags(1.0 / np.maximum(totals, 1e-12)) @ ug)

    def user_scores(self, u: int | None, as_of: datetime | None) -> np.ndarray | None:
        if u is None:
            return None
        user_genre = self.user_genres(u)
        if user_genre.nnz == 0:
            return None
        liked = np.zeros(user_genre.shape[1])
        liked[user_genre.indices] = user_genre.data
        affinity = self.item_genre @ liked  # the same sums as the sparse product, densely
        return np.where(affinity > 0, affinity * self.pop_weight, -np.inf)


class TextNeighbours:
    """Nearest items to the user's text vector from a ``TextIndex`` (recsys.algorithms.text_index).

    The user's stored embedding is used when there is one; otherwise the vector built from
    their ``recent`` latest positive items.  With ``max_item_events`` only items with at most
    that many interactions in the fitted events are proposed (``text_cold``): behaviour cannot
    recommend such items, text can, and without a reserved share they never make the cut.
    """

    name = "text"

    def __init__(
        self,
        index: Any,
        recent: int = HISTORY_LENGTH,
        max_item_events: int | None = None,
        name: str = "",
    ) -> None:
        self.index = index
        self.recent = int(recent)
        self.max_item_events = max_item_events
        self.name = name or ("text_cold" if max_item_events is not None else "text")

    def fit(self, data: Interactions) -> TextNeighbours:
        self.data = data
        self.cold_ids: np.ndarray | None = None
        if self.max_item_events is not None:
            # score the cold subset with one matrix product instead of excluding warm items
            counts = np.asarray(data.seen.sum(axis=0)).ravel()
            candidates = data.item_ids[counts <= self.max_item_events]
            matrix, known = self.index.item_vectors(list(candidates))
            self.cold_ids, self.cold_matrix = candidates[known], matrix[known]
            self.cold_index = {str(i): k for k, i in enumerate(self.cold_ids)}
        return self

    def user_vector(self, user_id: str) -> np.ndarray | None:
        return user_text_vector(self.index, user_id, self.data, recent=self.recent)

    def generate(
        self, user_ids: Sequence[str], n: int, as_of: Sequence[datetime] | None = None
    ) -> list[Scored]:
        out: list[Scored] = []
        for user_id in user_ids:
            vec = self.user_vector(user_id)
            if vec is None:
                out.append(EMPTY)
                continue
            seen = self.data.item_ids[self.data.seen_items(user_id)]
            if self.cold_ids is None:
                ids, scores = self.index.nearest(vec, n, exclude=list(seen))
                out.append((np.asarray(ids, dtype=object), np.asarray(scores, dtype=np.float32)))
                continue
            cold_scores = self.cold_matrix @ np.asarray(vec, dtype=np.float32)
            skip = np.array([self.cold_index[i] for i in seen if i in self.cold_index], dtype=int)
            out.append(top_n(cold_scores, skip, n, self.cold_ids))
        return out


class Blender:
    """Union of several generators, deduplicated and cut to ``n`` per user.

    Items are taken round-robin by rank across generators (every generator's best first), so
    each source is represented; ``weights`` (by name, default 1) stretch a generator's share:
    its item of rank r comes at r / weight, and weight 0 proposes nothing.  ``limits`` caps how
    many items a generator may propose: without a cap a weak generator that answers every user
    (text neighbours) fills as many slots as the strong ones.  ``frame`` also returns each
    generator's score and rank.
    """

    name = "blend"

    def __init__(
        self,
        generators: Sequence[Generator],
        n: int = 300,
        per_generator: int | None = None,
        limits: Mapping[str, int] | None = None,
        weights: Mapping[str, float] | None = None,
    ):
        self.generators = list(generators)
        self.n = int(n)
        self.per_generator = int(per_generator or n)
        self.limits = {k: int(v) for k, v in (limits or {}).items()}
        self.weights = {k: float(v) for k, v in (weights or {}).items()}
        bad = {k: v for k, v in self.weights.items() if not np.isfinite(v) or v < 0}
        if bad:
            raise ConfigError(f"candidate weights must be finite and >= 0; got {bad}")

    def proposals(self, gen: Generator) -> int:
        """How many items ``gen`` is asked for (its limit, at most ``per_generator``; none at
        weight 0)."""
        if self.weights.get(gen.name, 1.0) == 0:
            return 0
        return min(self.per_generator, self.limits.get(gen.name, self.per_generator))

    def fit(self, data: Interactions) -> Blender:
        for gen in self.generators:
            gen.fit(data)
        return self

    def frame(
        self, user_ids: Sequence[str], as_of: Sequence[datetime] | None = None
    ) -> pl.DataFrame:
        """Long frame: user_id, item_id, blend_rank, ``gen_<name>_score`` / ``gen_<name>_rank``.

        Built per user with numpy and turned into one DataFrame at the end: the request path
        calls this for a single user, where many small polars operations would dominate.
        """
        # dense generators score each user once below: their proposals and the score of
        # every candidate come from the same catalog vector
        results = [self._sparse_proposals(gen, user_ids, as_of) for gen in self.generators]
        when = list(as_of) if as_of is not None else [None] * len(user_ids)
        cols: dict[str, list[np.ndarray]] = {"user_id": [], "item_id": [], "blend_rank": []}
        for gen in self.generators:
            cols[f"gen_{gen.name}_score"] = []
            cols[f"gen_{gen.name}_rank"] = []
        for u, user_id in enumerate(user_ids):
            full: list[np.ndarray | None] = [None] * len(self.generators)
            per_gen: list[Scored] = []
            for g, gen in enumerate(self.generators):
                found = results[g]
                if found is not None:
                    per_gen.append(found[u])
                    continue
                assert isinstance(gen, DenseGenerator)  # noqa: S101 - None only for dense ones
                full[g] = gen.scores_of(user_id, when[u])
                n = self.proposals(gen)
                per_gen.append(gen.top(user_id, full[g], n) if n > 0 else EMPTY)
            items = self._blend([ids for ids, _ in per_gen], self._weight_row())
            pos = {item: k for k, item in enumerate(items)}
            rows: dict[int, np.ndarray] = {}  # catalog rows of the items, per Interactions
            cols["user_id"].append(np.full(len(items), user_id, dtype=object))
            cols["item_id"].append(items)
            cols["blend_rank"].append(np.arange(1, len(items) + 1, dtype=np.int32))
            for g, (gen, (ids, scores)) in enumerate(zip(self.generators, per_gen, strict=True)):
                rank = np.full(len(items), -1, dtype=np.int32)
                score = np.full(len(items), np.nan, dtype=np.float32)
                for r, (item, sc) in enumerate(zip(ids, scores, strict=True)):
                    k = pos.get(item)
                    if k is not None:
                        rank[k], score[k] = r + 1, sc
                vector = full[g]
                if vector is not None and isinstance(gen, DenseGenerator):
                    catalog = gen.data
                    idx = rows.get(id(catalog))
                    if idx is None:
                        idx = rows[id(catalog)] = _catalog_rows(catalog, items)
                    score = _pick(vector, idx)
                cols[f"gen_{gen.name}_score"].append(score)
                cols[f"gen_{gen.name}_rank"].append(rank)
        data = {
            k: (
                np.concatenate(v)
                if v
                else np.empty(0, dtype=object if k.endswith("_id") else float)
            )
            for k, v in cols.items()
        }
        frame = pl.DataFrame(
            {k: pl.Series(k, v.astype(str) if k.endswith("_id") else v) for k, v in data.items()}
        )
        rank_cols = [c for c in frame.columns if c.endswith("_rank") and c.startswith("gen_")]
        score_cols = [c for c in frame.columns if c.endswith("_score")]
        return frame.with_columns(
            [pl.when(pl.col(c) > 0).then(pl.col(c)).otherwise(None).alias(c) for c in rank_cols]
            + [pl.col(c).fill_nan(None) for c in score_cols]
        )

    def _sparse_proposals(
        self, gen: Generator, user_ids: Sequence[str], as_of: Sequence[datetime] | None
    ) -> list[Scored] | None:
        """A generator's proposals for every user, or None for a dense one (``frame`` scores
        those per user)."""
        if isinstance(gen, DenseGenerator):
            return None
        n = self.proposals(gen)
        return gen.generate(user_ids, n, as_of=as_of) if n > 0 else [EMPTY] * len(user_ids)

    def item_frame(
        self,
        user_ids: Sequence[str],
        items: Sequence[Sequence[str]],
        as_of: Sequence[datetime] | None = None,
    ) -> pl.DataFrame:
        """``frame``'s columns for given (user, items) pairs that need not be candidates.

        Rows are scored as a candidate that no generator proposed: every dense generator's
        score (as ``frame`` fills in for candidates other generators proposed), no generator
        rank and no ``blend_rank`` (null).  A served-but-not-proposed item thus looks like what
        it is -- outside the lists -- whatever its label; ``frame`` rows are unchanged.
        """
        when = list(as_of) if as_of is not None else [None] * len(user_ids)
        cols: dict[str, list[Any]] = {"user_id": [], "item_id": []}
        for gen in self.generators:
            cols[f"gen_{gen.name}_score"] = []
        for user_id, its, at in zip(user_ids, items, when, strict=True):
            ids = np.asarray([str(i) for i in its], dtype=object)
            cols["user_id"] += [str(user_id)] * len(ids)
            cols["item_id"] += ids.tolist()
            for gen in self.generators:
                score = np.full(len(ids), np.nan, dtype=np.float32)
                if isinstance(gen, DenseGenerator) and len(ids):
                    score = self._dense_scores(gen, str(user_id), at, ids, score)
                cols[f"gen_{gen.name}_score"] += score.tolist()
        frame = pl.DataFrame(
            {
                "user_id": pl.Series(cols.pop("user_id"), dtype=pl.Utf8),
                "item_id": pl.Series(cols.pop("item_id"), dtype=pl.Utf8),
                "blend_rank": pl.Series([None] * sum(len(i) for i in items), dtype=pl.Int32),
                **{k: pl.Series(k, v, dtype=pl.Float32).fill_nan(None) for k, v in cols.items()},
            }
        )
        ranks = [pl.lit(None, pl.Int32).alias(f"gen_{g.name}_rank") for g in self.generators]
        order = ["user_id", "item_id", "blend_rank"]
        for gen in self.generators:
            order += [f"gen_{gen.name}_score", f"gen_{gen.name}_rank"]
        return frame.with_columns(ranks).select(order)

    def _weight_row(self) -> list[float]:
        return [self.weights.get(g.name, 1.0) for g in self.generators]

    def _blend(self, proposals: list[np.ndarray], weights: Sequence[float] = ()) -> np.ndarray:
        """Weighted round robin: order proposals by (rank / weight, generator), keep each item's
        first, cut to n."""
        if not proposals or not sum(len(p) for p in proposals):
            return np.empty(0, dtype=object)
        w = list(weights) or [1.0] * len(proposals)
        ids = np.concatenate(proposals).astype(object)
        ranks = np.concatenate(
            [np.arange(len(p)) / max(wt, 1e-12) for p, wt in zip(proposals, w, strict=True)]
        )
        gens = np.concatenate([np.full(len(p), g) for g, p in enumerate(proposals)])
        order = np.lexsort((gens, ranks))
        seen: set[str] = set()
        out = []
        for item in ids[order]:
            if item not in seen:
                seen.add(item)
                out.append(item)
                if len(out) == self.n:
                    break
        return np.array(out, dtype=object)

    @staticmethod
    def _dense_scores(
        gen: DenseGenerator,
        user_id: str,
        as_of: datetime | None,
        items: np.ndarray,
        score: np.ndarray,
    ) -> np.ndarray:
        """A dense generator's score for every candidate, not only those it proposed: the
        ranker then compares, say, the ALS score of a co-visitation candidate."""
        full = gen.scores_of(user_id, as_of)
        if full is None:
            return score
        return _pick(full, _catalog_rows(gen.data, items))

    def generate(
        self, user_ids: Sequence[str], n: int, as_of: Sequence[datetime] | None = None
    ) -> list[Scored]:
        frame = self.frame(user_ids, as_of=as_of)
        by_user = {u: g for (u,), g in frame.group_by("user_id")}
        out: list[Scored] = []
        for user_id in user_ids:
            g = by_user.get(user_id)
            if g is None:
                out.append(EMPTY)
                continue
            g = g.head(n)
            out.append(
                (
                    g["item_id"].to_numpy().astype(object),
                    (-g["blend_rank"].to_numpy()).astype(np.float32),
                )
            )
        return out


def _catalog_rows(data: Interactions, items: np.ndarray) -> np.ndarray:
    """Catalog row of each item id (-1 for ids the catalog does not have)."""
    return data.item_index.positions(items)


def _pick(full: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``full``'s entries at catalog rows ``idx`` as float32, NaN where none (-1, -inf)."""
    vals = np.where(idx >= 0, full[np.maximum(idx, 0)], np.nan)
    return np.where(np.isfinite(vals), vals, np.nan).astype(np.float32)


def candidate_limits(settings: Any) -> dict[str, int]:
    """Per-generator caps of the product's blender (``ranker.text_candidates`` ...)."""
    r = settings.ranker
    return {"text": r.text_candidates, "text_cold": r.text_cold_candidates}


def candidate_weights(settings: Any) -> dict[str, float]:
    """Per-generator weights of the product's blender (``ranker.candidate_weights``)."""
    return parse_generator_weights(settings.ranker.candidate_weights)


def default_generators(settings: Any, text_index: Any | None = None) -> list[Generator]:
    """The product's generators (text neighbours only when a text index is available)."""
    r = settings.ranker
    gens: list[Generator] = [
        CoVisitation(window_days=r.covisit_window_days),
        ALS(seed=settings.seed),
        ItemKNN(),
        GenreAffinity(),
        RecentPopularity(window_days=r.recent_popularity_days),
        Popularity(),
    ]
    if text_index is not None:
        gens.insert(1, TextNeighbours(text_index))
        gens.insert(2, TextNeighbours(text_index, max_item_events=COLD_ITEM_MAX_EVENTS))
    return gens
