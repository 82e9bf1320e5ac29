"""Point-in-time features: exact values on hand-made data, nulls, order, bad input."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import duckdb
import polars as pl
import pytest

from feature_store.db import init_schema
from feature_store.features import FEATURE_COLUMNS, UnknownRelationError, compute_features
from recsys.core.errors import DataValidationError, RecsysError

T0 = datetime(2020, 1, 1)
D = timedelta(days=1)
H = timedelta(hours=1)

ITEMS = [  # item_id, genres, category
    ("A", ["Action", "Comedy"], "Action"),
    ("B", ["Comedy"], "Comedy"),
    ("C", ["Drama"], "Drama"),
    ("D", [], None),
]
EVENTS = [  # event_id, user, item, type, value, ts
    ("e01", "u1", "A", "rate", 5.0, T0 - 400 * D),
    ("e02", "u1", "B", "rate", 3.0, T0 - 20 * D),
    ("e03", "u2", "A", "rate", 4.0, T0 - 10 * D),
    ("e04", "u2", "B", "click", None, T0 - 10 * D + H),
    ("e05", "u1", "C", "rate", 4.5, T0 - 3 * D),
    ("e06", "u2", "A", "impression", None, T0 - 2 * D),
    ("e07", "u3", "A", "view", None, T0 - 1 * D),
    ("e08", "u1", "A", "rate", 2.0, T0),  # exactly at as_of: never counted
    ("e09", "u2", "C", "rate", 1.0, T0 + 1 * D),  # the future
    ("e10", "u3", "B", "view", None, T0 - 1 * D + 2 * H),
    ("e11", "u3", "C", "view", None, T0 - 1 * D + 3 * H),
    ("e12", "u3", "D", "rate", 4.0, T0 - 7 * D),  # exactly on the 7-day window edge
]


def insert(con: duckdb.DuckDBPyConnection, events: list[tuple]) -> None:
    con.executemany(
        "INSERT INTO events (event_id, user_id, item_id, event_type, value, ts, source, batch_id) "
        "VALUES (?, ?, ?, ?, ?, ?, 'test', 'test')",
        [list(e) for e in events],
    )


@pytest.fixture
def con() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    init_schema(con)
    con.executemany(
        "INSERT INTO items (item_id, title, genres, category, source, updated_at) "
        "VALUES (?, ?, ?, ?, 'test', ?)",
        [[i, f"title {i}", g, c, T0] for i, g, c in ITEMS],
    )
    insert(con, EVENTS)
    yield con
    con.close()


def requests(*rows: tuple[str, str, datetime]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "as_of": [r[2] for r in rows],
        },
        schema={"user_id": pl.Utf8, "item_id": pl.Utf8, "as_of": pl.Datetime("us")},
    )


def row(con: duckdb.DuckDBPyConnection, user: str, item: str, as_of: datetime = T0) -> dict:
    return compute_features(con, requests((user, item, as_of))).row(0, named=True)


def test_item_features_exact(con: duckdb.DuckDBPyConnection) -> None:
    f = row(con, "u1", "A")
    # Interactions on A before T0: e01 (-400 d), e03 (-10 d), e07 (-1 d); e06 is an impression.
    assert f["item_events_7d"] == 1
    assert f["item_events_30d"] == 2
    assert f["item_events_365d"] == 2
    assert f["item_events_all"] == 3
    assert f["item_trend_7d_30d"] == pytest.approx(math.log(2 / (1 + 2 * 7 / 30)))
    assert f["item_trend_30d_365d"] == pytest.approx(math.log(3 / (1 + 2 * 30 / 365)))
    assert f["item_positives_all"] == 2
    assert f["item_positive_rate"] == pytest.approx(2 / 3)
    assert f["item_rating_count"] == 2
    assert f["item_mean_rating"] == pytest.approx(4.5)
    assert f["item_ctr"] == 0.0  # one impression, no click
    assert f["item_age_days"] == pytest.approx(400)
    assert f["item_days_since_last"] == pytest.approx(1)


def test_window_edge_counts_event_exactly_window_before(con: duckdb.DuckDBPyConnection) -> None:
    f = row(con, "u1", "D")
    # e12 at exactly T0 - 7 d lies in [as_of - 7 d, as_of).
    assert (f["item_events_7d"], f["item_events_all"]) == (1, 1)
    assert f["item_ctr"] is None  # no impression logs for D
    assert f["user_genre_affinity"] is None  # D has no genres
    assert f["user_category_affinity"] is None


def test_user_features_exact(con: duckdb.DuckDBPyConnection) -> None:
    f = row(con, "u1", "A")
    # u1 before T0: e01 A 5.0 (-400 d), e02 B 3.0 (-20 d), e05 C 4.5 (-3 d); e08 is at T0.
    assert f["user_events_all"] == 3
    assert f["user_events_30d"] == 2
    assert f["user_positives_all"] == 2
    assert f["user_positive_rate"] == pytest.approx(2 / 3)
    assert f["user_rating_count"] == 3
    assert f["user_mean_rating"] == pytest.approx((5 + 3 + 4.5) / 3)
    assert f["user_days_since_last"] == pytest.approx(3)
    assert f["user_item_events"] == 1


def test_genre_affinity_exact(con: duckdb.DuckDBPyConnection) -> None:
    # u1's positives before T0: A (Action, Comedy; category Action) and C (Drama).
    a = row(con, "u1", "A")
    assert a["user_genre_affinity"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert a["user_genre_affinity_max"] == pytest.approx(1 / 2)
    assert a["user_category_affinity"] == pytest.approx(1 / 2)
    b = row(con, "u1", "B")  # Comedy: only A; category Comedy: none
    assert b["user_genre_affinity"] == pytest.approx(1 / 2)
    assert b["user_category_affinity"] == 0.0
    # u2's only positive before T0 is A (e03; the click e04 on B is positive too).
    c = row(con, "u2", "C")
    assert (c["user_positives_all"], c["user_genre_affinity"]) == (2, 0.0)


def test_covisitation_exact(con: duckdb.DuckDBPyConnection) -> None:
    # Consecutive pairs within 1 day: u2 A->B (-10 d + 1 h); u3 A->B (-1 d + 2 h), B->C (+3 h).
    f = row(con, "u1", "B")  # u1's recent items: A, B, C -> (A,B)=2, (B,B)=0, (C,B)=1
    assert (f["covisit_strength"], f["covisit_max"]) == (3, 2)
    g = row(con, "u2", "A")  # u2's recent items: A, B -> (B,A)=2
    assert (g["covisit_strength"], g["covisit_max"]) == (2, 2)
    # Before the first A->B pair is complete, nothing co-visits.
    h = row(con, "u2", "B", T0 - 10 * D + 30 * timedelta(minutes=1))
    assert (h["covisit_strength"], h["user_events_all"]) == (0, 1)


def test_covisit_window_is_a_parameter(con: duckdb.DuckDBPyConnection) -> None:
    req = requests(("u1", "B", T0))
    narrow = compute_features(con, req, covisit_window_days=1.5 / 24)  # 1.5 hours
    assert narrow["covisit_strength"][0] == 2  # (A,B) from u2 (1 h gap), (C,B) from u3 (1 h gap)
    with pytest.raises(RecsysError, match="covisit_window_days"):
        compute_features(con, req, covisit_window_days=0)


def test_unknown_user_and_item_give_zero_counts_and_null_rates(
    con: duckdb.DuckDBPyConnection,
) -> None:
    f = row(con, "nobody", "nothing")
    counts = [c for c in FEATURE_COLUMNS if "events" in c or "count" in c or "positives" in c]
    assert counts and all(f[c] == 0 for c in counts)
    for col in (
        "item_mean_rating",
        "item_positive_rate",
        "item_age_days",
        "item_days_since_last",
        "user_mean_rating",
        "user_days_since_last",
        "user_genre_affinity",
        "item_ctr",
    ):
        assert f[col] is None, col
    assert (f["covisit_strength"], f["item_trend_7d_30d"]) == (0, 0.0)


def test_everything_before_the_first_event_is_empty(con: duckdb.DuckDBPyConnection) -> None:
    f = row(con, "u1", "A", T0 - 500 * D)
    assert f["item_events_all"] == 0 and f["user_events_all"] == 0
    assert f["item_age_days"] is None and f["user_mean_rating"] is None


def test_row_order_and_duplicates_preserved(con: duckdb.DuckDBPyConnection) -> None:
    rows = [
        ("u2", "A", T0),
        ("u1", "A", T0),
        ("zz", "A", T0),
        ("u1", "A", T0),
        ("u1", "A", T0 - 100 * D),
        ("u2", "A", T0),
    ]
    out = compute_features(con, requests(*rows))
    assert out.columns == ["user_id", "item_id", "as_of", *FEATURE_COLUMNS]
    assert list(zip(out["user_id"], out["item_id"], out["as_of"], strict=True)) == rows
    assert out["user_events_all"].to_list() == [2, 3, 0, 3, 1, 2]
    assert out.row(0) == out.row(5) and out.row(1) == out.row(3)
    assert all(out.schema[c] == pl.Float64 for c in FEATURE_COLUMNS)


def test_empty_requests(con: duckdb.DuckDBPyConnection) -> None:
    out = compute_features(con, requests())
    assert out.height == 0 and out.columns == ["user_id", "item_id", "as_of", *FEATURE_COLUMNS]


def test_timezone_aware_as_of_is_converted_to_utc(con: duckdb.DuckDBPyConnection) -> None:
    req = requests(("u1", "A", T0)).with_columns(
        pl.col("as_of").dt.replace_time_zone("UTC").dt.convert_time_zone("Europe/Berlin")
    )
    out = compute_features(con, req)
    assert out["as_of"][0] == T0 and out["user_events_all"][0] == 3


def test_works_through_a_cursor_and_on_protocol_views(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("CREATE VIEW events_fit_v1 AS SELECT * FROM events WHERE user_id <> 'u1'")
    out = compute_features(con.cursor(), requests(("u1", "A", T0)), events="events_fit_v1")
    assert (out["user_events_all"][0], out["item_events_all"][0]) == (0, 2)


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pl.DataFrame({"user_id": ["u1"], "as_of": [T0]}), "item_id"),
        (pl.DataFrame({"user_id": [1], "item_id": ["A"], "as_of": [T0]}), "Utf8"),
        (pl.DataFrame({"user_id": ["u1"], "item_id": ["A"], "as_of": ["2020"]}), "Datetime"),
        (
            pl.DataFrame({"user_id": ["u1", None], "item_id": ["A", "B"], "as_of": [T0] * 2}),
            "nulls",
        ),
    ],
)
def test_bad_requests_raise_clear_errors(
    con: duckdb.DuckDBPyConnection, frame: pl.DataFrame, message: str
) -> None:
    with pytest.raises(DataValidationError, match=message):
        compute_features(con, frame)


def test_not_a_dataframe(con: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(DataValidationError, match="polars DataFrame"):
        compute_features(con, {"user_id": ["u1"]})  # type: ignore[arg-type]


@pytest.mark.parametrize("relation", ["items", "events; DROP TABLE events", "events_train_v1"])
def test_unknown_or_disallowed_relation(con: duckdb.DuckDBPyConnection, relation: str) -> None:
    with pytest.raises(UnknownRelationError, match=relation.split(";")[0]):
        compute_features(con, requests(("u1", "A", T0)), events=relation)
    assert con.execute("SELECT count(*) FROM events").fetchone() == (len(EVENTS),)
