"""Splits for any log: users without ratings, mixed stores, the global time cut-off."""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb
import polars as pl
import pytest

from feature_store.splits import ensure_split, materialize_protocol_split
from recsys.core.config import SplitSettings, load_settings
from recsys.core.errors import ConfigError
from tests.factories import T0, load_into_store, make_catalog, make_events

SCHEMA = {"position": pl.Int32, "value": pl.Float64, "text": pl.String}


def _event(
    uid: str, n: int, item: int, kind: str, ts: datetime, value: float | None = None
) -> dict:
    return {
        "event_id": f"{uid}-{kind}-{n}",
        "user_id": uid,
        "item_id": f"i{item}",
        "event_type": kind,
        "value": value,
        "text": "nice" if kind == "tag" else None,
        "ts": ts,
        "request_id": f"r-{uid}-{n}" if kind in {"impression", "click"} else None,
        "position": 0 if kind in {"impression", "click"} else None,
        "source": "test",
        "batch_id": "test",
    }


def click_log(n_users: int = 2, n_clicks: int = 10) -> pl.DataFrame:
    """Users ``c*`` without ratings: per hour one impression of two items, one of them clicked."""
    rows = []
    for u in range(n_users):
        for j in range(n_clicks):
            ts = T0 + timedelta(days=u, hours=j)
            rows.append(_event(f"c{u}", 2 * j, j, "impression", ts))
            rows.append(_event(f"c{u}", 2 * j + 1, j + 10, "impression", ts))
            rows.append(_event(f"c{u}", j, j, "click", ts))
    return pl.DataFrame(rows, schema_overrides=SCHEMA)


