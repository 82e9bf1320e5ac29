"""Serving state published by the batch job: save, checksum-verified mmap load, restore."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
from polars.testing import assert_frame_equal

from feature_store.interactions import Interactions
from recsys.algorithms import baselines, candidates
from recsys.algorithms.candidates import Blender, default_generators
from recsys.algorithms.state import CatalogMap, generators_state, restore_generators
from recsys.core.config import Settings
from recsys.core.errors import ModelNotReadyError
from recsys.pipeline import loader
from tests.factories import T0, load_into_store, make_catalog, make_events
from tests.unit.test_recommender import _popularity_ranker
from training import registry
from training.ranker import state as serving_state

N_ITEMS = 30
EXPENSIVE = (
    baselines.ALS,
    baselines.ItemKNN,
    candidates.CoVisitation,
    candidates.RecentPopularity,
    candidates.Popularity,
)


@pytest.fixture
def filled(store: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    load_into_store(store, make_catalog(N_ITEMS), make_events(n_users=12, n_items=N_ITEMS))
    return store


def _blender(settings: Settings, n: int = 15) -> Blender:
    return Blender(default_generators(settings, None), n=n)


def _frame(blender: Blender, data: Interactions) -> pl.DataFrame:
    users = [str(u) for u in data.user_ids]
    return blender.frame(users, as_of=[T0 + timedelta(days=30)] * len(users))


def _no_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: object, data: object) -> None:
        raise AssertionError(f"{type(self).__name__} was refitted")

    for cls in EXPENSIVE:
        monkeypatch.setattr(cls, "fit", refuse)


def test_catalog_map_known_answer() -> None:
    m = CatalogMap.between(["a", "b", "c"], ["c", "a", "d"])
    assert m.index.tolist() == [1, -1, 0] and not m.identity and m.n_current == 3
    rows = m.rows(np.array([[1.0], [2.0], [3.0]]), fill=0.0)
    assert rows.ravel().tolist() == [3.0, 1.0, 0.0]
    square = m.square(sp.csr_matrix(np.array([[0, 1, 2], [3, 0, 4], [5, 6, 0]], dtype=float)))
    assert square.toarray().tolist() == [[0, 5, 0], [2, 0, 0], [0, 0, 0]]
    same = CatalogMap.between(["a", "b"], np.array(["a", "b"], dtype=object))
    assert same.identity
    arr = np.ones((2, 3))
    assert same.rows(arr, 0.0) is arr


def test_mmap_restore_gives_the_candidates_of_a_fit(
    settings: Settings,
    filled: duckdb.DuckDBPyConnection,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = Interactions.from_store(filled, "events")
    fitted = _blender(settings).fit(data)
    expected = _frame(fitted, data)
    serving_state.save_state(tmp_path, generators_state(fitted.generators, data), {"test": 1})
    arrays, manifest = serving_state.load_state(tmp_path)
    assert isinstance(arrays["als/item_factors"], np.memmap)
    assert manifest["meta"] == {"test": 1} and manifest["versions"]["numpy"] == np.__version__
    _no_fit(monkeypatch)
    restored = _blender(settings)
    restore_generators(restored.generators, arrays, Interactions.from_store(filled, "events"))
    als = next(g for g in restored.generators if g.name == "als")
    assert isinstance(als.item_factors, np.memmap)  # shared pages, not a copy
    assert_frame_equal(_frame(restored, data), expected)


def test_restore_onto_a_grown_store_keeps_old_answers_and_reads_new_events(
    settings: Settings,
    filled: duckdb.DuckDBPyConnection,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = Interactions.from_store(filled, "events")
    fitted = _blender(settings).fit(data)
    before = fitted.frame(["u0"], as_of=[T0 + timedelta(days=30)])
    serving_state.save_state(tmp_path, generators_state(fitted.generators, data), {})
    # a new item "i999" (sorts after every other id) and a new user who likes the top candidate
    top = str(before["item_id"][0])
    new = make_events(n_users=1, n_items=1).with_columns(
        pl.lit("new-user").alias("user_id"),
        pl.lit(top).alias("item_id"),
        pl.lit("x1").alias("event_id"),
        pl.lit(5.0).alias("value"),
    )
    extra = make_events(n_users=1, n_items=1).with_columns(
        pl.lit("u0").alias("user_id"),
        pl.lit("i999").alias("item_id"),
        pl.lit("x2").alias("event_id"),
        pl.lit(T0 + timedelta(days=20)).alias("ts"),
    )
    _insert(filled, pl.concat([new, extra]))
    grown = Interactions.from_store(filled, "events")
    assert grown.n_items == data.n_items + 1
    _no_fit(monkeypatch)
    restored = _blender(settings)
    arrays, _ = serving_state.load_state(tmp_path)
    restore_generators(restored.generators, arrays, grown)
    after = restored.frame(["u0", "new-user"], as_of=[T0 + timedelta(days=30)] * 2)
    u0 = after.filter(pl.col("user_id") == "u0")
    assert "i999" not in u0["item_id"].to_list()  # seen since: excluded without a refit
    assert set(u0["item_id"].to_list()) <= set(before["item_id"].to_list())
    newcomer = after.filter(pl.col("user_id") == "new-user")
    assert newcomer.height > 0 and top not in newcomer["item_id"].to_list()
    assert newcomer["gen_als_rank"].null_count() == newcomer.height  # ALS never saw them


def _insert(con: duckdb.DuckDBPyConnection, events: pl.DataFrame) -> None:
    con.register("_more", events.to_arrow())
    con.execute("INSERT INTO events BY NAME SELECT * FROM _more")
    con.unregister("_more")


def _saved(settings: Settings, con: duckdb.DuckDBPyConnection, directory: Path) -> Path:
    data = Interactions.from_store(con, "events")
    gens = _blender(settings).fit(data).generators
    return serving_state.save_state(directory, generators_state(gens, data), {})


def test_a_damaged_state_file_is_refused(
    settings: Settings, filled: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    directory = _saved(settings, filled, tmp_path / "s")
    path = directory / "als" / "item_factors.npy"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ModelNotReadyError, match="item_factors.npy does not match its sha256"):
        serving_state.load_state(directory)
    path.unlink()
    with pytest.raises(ModelNotReadyError, match="item_factors.npy is missing"):
        serving_state.load_state(directory)
    (directory / serving_state.MANIFEST).write_text("{", encoding="utf-8")
    with pytest.raises(ModelNotReadyError, match="not valid JSON.*retrain the ranker"):
        serving_state.load_state(directory)


def test_a_state_without_a_generator_is_refused(
    settings: Settings, filled: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    data = Interactions.from_store(filled, "events")
    gens = _blender(settings).fit(data).generators
    arrays = {k: v for k, v in generators_state(gens, data).items() if not k.startswith("als/")}
    with pytest.raises(ModelNotReadyError, match="no arrays for generator 'als'"):
        restore_generators(_blender(settings).generators, arrays, data)


def _ranker_dir(settings: Settings, con: duckdb.DuckDBPyConnection, path: Path) -> Path:
    model = _popularity_ranker()
    model.spec.update(
        generators=[g.name for g in default_generators(settings, None)], num_candidates=15
    )
    model.save(path)
    _saved(settings, con, path / serving_state.STATE_DIR)
    return path


def test_workers_load_and_refresh_without_refitting(
    settings: Settings,
    filled: duckdb.DuckDBPyConnection,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = _ranker_dir(settings, filled, tmp_path / "model")
    ref = registry.ModelRef("ranker", "1", "run", str(path))
    _no_fit(monkeypatch)
    first = loader.load_recommender(settings, filled, ranker=(ref, path), precompute=False)
    assert first.recommend("u0", 5).items
    # a store refresh: new events arrive and the worker builds its recommender again
    seen_now = first.recommend("u0", 1).items[0].item_id
    more = make_events(n_users=1, n_items=1).with_columns(
        pl.lit("u0").alias("user_id"),
        pl.lit(seen_now).alias("item_id"),
        pl.lit("r1").alias("event_id"),
        pl.lit(T0 + timedelta(days=40)).alias("ts"),
    )
    _insert(filled, more)
    second = loader.load_recommender(settings, filled, ranker=(ref, path), precompute=False)
    assert seen_now not in [r.item_id for r in second.recommend("u0", 5).items]


def test_a_ranker_with_a_damaged_state_is_refused_by_the_loader(
    settings: Settings, filled: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    path = _ranker_dir(settings, filled, tmp_path / "model")
    (path / serving_state.STATE_DIR / "popularity" / "counts.npy").write_bytes(b"garbage")
    ref = registry.ModelRef("ranker", "1", "run", str(path))
    with pytest.raises(ModelNotReadyError, match="counts.npy does not match"):
        loader.load_recommender(settings, filled, ranker=(ref, path), precompute=False)
