"""Bounded-memory ranker frames: the user sample rule and chunked frame building."""

from __future__ import annotations

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from feature_store.db import connect
from feature_store.splits import materialize_protocol_split
from recsys.core import rules
from recsys.core.config import Settings
from tests.factories import load_into_store, make_catalog, make_events
from tests.unit.test_ranker import N_ITEMS, genre_index, small_settings
from training.ranker import dataset


def test_sample_users_keeps_everyone_under_the_limit_and_sorts() -> None:
    assert rules.sample_users(["b", "a", "c", "a"], 3, seed=1) == ["a", "b", "c"]


def test_sample_users_is_a_seeded_deterministic_subset() -> None:
    ids = [f"u{k}" for k in range(1000)]
    first = rules.sample_users(ids, 100, seed=42)
    assert first == rules.sample_users(list(reversed(ids)), 100, seed=42)  # input order ignored
    assert len(first) == 100 and len(set(first)) == 100 and set(first) <= set(ids)
    assert first == sorted(first)
    assert first != rules.sample_users(ids, 100, seed=43)


def test_sample_users_refuses_a_non_positive_limit() -> None:
    with pytest.raises(ValueError, match="positive"):
        rules.sample_users(["a"], 0, seed=1)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, duckdb.DuckDBPyConnection]:
    settings = small_settings(tmp_path_factory.mktemp("frame") / "home")
    con = connect(settings.db_path)
    load_into_store(
        con, make_catalog(N_ITEMS), make_events(n_users=30, n_items=N_ITEMS, events_per_user=24)
    )
    materialize_protocol_split(con)
    return settings, con


def test_chunked_frame_equals_the_one_chunk_frame(
    store: tuple[Settings, duckdb.DuckDBPyConnection],
) -> None:
    settings, con = store
    whole, gens = dataset.build_frame(
        con,
        settings.replace(**{"ranker.frame_chunk_users": 1000}),
        dataset.FIT,
        text_index=genre_index("fit_v1"),
    )
    chunked, gens2 = dataset.build_frame(
        con,
        settings.replace(**{"ranker.frame_chunk_users": 7}),
        dataset.FIT,
        text_index=genre_index("fit_v1"),
    )
    assert gens == gens2
    assert whole["user_id"].n_unique() > 7  # several chunks really were built
    assert_frame_equal(whole, chunked)
    floats = [c for c, t in whole.schema.items() if t.is_float()]
    assert floats and all(whole.schema[c] == pl.Float32 for c in floats)


def test_frame_users_and_sample(store: tuple[Settings, duckdb.DuckDBPyConnection]) -> None:
    settings, con = store
    everyone = dataset.cutoffs(con, dataset.FIT)["user_id"].to_list()
    frame, _ = dataset.build_frame(con, settings, dataset.FIT, text_index=None, max_users=10)
    expected = rules.sample_users(everyone, 10, settings.seed)
    assert sorted(frame["user_id"].unique().to_list()) == expected
    some = everyone[:5]
    frame, _ = dataset.build_frame(
        con, settings, dataset.FIT, text_index=None, users=some, with_labels=False
    )
    assert sorted(frame["user_id"].unique().to_list()) == sorted(some)
    assert "label" not in frame.columns
