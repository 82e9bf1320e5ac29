"""The numpy timelines: same values as the first implementation, and the serving snapshot gives
exactly what the store gives (randomized with hypothesis), plus the timeline primitives."""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb
import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feature_store.db import init_schema
from feature_store.features import FEATURE_COLUMNS, FeatureSnapshot, compute_features
from feature_store.features_timeline import (
    RunningSum,
    Timeline,
    between,
    prefix,
    stable_order,
    ticks,
)
from recsys.core.errors import RecsysError
from tests.unit.features_reference import reference_features

T0 = datetime(2021, 3, 1)
USERS = [f"u{k}" for k in range(5)]
ITEMS = [f"i{k}" for k in range(6)]
TYPES = ["rate", "rate", "click", "view", "impression", "like", "share"]

event = st.tuples(
    st.sampled_from(USERS),
    st.sampled_from(ITEMS),
    st.sampled_from(TYPES),
    st.sampled_from([1.0, 2.5, 4.0, 5.0, 3.7, 4.1]),  # 3.7, 4.1: the inexact float path
    st.integers(0, 24 * 40),  # hours after T0: ties are frequent on purpose
)


def store(events: list[tuple]) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    init_schema(con)
    con.executemany(
        "INSERT INTO items (item_id, title, genres, category, source, updated_at) "
        "VALUES (?, ?, ?, ?, 't', ?)",
        [
            [i, i, [f"g{k % 3}", f"g{k % 2 + 3}"] if k != 5 else [], f"g{k % 3}", T0]
            for k, i in enumerate(ITEMS)
        ],
    )
    if events:
        con.executemany(
            "INSERT INTO events (event_id, user_id, item_id, event_type, value, ts, source, "
            "batch_id) VALUES (?, ?, ?, ?, ?, ?, 't', 't')",
            [
                [f"e{n:04d}", u, i, t, v if t == "rate" else None, T0 + timedelta(hours=h)]
                for n, (u, i, t, v, h) in enumerate(events)
            ],
        )
    return con


def requests(moments: list[int]) -> pl.DataFrame:
    rows = [
        (u, i, T0 + timedelta(hours=h))
        for h in moments
        for u in [*USERS[:3], "ghost"]
        for i in [*ITEMS, "nothing"]
    ]
    return pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "as_of": [r[2] for r in rows],
        },
        schema={"user_id": pl.Utf8, "item_id": pl.Utf8, "as_of": pl.Datetime("us")},
    )


def assert_close(new: pl.DataFrame, old: pl.DataFrame) -> None:
    """Same nulls, same values up to float rounding order (sums of inexact ratings)."""
    assert new.columns == old.columns and new.height == old.height
    assert new.select("user_id", "item_id", "as_of").equals(
        old.select("user_id", "item_id", "as_of")
    )
    for col in FEATURE_COLUMNS:
        a, b = new[col].to_numpy(), old[col].to_numpy()
        assert np.array_equal(np.isnan(a), np.isnan(b)), col
        ok = ~np.isnan(a)
        np.testing.assert_allclose(a[ok], b[ok], rtol=1e-12, atol=1e-12, err_msg=col)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=st.lists(event, min_size=0, max_size=50),
    moments=st.lists(st.integers(-5, 24 * 42), min_size=1, max_size=3),
    window_days=st.sampled_from([0.25, 1.0, 10.0]),
)
def test_snapshot_and_both_reads_equal_each_other_and_the_first_implementation(
    events: list[tuple], moments: list[int], window_days: float
) -> None:
    con = store(events)
    try:
        req = requests(moments)
        old = reference_features(con, req, covisit_window_days=window_days)
        auto = compute_features(con, req, covisit_window_days=window_days)
        full = FeatureSnapshot.read(con, "events", window_days, requests=req, full_read=True)
        part = FeatureSnapshot.read(con, "events", window_days, requests=req, full_read=False)
        snap = FeatureSnapshot.build(con, covisit_window_days=window_days)
        cached = compute_features(con, req, covisit_window_days=window_days, snapshot=snap)
    finally:
        con.close()
    assert_close(auto, old)
    for other in (full.evaluate(auto.select(req.columns)), part.evaluate(req), cached):
        assert other.equals(auto, null_equal=True)  # bit for bit


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=st.lists(event, min_size=1, max_size=40),
    extra=st.lists(event, min_size=1, max_size=10),
)
def test_snapshot_at_now_matches_the_store_after_new_events(
    events: list[tuple], extra: list[tuple]
) -> None:
    """The serving case: as_of after the newest event; a rebuilt snapshot tracks new events."""
    con = store(events)
    try:
        now = [24 * 45]
        assert (
            FeatureSnapshot.build(con)
            .compute(requests(now))
            .equals(compute_features(con, requests(now)), null_equal=True)
        )
        con.executemany(
            "INSERT INTO events (event_id, user_id, item_id, event_type, value, ts, source, "
            "batch_id) VALUES (?, ?, ?, ?, ?, ?, 't', 't')",
            [
                [f"x{n}", u, i, t, v, T0 + timedelta(hours=h)]
                for n, (u, i, t, v, h) in enumerate(extra)
            ],
        )
        rebuilt = FeatureSnapshot.build(con)
        assert rebuilt.n_events == len(events) + len(extra)
        assert rebuilt.compute(requests(now)).equals(
            compute_features(con, requests(now)), null_equal=True
        )
    finally:
        con.close()


