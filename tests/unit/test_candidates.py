"""One contract suite for every candidate generator and baseline, plus known winners."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

import duckdb
import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from feature_store.db import init_schema
from feature_store.interactions import Interactions
from recsys.algorithms.baselines import ALS, ItemKNN
from recsys.algorithms.candidates import (
    RECENT_POP_CACHE,
    Blender,
    CoVisitation,
    Generator,
    GenreAffinity,
    Popularity,
    RecentPopularity,
    TextNeighbours,
    candidate_weights,
)
from recsys.algorithms.text_index import TextIndex
from recsys.algorithms.tfidf import TfidfProfile
from recsys.algorithms.topk import ranked, row_sum, top_n, top_n_ranked
from recsys.core.config import load_settings
from recsys.core.errors import ConfigError
from tests.factories import GENRES, T0, load_into_store, make_catalog, make_events
from training.text.texts import compose_item_text

N_ITEMS = 36


def genre_index() -> TextIndex:
    """Item vectors = one-hot genre: text neighbours of a genre fan are that genre's items."""
    ids = [f"i{k}" for k in range(N_ITEMS)]
    matrix = np.zeros((N_ITEMS, len(GENRES)), dtype=np.float32)
    for k in range(N_ITEMS):
        matrix[k, k % len(GENRES)] = 1.0
    return TextIndex("1", ids, matrix, scope="fit_v1")


def catalog_texts() -> dict[str, str]:
    """The factory catalog's item texts, composed as the product composes them."""
    return {str(r["item_id"]): compose_item_text(r) for r in make_catalog(N_ITEMS).to_dicts()}


GENERATORS = {
    "popularity": Popularity,
    "recent_pop": lambda: RecentPopularity(window_days=3650),
    "covisit": CoVisitation,
    "genre": GenreAffinity,
    "item_knn": lambda: ItemKNN(k=20),
    "als": lambda: ALS(factors=8, iterations=5),
    "text": lambda: TextNeighbours(genre_index()),
    "text_cold": lambda: TextNeighbours(genre_index(), max_item_events=6),
    "tfidf": lambda: TfidfProfile(catalog_texts()),
    "blend": lambda: Blender([CoVisitation(), GenreAffinity(), Popularity()], n=12),
}
# generators whose best item for a user is in the user's favourite genre on the factory data
GENRE_AWARE = ("covisit", "genre", "item_knn", "text", "tfidf")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Interactions:
    con = duckdb.connect(str(tmp_path_factory.mktemp("cand") / "s.duckdb"))
    init_schema(con)
    load_into_store(
        con, make_catalog(N_ITEMS), make_events(n_users=12, n_items=N_ITEMS, events_per_user=20)
    )
    return Interactions.from_store(con, "events")


def users(data: Interactions) -> list[str]:
    return [str(u) for u in data.user_ids]


@pytest.mark.parametrize("name", list(GENERATORS))
def test_generator_contract(name: str, data: Interactions) -> None:
    gen = GENERATORS[name]().fit(data)
    assert isinstance(gen, Generator)
    result = gen.generate([*users(data), "nobody"], 8, as_of=None)
    assert len(result) == len(data.user_ids) + 1
    catalog = set(data.item_ids)
    for user_id, (ids, scores) in zip([*users(data), "nobody"], result, strict=True):
        assert len(ids) == len(scores) <= 8
        assert len(set(ids)) == len(ids), "duplicates"
        assert set(ids) <= catalog
        assert not set(ids) & set(data.item_ids[data.seen_items(user_id)]), "seen item proposed"
        assert np.all(np.diff(scores.astype(float)) <= 1e-9), "not best-first"
    assert sum(len(ids) for ids, _ in result[:-1]) > 0


@pytest.mark.parametrize("name", GENRE_AWARE)
def test_genre_aware_generators_find_the_favourite_genre(name: str, data: Interactions) -> None:
    gen = GENERATORS[name]().fit(data)
    hits = total = 0
    for u, (ids, _) in zip(users(data), gen.generate(users(data), 1), strict=True):
        liked = GENRES[int(u[1:]) % len(GENRES)]
        for item in ids:
            total += 1
            hits += liked in data.item_genres[data.item_index[item]]
    assert total > 0 and hits / total >= 0.9