def _count(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    row = con.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


def test_no_test_period_event_reaches_training_for_users_without_ratings(
    store: duckdb.DuckDBPyConnection,
) -> None:
    load_into_store(store, make_catalog(), click_log())
    counts = materialize_protocol_split(store)
    # 10 clicks per user split (impressions are exposure): test 2, val ceil(0.2 * 8) = 2, fit 6
    assert counts == {"fit": 12, "val": 4, "test": 4}
    assert set(
        store.execute(
            "SELECT DISTINCT e.event_type FROM split_v1 JOIN events e USING (event_id)"
        ).fetchall()
    ) == {("click",)}
    for view, start in (("events_train_v1", "test_start"), ("events_fit_v1", "val_start")):
        leaked = _count(
            store,
            f"SELECT count(*) FROM {view} e JOIN split_v1_users u USING (user_id) "
            f"WHERE e.ts >= u.{start}",
        )
        assert leaked == 0, view
    # train keeps 8 clicks and their 16 impressions per user; fit 6 clicks and 12 impressions
    assert _count(store, "SELECT count(*) FROM events_train_v1") == 2 * (8 + 16)
    assert _count(store, "SELECT count(*) FROM events_fit_v1") == 2 * (6 + 12)
    test_clicks = store.execute(
        "SELECT item_id FROM split_v1 WHERE user_id = 'c0' AND part = 'test' ORDER BY rn"
    ).fetchall()
    assert test_clicks == [("i8",), ("i9",)]


def test_one_click_user_is_cut_for_validation_too(store: duckdb.DuckDBPyConnection) -> None:
    load_into_store(store, make_catalog(), click_log(n_users=1, n_clicks=1))
    later = pl.DataFrame(
        [_event("c0", 99, 5, "impression", T0 + timedelta(hours=3))],
        schema_overrides=SCHEMA,
    )
    store.register("_later", later.to_arrow())
    store.execute("INSERT INTO events BY NAME SELECT * FROM _later")
    materialize_protocol_split(store)
    assert _count(store, "SELECT count(*) FROM events_fit_v1") == 0
    assert _count(store, "SELECT count(*) FROM events_train_v1") == 0


def test_raters_keep_protocol_v1_and_their_other_events_are_cut(
    store: duckdb.DuckDBPyConnection,
) -> None:
    ratings = make_events(n_users=3, events_per_user=15)
    tags = pl.DataFrame(  # u0 rates from T0 to T0 + 14h; its test ratings start at T0 + 12h
        [
            _event("u0", 1, 3, "tag", T0 + timedelta(hours=2)),
            _event("u0", 2, 4, "tag", T0 + timedelta(hours=13)),
        ],
        schema_overrides=SCHEMA,
    )
    load_into_store(
        store,
        make_catalog(),
        pl.concat([ratings, tags, click_log(n_users=1)], how="vertical_relaxed"),
    )
    counts = materialize_protocol_split(store)
    # ratings as in protocol v1 (27/9/9) plus the rating-less user's clicks (6/2/2)
    assert counts == {"fit": 33, "val": 11, "test": 11}
    assert (
        _count(
            store,
            "SELECT count(*) FROM split_v1 JOIN events e USING (event_id) "
            "WHERE e.event_type = 'tag'",
        )
        == 0
    )
    train_tags = store.execute(
        "SELECT event_id FROM events_train_v1 WHERE event_type = 'tag'"
    ).fetchall()
    assert train_tags == [("u0-tag-1",)]


def test_global_time_cut(store: duckdb.DuckDBPyConnection) -> None:
    load_into_store(
        store,
        make_catalog(),
        pl.concat([make_events(n_users=3), click_log()], how="vertical_relaxed"),
    )
    split = SplitSettings(kind="global_time", test_start="2020-01-02T06:00:00", val_days=0.5)
    materialize_protocol_split(store, split=split)
    cut, val_cut = datetime(2020, 1, 2, 6), datetime(2020, 1, 1, 18)
    assert _count(store, f"SELECT count(*) FROM events_train_v1 WHERE ts >= '{cut}'") == 0
    assert _count(store, f"SELECT count(*) FROM events_fit_v1 WHERE ts >= '{val_cut}'") == 0
    assert _count(store, "SELECT count(*) FROM events_train_v1") == _count(
        store, f"SELECT count(*) FROM events WHERE ts < '{cut}'"
    )
    wrong = _count(
        store,
        f"""SELECT count(*) FROM split_v1 WHERE
            (part = 'test') <> (ts >= '{cut}')
            OR (part = 'val') <> (ts >= '{val_cut}' AND ts < '{cut}')""",
    )
    assert wrong == 0
    # u0 (day 0, 15 h of ratings) is all fit; c1 (day 1, 10 h of clicks) splits at 06:00
    users = dict(
        store.execute("SELECT user_id, (n_fit, n_val, n_test) FROM split_v1_users").fetchall()
    )
    assert users["u0"] == (15, 0, 0)
    assert users["c1"] == (0, 6, 4)


def test_global_time_default_cut_is_the_last_day(store: duckdb.DuckDBPyConnection) -> None:
    load_into_store(store, make_catalog(), click_log(n_users=3))
    materialize_protocol_split(store, split=SplitSettings(kind="global_time"))
    # last event at day 2, 09:00: test from day 1, 09:00; validation the day before
    spec = store.execute("SELECT val_start, test_start FROM split_v1_spec").fetchone()
    assert spec == (datetime(2020, 1, 1, 9), datetime(2020, 1, 2, 9))


def test_ensure_split_rebuilds_only_when_settings_change(store: duckdb.DuckDBPyConnection) -> None:
    load_into_store(store, make_catalog(), make_events(n_users=2))
    assert ensure_split(store) is True
    assert ensure_split(store, SplitSettings()) is False
    assert ensure_split(store, SplitSettings(kind="global_time")) is True
    assert _count(store, "SELECT count(*) FROM split_v1_spec WHERE kind = 'global_time'") == 1


def test_split_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="split.kind"):
        load_settings(overrides={"split.kind": "random"}, environ={})
    with pytest.raises(ConfigError, match="ISO date"):
        load_settings(overrides={"split.test_start": "yesterday"}, environ={})
    settings = load_settings(
        environ={"RECSYS_SPLIT__KIND": "global_time", "RECSYS_SPLIT__TEST_DAYS": "2"}
    )
    assert settings.split.kind == "global_time" and settings.split.test_days == 2.0
