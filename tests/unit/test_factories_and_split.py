import duckdb

from feature_store.splits import ensure_split, materialize_protocol_split
from tests.factories import load_into_store, make_catalog, make_events


def test_protocol_split_counts_and_views(store: duckdb.DuckDBPyConnection) -> None:
    load_into_store(store, make_catalog(), make_events(n_users=3, events_per_user=15))
    counts = materialize_protocol_split(store, val_percent=20)
    # 15 ratings per user: test = ceil(3.0) = 3, train 12, val = ceil(2.4) = 3, fit 9
    assert counts == {"fit": 27, "val": 9, "test": 9}
    n_train = store.execute("SELECT count(*) FROM events_train_v1").fetchone()
    n_fit = store.execute("SELECT count(*) FROM events_fit_v1").fetchone()
    assert n_train == (36,) and n_fit == (27,)
    # test events come strictly after every train event of the same user
    leak = store.execute(
        """SELECT count(*) FROM split_v1 t JOIN split_v1 r USING (user_id)
           WHERE t.part = 'test' AND r.part <> 'test' AND r.rn > t.rn"""
    ).fetchone()
    assert leak == (0,)


def test_split_uses_integer_ceil(store: duckdb.DuckDBPyConnection) -> None:
    # 35 ratings: float ceil(0.2 * 35) would give 8 test rows; the protocol says 7.
    load_into_store(
        store, make_catalog(n_items=40), make_events(n_users=1, n_items=40, events_per_user=35)
    )
    materialize_protocol_split(store)
    assert store.execute("SELECT n_test FROM split_v1_users").fetchone() == (7,)


def test_ensure_split_rebuilds_when_any_part_is_missing(store: duckdb.DuckDBPyConnection) -> None:
    load_into_store(store, make_catalog(), make_events(n_users=3, events_per_user=15))
    ensure_split(store)
    assert store.execute("SELECT count(*) FROM split_v1").fetchone() == (45,)
    store.execute("DROP VIEW events_fit_v1")
    ensure_split(store)  # split_v1 is there, the fit view is not: both checked
    assert store.execute("SELECT count(*) FROM events_fit_v1").fetchone() == (27,)
    store.execute("DELETE FROM split_v1 WHERE part = 'test'")
    ensure_split(store)  # everything present: nothing is rebuilt
    assert store.execute("SELECT count(*) FROM split_v1").fetchone() == (36,)