def test_popularity_counts_positives_with_integer_id_ties(store: duckdb.DuckDBPyConnection) -> None:
    rows = [
        ("u0", "10", 5.0),
        ("u1", "10", 4.0),
        ("u0", "9", 4.0),
        ("u1", "30", 4.5),
        ("u2", "2", 1.0),
        ("u3", "100", 2.0),
    ]
    events = pl.DataFrame(
        [
            {
                "event_id": f"e{k}",
                "user_id": u,
                "item_id": i,
                "event_type": "rate",
                "value": v,
                "text": None,
                "ts": T0 + timedelta(hours=k),
                "request_id": None,
                "position": None,
                "source": "t",
                "batch_id": "t",
            }
            for k, (u, i, v) in enumerate(rows)
        ],
        schema_overrides={"position": pl.Int32},
    )
    load_into_store(store, make_catalog(1).filter(pl.col("item_id") == "none"), events)
    d = Interactions.from_store(store, "events")
    pop = Popularity().fit(d)
    # 10 has two positives; 9 and 30 one each: the tie goes to the smaller integer id (9 < 30,
    # although "30" < "9" as text); then the zero-count items in integer order
    (ids, scores), (ids_u0, _) = pop.generate(["nobody", "u0"], 5)
    assert list(ids) == ["10", "9", "30", "2", "100"]
    assert list(scores) == [2.0, 1.0, 1.0, 0.0, 0.0]
    assert list(ids_u0) == ["30", "2", "100"]


def test_cold_text_neighbours_only_propose_rarely_seen_items(data: Interactions) -> None:
    gen = TextNeighbours(genre_index(), max_item_events=6).fit(data)
    assert gen.name == "text_cold"
    counts = dict(zip(data.item_ids, np.asarray(data.seen.sum(axis=0)).ravel(), strict=True))
    proposed = [i for ids, _ in gen.generate(users(data), 10) for i in ids]
    assert proposed and all(counts[i] <= 6 for i in proposed)
    assert any(counts[i] > 6 for i in data.item_ids)  # the filter did exclude something


def test_recent_popularity_respects_as_of(data: Interactions) -> None:
    gen = RecentPopularity(window_days=1).fit(data)
    before = gen.generate(["u0"], 5, as_of=[T0 - timedelta(days=1)])[0]
    assert len(before[0]) == 0
    later = gen.generate(["u0"], 5, as_of=[datetime(2020, 1, 12, 12)])[0]
    assert len(later[0]) > 0


def test_recent_popularity_keeps_a_bounded_cache(data: Interactions) -> None:
    gen = RecentPopularity(window_days=3650).fit(data)
    first = gen.counts_at(datetime(2020, 1, 12, 12)).copy()
    for h in range(3 * RECENT_POP_CACHE):  # one as_of per user, as a per-user split gives
        gen.counts_at(datetime(2020, 1, 1) + timedelta(hours=h))
    assert len(gen._cache) == RECENT_POP_CACHE
    # an evicted moment is recomputed to the same counts
    assert np.array_equal(gen.counts_at(datetime(2020, 1, 12, 12)), first)


def test_top_n_breaks_ties_by_catalog_order() -> None:
    ids = np.array(["a", "b", "c", "d"], dtype=object)
    got, _ = top_n(np.array([1.0, 3.0, 3.0, 3.0]), np.array([2]), 2, ids)
    assert list(got) == ["b", "d"]


def test_top_n_from_a_sorted_order_equals_the_partial_sort() -> None:
    rng = np.random.default_rng(3)
    ids = np.array([f"i{k}" for k in range(200)], dtype=object)
    for _ in range(50):
        scores = rng.integers(0, 6, 200).astype(float)  # many ties
        scores[rng.random(200) < 0.2] = -np.inf
        exclude = np.unique(rng.integers(0, 200, rng.integers(0, 40)))
        n = int(rng.integers(0, 60))
        want, got = (
            top_n(scores, exclude, n, ids),
            top_n_ranked(ranked(scores), scores, exclude, n, ids),
        )
        assert list(got[0]) == list(want[0])
        assert np.array_equal(got[1], want[1])
    # fewer valid items than n, and nothing left
    assert list(
        top_n_ranked(
            ranked(np.array([2.0, -np.inf])),
            np.array([2.0, -np.inf]),
            np.array([], dtype=np.int64),
            5,
            ids[:2],
        )[0]
    ) == ["i0"]
    assert (
        len(top_n_ranked(ranked(np.array([1.0])), np.array([1.0]), np.array([0]), 3, ids[:1])[0])
        == 0
    )


