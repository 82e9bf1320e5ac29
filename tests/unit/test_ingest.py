"""Generic ingest: validation, quarantine, idempotency, atomicity, formats, malformed files."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

import feature_store.ingest as ingest_mod
from feature_store.batches import BATCH_MEMORY_LIMIT, _parse_size, open_batch
from feature_store.db import table_counts, transaction
from feature_store.ingest import ingest_events_file, ingest_items_file
from recsys.core.errors import DataValidationError

ITEMS_CSV = "item_id,title,year,genres\ni1,One,1999,Action|Drama\ni2,Two,,Comedy\n"
EVENTS_CSV = (
    "user_id,item_id,event_type,ts,value\n"
    "u1,i1,rate,964982703,4.5\n"
    "u1,i2,click,2020-01-01T10:00:00Z,\n"
    "u2,i1,rate,2020-01-01 10:00:00,11\n"
    "u2,i9,click,2020-01-01 10:00:00,\n"
    "u3,i1,click,yesterday,\n"
    "u3,i2,view,2020-01-02T00:00:00+02:00,\n"
)


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def snapshot(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    counts = table_counts(con)
    row = con.execute("SELECT count(*) FROM ingest_batches").fetchone()
    counts["ingest_batches"] = int(row[0]) if row else 0
    return counts


@pytest.fixture
def with_items(store: duckdb.DuckDBPyConnection, tmp_path: Path) -> duckdb.DuckDBPyConnection:
    ingest_items_file(store, write(tmp_path / "items.csv", ITEMS_CSV), progress=False)
    return store


def test_valid_rows_written_and_bad_rows_quarantined(with_items, tmp_path):
    con = with_items
    result = ingest_events_file(con, write(tmp_path / "ev.csv", EVENTS_CSV), progress=False)
    assert (result.rows_read, result.rows_written, result.rows_quarantined) == (6, 3, 3)
    assert result.reasons == {"rating out of range": 1, "unknown item id": 1, "bad timestamp": 1}
    bad = con.execute(
        "SELECT row_number, column_name, reason, raw FROM quarantine ORDER BY row_number"
    ).fetchall()
    assert [(r[0], r[1], r[2]) for r in bad] == [
        (3, "value", "rating out of range"),
        (4, "item_id", "unknown item id"),
        (5, "ts", "bad timestamp"),
    ]
    assert json.loads(bad[2][3])["ts"] == "yesterday"
    rows = con.execute("SELECT user_id, item_id, event_type, value, ts FROM events ORDER BY ts")
    got = [(u, i, t, v, str(ts)) for u, i, t, v, ts in rows.fetchall()]
    assert got == [
        ("u1", "i1", "rate", 4.5, "2000-07-30 18:45:03"),
        ("u1", "i2", "click", None, "2020-01-01 10:00:00"),
        ("u3", "i2", "view", None, "2020-01-01 22:00:00"),  # +02:00 converted to UTC
    ]
    users = con.execute("SELECT user_id, created_at FROM users ORDER BY user_id").fetchall()
    assert [u for u, _ in users] == ["u1", "u3"]  # u2 had no valid event
    assert str(users[0][1]) == "2000-07-30 18:45:03"


def test_reingest_csv_without_ids_adds_nothing(with_items, tmp_path):
    path = write(tmp_path / "ev.csv", EVENTS_CSV)
    first = ingest_events_file(with_items, path, progress=False)
    before = table_counts(with_items)
    again = ingest_events_file(with_items, path, progress=False)
    assert (again.rows_written, again.rows_duplicate) == (0, first.rows_written)
    assert table_counts(with_items) == before  # not even a second copy of the quarantined rows
    ids = [r[0] for r in with_items.execute("SELECT event_id FROM events").fetchall()]
    assert all(i.startswith("h:") for i in ids) and len(set(ids)) == 3


def test_duplicate_rows_within_one_file_are_written_once(with_items, tmp_path):
    text = "user_id,item_id,event_type,ts\n" + "u1,i1,click,1600000000\n" * 3
    result = ingest_events_file(with_items, write(tmp_path / "d.csv", text), progress=False)
    assert (result.rows_written, result.rows_duplicate) == (1, 2)


def test_jsonl_with_ids_is_idempotent(with_items, tmp_path):
    lines = [
        {"event_id": "a", "user_id": "u1", "item_id": "i1", "event_type": "like", "ts": 1.6e9},
        {
            "event_id": "b",
            "user_id": 7,
            "item_id": "i2",
            "event_type": "CLICK",
            "ts": "2021-03-04T05:06:07",
            "request_id": "r1",
            "position": 2,
            "extra": "ignored",
        },
        {
            "event_id": "c",
            "user_id": "u1",
            "item_id": "i2",
            "event_type": "click",
            "ts": 1.6e9,
            "position": -1,
        },
    ]
    path = write(tmp_path / "ev.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n")
    first = ingest_events_file(with_items, path, progress=False)
    assert (first.rows_written, first.reasons) == (2, {"bad position": 1})
    assert ingest_events_file(with_items, path, progress=False).rows_written == 0
    row = with_items.execute(
        "SELECT user_id, event_type, request_id, position FROM events WHERE event_id = 'b'"
    ).fetchone()
    assert row == ("7", "click", "r1", 2)


def test_parquet_events_and_items(store, tmp_path):
    items = tmp_path / "items.parquet"
    store.execute(
        f"COPY (SELECT 'p' || i AS item_id, 'Title ' || i AS title, ['a', 'b'] AS genres, "
        f"1990 + i AS year FROM range(3) t(i)) TO '{items}' (FORMAT parquet)"
    )
    events = tmp_path / "events.parquet"
    store.execute(
        f"COPY (SELECT 'u' || i AS user_id, 'p' || (i % 3) AS item_id, 'rate' AS event_type, "
        f"TIMESTAMP '2020-01-01' + INTERVAL (i) HOUR AS ts, 3.5 AS value FROM range(10) t(i)) "
        f"TO '{events}' (FORMAT parquet)"
    )
    assert ingest_items_file(store, items, progress=False).rows_written == 3
    assert store.execute("SELECT genres, year FROM items WHERE item_id = 'p1'").fetchone() == (
        ["a", "b"],
        1991,
    )
    result = ingest_events_file(store, events, progress=False)
    assert (result.rows_written, result.rows_quarantined) == (10, 0)
    assert ingest_events_file(store, events, progress=False).rows_written == 0


def test_items_reingest_replaces_in_place(store, tmp_path):
    ingest_items_file(store, write(tmp_path / "a.csv", ITEMS_CSV), progress=False)
    changed = "item_id,title,year\ni1,One Revised,2001\ni1,One Final,2002\n"
    result = ingest_items_file(store, write(tmp_path / "b.csv", changed), progress=False)
    assert (result.rows_written, result.rows_duplicate) == (1, 1)
    rows = store.execute("SELECT item_id, title, year FROM items ORDER BY item_id").fetchall()
    assert rows == [("i1", "One Final", 2002), ("i2", "Two", None)]


def test_strict_rejects_whole_batch(with_items, tmp_path):
    before = snapshot(with_items)
    with pytest.raises(DataValidationError) as err:
        ingest_events_file(
            with_items, write(tmp_path / "ev.csv", EVENTS_CSV), strict=True, progress=False
        )
    assert (err.value.row, err.value.column) == (3, "value")
    assert "ev.csv" in str(err.value) and "rating out of range" in str(err.value)
    assert snapshot(with_items) == before


def test_failure_mid_batch_leaves_store_as_before(with_items, tmp_path, monkeypatch):
    before = snapshot(with_items)

    def boom(*args, **kwargs):
        raise RuntimeError("killed after the events insert")

    monkeypatch.setattr(ingest_mod, "upsert_users", boom)
    with pytest.raises(RuntimeError):
        ingest_events_file(with_items, write(tmp_path / "ev.csv", EVENTS_CSV), progress=False)
    assert snapshot(with_items) == before  # no events, quarantine or batch rows survive
    monkeypatch.undo()
    assert ingest_events_file(with_items, tmp_path / "ev.csv", progress=False).rows_written == 3


BAD_FILES = {
    # name: (file name, content, expected row, expected column, words in the message)
    "wrong delimiter": (
        "ev.csv",
        "user_id;item_id;event_type;ts\nu1;i1;click;1600000000\n",
        0,
        "user_id",
        "wrong delimiter",
    ),
    "missing column": (
        "ev.csv",
        "user_id,item_id,event_type\nu1,i1,click\n",
        0,
        "ts",
        "missing required column",
    ),
    "non-UTF-8": (
        "ev.csv",
        b"user_id,item_id,event_type,ts,text\nu1,i1,click,1600000000,ok\n"
        b"u2,i1,comment,1600000000,caf\xe9\n",
        2,
        "text",
        "UTF-8",
    ),
    "empty": ("ev.csv", b"", 0, None, "empty"),
    "ragged row": (
        "ev.csv",
        "user_id,item_id,event_type,ts\nu1,i1,click,1600000000,extra,x\n",
        None,
        None,
        "cannot read",
    ),
    "bad jsonl": ("ev.jsonl", '{"user_id": "u1"\n', None, None, "cannot read"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_malformed_file_writes_nothing(with_items, tmp_path, case):
    name, content, row, column, words = BAD_FILES[case]
    path = write(tmp_path / name, content)
    before = snapshot(with_items)
    with pytest.raises(DataValidationError) as err:
        ingest_events_file(with_items, path, progress=False)
    message = str(err.value)
    assert str(path) in message and words in message
    if row is not None:
        assert err.value.row == row and f"row {row}" in message
    if column is not None:
        assert err.value.column == column and repr(column) in message
    assert snapshot(with_items) == before


def test_missing_file(store, tmp_path):
    with pytest.raises(DataValidationError, match="does not exist") as err:
        ingest_events_file(store, tmp_path / "nope.csv", progress=False)
    assert err.value.path == str(tmp_path / "nope.csv")
    assert snapshot(store)["ingest_batches"] == 0


def test_unknown_suffix_needs_format(store, tmp_path):
    path = write(tmp_path / "ev.txt", "user_id\tItem\n")
    with pytest.raises(DataValidationError, match="--format"):
        ingest_events_file(store, path, progress=False)


def test_tsv_format(with_items, tmp_path):
    text = "user_id\titem_id\tevent_type\tts\ttext\nu1\ti1\tcomment\t1600000000\tnice, really\n"
    result = ingest_events_file(with_items, write(tmp_path / "ev.tsv", text), progress=False)
    assert result.rows_written == 1
    assert with_items.execute("SELECT text FROM events").fetchone() == ("nice, really",)


def test_overlapping_file_writes_only_new_ids_first_of_repeats(with_items, tmp_path):
    header = "event_id,user_id,item_id,event_type,ts\n"
    first = header + "e1,u1,i1,click,1600000000\ne2,u1,i2,click,1600000001\n"
    ingest_events_file(with_items, write(tmp_path / "a.csv", first), progress=False)
    # e1 is stored already; e3 comes twice (the first, from u2, wins); e4 is new
    second = header + (
        "e1,u9,i1,view,1600000009\ne3,u2,i1,view,1600000002\n"
        "e3,u8,i2,like,1600000003\ne4,u3,i2,view,1600000004\n"
    )
    result = ingest_events_file(with_items, write(tmp_path / "b.csv", second), progress=False)
    assert (result.rows_read, result.rows_written, result.rows_duplicate) == (4, 2, 2)
    rows = with_items.execute(
        "SELECT event_id, user_id, event_type FROM events ORDER BY event_id"
    ).fetchall()
    assert rows == [
        ("e1", "u1", "click"),
        ("e2", "u1", "click"),
        ("e3", "u2", "view"),
        ("e4", "u3", "view"),
    ]
    again = ingest_events_file(with_items, tmp_path / "b.csv", progress=False)
    assert (again.rows_written, again.rows_duplicate) == (0, 4)


def test_users_created_at_moves_back_for_older_events(with_items, tmp_path):
    header = "user_id,item_id,event_type,ts\n"
    ingest_events_file(
        with_items, write(tmp_path / "a.csv", header + "u1,i1,click,1600000000\n"), progress=False
    )
    older = header + "u1,i2,click,1500000000\nu2,i1,view,1700000000\n"
    ingest_events_file(with_items, write(tmp_path / "b.csv", older), progress=False)
    users = with_items.execute("SELECT user_id, epoch(created_at) FROM users ORDER BY 1").fetchall()
    assert users == [("u1", 1500000000), ("u2", 1700000000)]


def test_quarantine_keeps_raw_text_of_bad_rows_only(with_items, tmp_path):
    text = "user_id,item_id,event_type,ts,position\nu1,i1,Click,1600000000,2\nu1,i1,view,x1, 7x\n"
    result = ingest_events_file(with_items, write(tmp_path / "q.csv", text), progress=False)
    assert (result.rows_written, result.rows_quarantined) == (1, 1)
    raw = with_items.execute("SELECT row_number, raw FROM quarantine").fetchall()
    assert [(r, json.loads(j)) for r, j in raw] == [
        (
            2,
            {
                "event_id": None,
                "user_id": "u1",
                "item_id": "i1",
                "event_type": "view",
                "ts": "x1",
                "value": None,
                "text": None,
                "request_id": None,
                "position": "7x",
            },
        )
    ]


def _memory_limit(con: duckdb.DuckDBPyConnection) -> int:
    row = con.execute("SELECT current_setting('memory_limit')").fetchone()
    size = _parse_size(str(row[0])) if row else None
    assert size is not None, row
    return size


def _order(con: duckdb.DuckDBPyConnection) -> object:
    row = con.execute("SELECT current_setting('preserve_insertion_order')").fetchone()
    return row[0] if row else None


def test_batch_caps_memory_limit_and_restores_it(with_items, tmp_path, monkeypatch):
    con = with_items
    con.execute("SET memory_limit = '8GiB'")
    con.execute("SET preserve_insertion_order = false")  # staging numbers rows by their order
    seen: list[int] = []
    order: list[object] = []
    real = ingest_mod._insert_new_events

    def spy(batch, typed):
        seen.append(_memory_limit(batch.con))
        order.append(_order(batch.con))
        return real(batch, typed)

    monkeypatch.setattr(ingest_mod, "_insert_new_events", spy)
    ingest_events_file(con, write(tmp_path / "ev.csv", EVENTS_CSV), progress=False)
    assert seen == [BATCH_MEMORY_LIMIT] and order == [True]
    assert _memory_limit(con) == 8 << 30 and _order(con) is False
    # a lower limit is kept as it is
    con.execute("SET memory_limit = '1GiB'")
    ingest_events_file(con, tmp_path / "ev.csv", progress=False)
    assert seen[-1] == 1 << 30 and _memory_limit(con) == 1 << 30


def test_memory_limit_restored_after_failed_batch(with_items, tmp_path):
    con = with_items
    con.execute("SET memory_limit = '8GiB'")
    with pytest.raises(DataValidationError):
        ingest_events_file(con, write(tmp_path / "bad.csv", "user_id;item_id\n"), progress=False)
    assert _memory_limit(con) == 8 << 30


def test_failed_batch_in_callers_aborted_transaction_keeps_its_error(with_items):
    con = with_items
    con.execute("SET memory_limit = '8GiB'")
    with pytest.raises(duckdb.ConstraintException), transaction(con):
        with open_batch(con, "events", "x", steps=1, progress=False, own_transaction=False):
            con.execute("INSERT INTO events (event_id) VALUES (NULL)")  # aborts the transaction
    # after the caller's rollback the connection works; the cap could not be lifted meanwhile
    assert _memory_limit(con) == BATCH_MEMORY_LIMIT
    assert con.execute("SELECT count(*) FROM events").fetchone() == (0,)