def test_snapshot_metadata_and_mismatched_settings() -> None:
    con = store([("u1", "i1", "rate", 4.0, 5), ("u2", "i1", "view", 1.0, 9)])
    try:
        snap = FeatureSnapshot.build(con, covisit_window_days=2.0)
        assert (snap.n_events, snap.newest_event) == (2, T0 + timedelta(hours=9))
        assert (snap.relation, snap.covisit_window_days) == ("events", 2.0)
        with pytest.raises(RecsysError, match="co-visitation window"):
            compute_features(con, requests([10]), snapshot=snap)  # default window is 1 day
        with pytest.raises(RecsysError, match="covisit_window_days"):
            FeatureSnapshot.build(con, covisit_window_days=0)
        out = snap.compute(requests([10]).head(0))
        assert out.height == 0 and out.columns[3:] == list(FEATURE_COLUMNS)
    finally:
        con.close()


def test_empty_store_snapshot() -> None:
    con = store([])
    try:
        snap = FeatureSnapshot.build(con)
        out = snap.compute(requests([1]))
        assert snap.newest_event is None and out["item_events_all"].sum() == 0
        assert out["user_genre_affinity"].null_count() == out.height
    finally:
        con.close()


def test_stable_order_keeps_rank_order_within_keys_on_both_paths() -> None:
    keys = np.array([3, 1, 3, 1, 2], dtype=np.int64)
    rank = np.array([4, 3, 0, 1, 2], dtype=np.int64)
    assert stable_order(keys).tolist() == [1, 3, 4, 0, 2]
    assert stable_order(keys, rank).tolist() == [3, 1, 4, 2, 0]
    huge = keys * 2**61  # key * n overflows int64: the lexsort fallback
    assert stable_order(huge, rank).tolist() == [3, 1, 4, 2, 0]


def test_running_sum_exact_and_sequential_paths() -> None:
    starts = np.array([0, 3, 3, 5])
    lo, pos = np.array([0, 0, 3, 3, 5]), np.array([2, 3, 3, 5, 5])
    exact = RunningSum(np.array([0.5, 1.0, 4.5, 2.0, 3.0]), starts)
    assert exact.between(lo, pos).tolist() == [1.5, 6.0, 0.0, 5.0, 0.0]
    values = np.array([0.1, 0.2, 0.3, 0.7, 0.1])
    inexact = RunningSum(values, starts).between(lo, pos)
    assert inexact.tolist() == [0.1 + 0.2, (0.1 + 0.2) + 0.3, 0.0, 0.7 + 0.1, 0.0]


# 2**35: packed keys past int32, while the stored group numbers and offsets are int32
@pytest.mark.parametrize("width", [None, 2**35, 2**62], ids=["packed", "wide", "binary-search"])
@pytest.mark.parametrize("codes", [None, 9], ids=["searched", "table"])
def test_timeline_counts_strictly_before(width: int | None, codes: int | None) -> None:
    ts = np.array([10, 10, 20, 20])
    times, tick = ticks(ts)
    tl = Timeline(np.array([7, 5, 7, 7]), ts, tick, width or times.size + 1, codes=codes)
    assert tl.order.tolist() == [1, 0, 2, 3]
    tl.release_build_state()  # lookups need neither the permutation nor, when packed, the times
    assert tl.order.size == 0 and len(tl) == 4
    t = np.array([10, 11, 20, 21, 100, 100, 5])
    keys = np.array([7, 7, 7, 7, 5, -1, 7])
    assert tl.count_before(keys, t, np.searchsorted(times, t)).tolist() == [0, 1, 1, 3, 1, 0, 0]
    assert tl.count_before(np.array([6]), np.array([99]), np.array([2])).tolist() == [0]
    assert tl.starts.dtype == np.int32  # stored narrow, widened by locate
    assert all(a.dtype == np.int64 for a in tl.locate(keys))


def test_large_request_sets_map_ids_the_same_way() -> None:
    """Over 2,000 rows ids are coded through polars instead of a dict: same features."""
    con = store(
        [("u1", "i1", "rate", 4.0, 5), ("u2", "i1", "click", 1.0, 6), ("u1", "i2", "view", 1, 7)]
    )
    try:
        small = requests([8])
        big = pl.concat([small] * 80)
        assert big.height > 2_000
        expected = pl.concat([compute_features(con, small)] * 80)
        assert compute_features(con, big).equals(expected, null_equal=True)
        assert FeatureSnapshot.build(con).compute(big).equals(expected, null_equal=True)
    finally:
        con.close()


def test_prefix_counts_are_compact_and_range_sums_int64() -> None:
    p = prefix(np.array([True, False, True, True]))
    assert p.dtype == np.int32 and p.tolist() == [0, 1, 1, 2, 3]
    got = between(p, np.array([0, 1, 4]), np.array([4, 2, 4]))
    assert got.dtype == np.int64 and got.tolist() == [3, 0, 0]
    assert prefix(np.array([2**40, 3], dtype=np.int64)).tolist() == [0, 2**40, 2**40 + 3]
