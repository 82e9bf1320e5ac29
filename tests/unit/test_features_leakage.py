"""No leakage: events at or after ``as_of`` never change any feature (randomized with hypothesis),
and the simple counts agree with a brute-force reference."""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feature_store.db import init_schema
from feature_store.features import FEATURE_COLUMNS, compute_features
from recsys.core.rules import is_positive

T0 = datetime(2021, 3, 1)
USERS = [f"u{k}" for k in range(4)]
ITEMS = [f"i{k}" for k in range(5)]
TYPES = ["rate", "rate", "click", "view", "impression", "like"]

event = st.tuples(
    st.sampled_from(USERS),
    st.sampled_from(ITEMS),
    st.sampled_from(TYPES),
    st.sampled_from([1.0, 2.5, 4.0, 5.0]),
    st.integers(0, 24 * 40),  # hours after T0: ties are frequent on purpose
)


def fresh_store() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    init_schema(con)
    con.executemany(
        "INSERT INTO items (item_id, title, genres, category, source, updated_at) "
        "VALUES (?, ?, ?, ?, 't', ?)",
        [[i, i, [f"g{k % 3}", f"g{k % 2 + 3}"], f"g{k % 3}", T0] for k, i in enumerate(ITEMS)],
    )
    return con


def add_events(con: duckdb.DuckDBPyConnection, events: list[tuple], prefix: str) -> None:
    if not events:
        return
    con.executemany(
        "INSERT INTO events (event_id, user_id, item_id, event_type, value, ts, source, batch_id) "
        "VALUES (?, ?, ?, ?, ?, ?, 't', 't')",
        [
            [f"{prefix}{n:04d}", u, i, t, v if t == "rate" else None, T0 + timedelta(hours=h)]
            for n, (u, i, t, v, h) in enumerate(events)
        ],
    )


def all_requests(as_of: datetime) -> pl.DataFrame:
    pairs = [(u, i) for u in [*USERS, "ghost"] for i in [*ITEMS, "nothing"]]
    return pl.DataFrame(
        {
            "user_id": [p[0] for p in pairs],
            "item_id": [p[1] for p in pairs],
            "as_of": [as_of] * len(pairs),
        },
        schema={"user_id": pl.Utf8, "item_id": pl.Utf8, "as_of": pl.Datetime("us")},
    )


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    past=st.lists(event, min_size=0, max_size=40),
    future=st.lists(event, min_size=1, max_size=15),
    cut_hours=st.integers(0, 24 * 40),
    window_days=st.sampled_from([0.25, 1.0, 10.0]),
)
def test_events_at_or_after_as_of_never_change_features(
    past: list[tuple], future: list[tuple], cut_hours: int, window_days: float
) -> None:
    as_of = T0 + timedelta(hours=cut_hours)
    con = fresh_store()
    try:
        add_events(con, [e for e in past if e[4] < cut_hours], "p")
        req = all_requests(as_of)
        before = compute_features(con, req, covisit_window_days=window_days)
        # The future starts exactly at as_of: hour offsets shifted to >= cut_hours.
        add_events(con, [(*e[:4], cut_hours + e[4] % 48) for e in future], "f")
        after = compute_features(con, req, covisit_window_days=window_days)
    finally:
        con.close()
    assert before.equals(after, null_equal=True)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(past=st.lists(event, min_size=1, max_size=40), cut_hours=st.integers(0, 24 * 40))
def test_counts_match_a_brute_force_reference(past: list[tuple], cut_hours: int) -> None:
    as_of = T0 + timedelta(hours=cut_hours)
    con = fresh_store()
    try:
        add_events(con, past, "p")
        out = compute_features(con, all_requests(as_of))
    finally:
        con.close()
    seen = [
        (u, i, t, v, T0 + timedelta(hours=h))
        for u, i, t, v, h in past
        if T0 + timedelta(hours=h) < as_of and t != "impression"
    ]
    for f in out.iter_rows(named=True):
        user = [e for e in seen if e[0] == f["user_id"]]
        item = [e for e in seen if e[1] == f["item_id"]]
        week = [e for e in item if e[4] >= as_of - timedelta(days=7)]
        positives = [e for e in user if is_positive(e[2], e[3])]
        assert f["item_events_all"] == len(item)
        assert f["item_events_7d"] == len(week)
        assert f["user_events_all"] == len(user)
        assert f["user_positives_all"] == len(positives)
        assert f["user_item_events"] == len([e for e in user if e[1] == f["item_id"]])
        last = max((e[4] for e in user), default=None)
        expected_recency = (as_of - last).total_seconds() / 86400 if last else None
        assert f["user_days_since_last"] == (
            None if expected_recency is None else pytest.approx(expected_recency)
        )
    assert set(FEATURE_COLUMNS) <= set(out.columns)