def test_row_sum_gives_the_sparse_products_floats_exactly() -> None:
    rng = np.random.default_rng(5)
    m = sp.random(300, 400, density=0.05, format="csr", random_state=7, dtype=np.float64)
    m.data = rng.random(m.nnz) / 3.0  # values whose sums round differently by order
    x = sp.random(1, 300, density=0.1, format="csr", random_state=8, dtype=np.float32)
    x.data[:] = 1.0
    want = np.asarray((x @ m).todense()).ravel()  # item-kNN's product
    assert np.array_equal(row_sum(m, x.indices, x.data), want)
    rows = np.array([5, 17, 5, 299, 0])  # co-visitation's recent items, a repeat included
    assert np.array_equal(row_sum(m, rows), np.asarray(m[rows].sum(axis=0)).ravel())
    assert np.array_equal(row_sum(m, np.array([], dtype=np.int64)), np.zeros(400))


def test_recent_popularity_sorts_a_shared_window_once_with_the_same_lists(
    data: Interactions,
) -> None:
    at = datetime(2020, 1, 12, 12)
    people = users(data)
    fresh = [RecentPopularity(window_days=3650).fit(data) for _ in people]
    # each user on a generator of their own: one use of the window, a partial sort
    alone = [gen.generate([u], 7, as_of=[at])[0] for gen, u in zip(fresh, people, strict=True)]
    shared = RecentPopularity(window_days=3650).fit(data)
    together = shared.generate(people, 7, as_of=[at] * len(people))
    assert next(iter(shared._cache.values()))._order is not None  # sorted once, then reused
    for (a_ids, a_sc), (b_ids, b_sc) in zip(alone, together, strict=True):
        assert list(a_ids) == list(b_ids)
        assert np.array_equal(a_sc, b_sc)


def test_blender_interleaves_and_reports_each_generator(data: Interactions) -> None:
    gens = [CoVisitation(), GenreAffinity(), Popularity()]
    blender = Blender(gens, n=9).fit(data)
    frame = blender.frame(users(data)[:3])
    assert frame.group_by("user_id").len()["len"].max() <= 9
    assert frame.select("user_id", "item_id").is_unique().all()
    for gen in gens:
        assert f"gen_{gen.name}_rank" in frame.columns
        # every generator's best item made the cut
        best = {
            u: ids[0]
            for u, (ids, _) in zip(users(data)[:3], gen.generate(users(data)[:3], 1), strict=True)
            if len(ids)
        }
        got = frame.filter(frame[f"gen_{gen.name}_rank"] == 1)
        assert dict(zip(got["user_id"], got["item_id"], strict=True)) == best
    # dense generators score every candidate, also those another generator proposed
    assert frame["gen_popularity_score"].null_count() == 0
    assert frame["gen_popularity_rank"].null_count() > 0
    first = frame.filter(frame["user_id"] == users(data)[0]).sort("blend_rank")
    assert first["blend_rank"].to_list() == list(range(1, first.height + 1))


def test_blender_limits_cap_a_generator_share(data: Interactions) -> None:
    gens = [TextNeighbours(genre_index()), Popularity()]
    uncapped = Blender(gens, n=12).fit(data).frame(users(data)[:4])
    capped = Blender(gens, n=12, limits={"text": 2}).fit(data).frame(users(data)[:4])
    for frame in (uncapped, capped):
        assert frame.group_by("user_id").len()["len"].to_list() == [12] * 4
    # uncapped, text fills half of the round robin; capped, only its 2 best ranks are proposed
    assert uncapped["gen_text_rank"].max() > 2
    assert capped["gen_text_rank"].drop_nulls().max() == 2
    only_text = capped.filter(capped["gen_popularity_rank"].is_null())
    assert only_text.group_by("user_id").len()["len"].max() <= 2
    # a limit of 0 switches a generator off
    off = Blender(gens, n=12, limits={"text": 0}).fit(data).frame(users(data)[:2])
    assert off["gen_text_rank"].null_count() == off.height


