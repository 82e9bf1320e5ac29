"""Features on the real MovieLens data: the protocol views, no leakage across the split, the
request path through a cursor, and the ``recsys features`` command."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest
from click.testing import CliRunner

from feature_store.adapters.movielens import ingest_movielens
from feature_store.db import connect
from feature_store.features import FEATURE_COLUMNS, FeatureSnapshot, compute_features
from feature_store.splits import materialize_protocol_split
from recsys.cli import main
from tests.unit.features_reference import reference_features
from tests.unit.test_features_snapshot import assert_close

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ml_home(tmp_path_factory: pytest.TempPathFactory, real_data_dir: Path) -> Path:
    home = tmp_path_factory.mktemp("ml-features")
    con = connect(home / "recsys.duckdb")
    ingest_movielens(con, real_data_dir, progress=False)
    materialize_protocol_split(con)
    con.close()
    return home


@pytest.fixture
def ml(ml_home: Path) -> duckdb.DuckDBPyConnection:
    con = connect(ml_home / "recsys.duckdb", read_only=True)
    yield con
    con.close()


def test_test_ratings_features_match_between_events_and_train_view(
    ml: duckdb.DuckDBPyConnection,
) -> None:
    """At each user's test start, the user's own features see the same past either way."""
    rows = ml.execute(
        "SELECT s.user_id, s.item_id, u.test_start AS as_of FROM split_v1 s "
        "JOIN split_v1_users u USING (user_id) WHERE s.part = 'test' "
        "ORDER BY s.user_id, s.rn LIMIT 400"
    ).pl()
    live = compute_features(ml, rows)
    train = compute_features(ml, rows, events="events_train_v1")
    user_cols = ["user_events_all", "user_mean_rating", "user_days_since_last"]
    assert live.select(user_cols).equals(train.select(user_cols), null_equal=True)
    assert (train["user_item_events"] == 0).all()  # the test item is unseen in train
    assert train["item_events_all"].sum() <= live["item_events_all"].sum()


def test_request_path_one_user_300_candidates(ml: duckdb.DuckDBPyConnection) -> None:
    items = [
        r[0]
        for r in ml.execute(
            "SELECT item_id FROM events GROUP BY item_id ORDER BY count(*) DESC, item_id LIMIT 300"
        ).fetchall()
    ]
    req = pl.DataFrame(
        {"user_id": ["414"] * 300, "item_id": items, "as_of": [datetime(2030, 1, 1)] * 300}
    )
    out = compute_features(ml.cursor(), req)
    assert out.height == 300 and out["item_id"].to_list() == items
    assert (out["user_events_all"] == out["user_events_all"][0]).all()
    assert out["item_events_all"].min() > 0 and out["user_genre_affinity"].null_count() == 0
    assert out["covisit_strength"].sum() > 0


def test_cli_features_writes_parquet(ml_home: Path, tmp_path: Path) -> None:
    requests = tmp_path / "req.csv"
    requests.write_text(
        "user_id,item_id,as_of\n1,1,2001-01-01T00:00:00\n414,318,2018-09-01T12:00:00\n"
        "nobody,1,2018-01-01T00:00:00\n"
    )
    out = tmp_path / "out" / "features.parquet"
    result = CliRunner().invoke(
        main,
        [
            "--home",
            str(ml_home),
            "features",
            str(requests),
            "--output",
            str(out),
            "--events",
            "events_train_v1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "3 rows, 26 features from events_train_v1" in result.output
    frame = pl.read_parquet(out)
    assert frame.columns == ["user_id", "item_id", "as_of", *FEATURE_COLUMNS]
    assert frame["user_events_all"].to_list()[2] == 0


def test_cli_features_rejects_bad_file(ml_home: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,as_of\n1,2001-01-01\n")
    result = CliRunner().invoke(
        main, ["--home", str(ml_home), "features", str(bad), "--output", str(tmp_path / "o.pq")]
    )
    assert result.exit_code != 0 and "item_id" in result.output


def test_snapshot_equals_the_store_for_real_users(ml: duckdb.DuckDBPyConnection) -> None:
    """The serving fast path on MovieLens: a few users x 300 popular items, at "now" and at
    each user's test start, bit for bit equal to reading the store (both read modes)."""
    snap = FeatureSnapshot.build(ml.cursor())
    assert snap.n_events == ml.execute("SELECT count(*) FROM events").fetchone()[0]
    items = [
        r[0]
        for r in ml.execute(
            "SELECT item_id FROM events GROUP BY item_id ORDER BY count(*) DESC, item_id LIMIT 300"
        ).fetchall()
    ]
    moments = ml.execute(
        "SELECT user_id, test_start FROM split_v1_users ORDER BY user_id LIMIT 4"
    ).fetchall()
    later = snap.newest_event + timedelta(seconds=1)
    for user, test_start in [*moments, ("414", later), ("nobody", later)]:
        req = pl.DataFrame({"user_id": [user] * 300, "item_id": items, "as_of": [test_start] * 300})
        cached = compute_features(ml, req, snapshot=snap)
        for full_read in (True, False):
            index = FeatureSnapshot.read(ml, "events", 1.0, requests=req, full_read=full_read)
            assert index.compute(req).equals(cached, null_equal=True), (user, full_read)
    assert cached["user_events_all"].sum() == 0 and cached["item_events_all"].min() > 0


def test_same_values_as_the_first_implementation_on_real_data(
    ml: duckdb.DuckDBPyConnection,
) -> None:
    """The numpy timelines against the polars version they replaced, on protocol rows."""
    rows = ml.execute(
        "SELECT s.user_id, s.item_id, u.test_start AS as_of FROM split_v1 s "
        "JOIN split_v1_users u USING (user_id) WHERE s.part = 'test' "
        "ORDER BY s.user_id, s.rn LIMIT 600"
    ).pl()
    for events in ("events", "events_train_v1"):
        assert_close(
            compute_features(ml, rows, events=events), reference_features(ml, rows, events=events)
        )