def test_blender_weights_set_each_generator_share() -> None:
    a = np.array([f"a{k}" for k in range(10)], dtype=object)
    b = np.array([f"b{k}" for k in range(10)], dtype=object)
    blender = Blender([], n=6)
    # equal weights alternate; weight 2 places two items per round of the other
    assert list(blender._blend([a, b])) == ["a0", "b0", "a1", "b1", "a2", "b2"]
    assert list(blender._blend([a, b], [2.0, 1.0])) == ["a0", "b0", "a1", "a2", "b1", "a3"]
    assert list(blender._blend([a, b], [1.0, 0.5])) == ["a0", "b0", "a1", "a2", "b1", "a3"]


def test_blender_weight_zero_proposes_nothing_but_keeps_the_score(data: Interactions) -> None:
    gens = [CoVisitation(), Popularity()]
    frame = Blender(gens, n=12, weights={"popularity": 0}).fit(data).frame(users(data)[:3])
    assert frame["gen_popularity_rank"].null_count() == frame.height
    assert frame["gen_popularity_score"].null_count() == 0
    with pytest.raises(ConfigError, match="weights"):
        Blender(gens, weights={"als": -1.0})


def test_candidate_weights_setting_is_checked_from_every_source() -> None:
    s = load_settings(environ={"RECSYS_RANKER__CANDIDATE_WEIGHTS": "als:2,covisit:0.5"})
    assert candidate_weights(s) == {"als": 2.0, "covisit": 0.5}
    for bad in ("als", "alss:1", "als:-1", "als:x"):
        with pytest.raises(ConfigError, match="GENERATOR:WEIGHT"):
            load_settings(environ={"RECSYS_RANKER__CANDIDATE_WEIGHTS": bad})


def _with_repeats(data: Interactions) -> Interactions:
    """``data`` whose users like items of several genres, some more than once (counts 1-3):
    the factory's users like one genre each, once per item."""
    rng = np.random.default_rng(5)
    liked = sp.random(len(data.user_ids), data.n_items, density=0.3, format="csr", rng=rng)
    liked.data = rng.integers(1, 4, liked.nnz).astype(data.positives.dtype)
    return dataclasses.replace(data, positives=sp.csr_matrix(liked))


def test_item_knn_scores_are_the_users_liked_rows_of_the_similarity(data: Interactions) -> None:
    """Item-kNN reads a user's liked items from the shared interactions: its scores are the
    0/1 positives matrix times the neighbour matrix, to the last bit (an item liked twice
    still weighs 1)."""
    data = _with_repeats(data)
    gen = ItemKNN(k=20).fit(data)
    x = data.positives.astype(bool).astype(np.float64).tocsr()
    product = np.asarray((x @ gen.similarity).todense())
    for u in range(len(data.user_ids)):
        got = gen.user_scores(u, None)
        assert got is not None
        want = product[u]
        assert np.array_equal(got, np.where(want > 0, want, -np.inf))


def test_genre_scores_built_per_user_equal_the_whole_table(data: Interactions) -> None:
    """GenreAffinity builds a user's genre shares per request: the same floats as the users x
    genres table it used to keep (the sparse products of every user at once)."""
    data = _with_repeats(data)
    gen = GenreAffinity().fit(data)
    ug = sp.csr_matrix(data.positives.astype(bool).astype(np.float64) @ gen.item_genre)
    table = sp.diags(1.0 / np.maximum(np.asarray(ug.sum(axis=1)).ravel(), 1e-12)) @ ug
    table = sp.csr_matrix(table)
    for u in range(len(data.user_ids)):
        lo, hi = table.indptr[u], table.indptr[u + 1]
        got = gen.user_scores(u, None)
        if lo == hi:
            assert got is None
            continue
        liked = np.zeros(table.shape[1])
        liked[table.indices[lo:hi]] = table.data[lo:hi]
        affinity = gen.item_genre @ liked
        assert got is not None
        assert np.array_equal(got, np.where(affinity > 0, affinity * gen.pop_weight, -np.inf))
