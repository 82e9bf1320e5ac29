"""One set of rules, two implementations: the per-record Python path must agree with the SQL
file path on every record (same reason, same content-hash id)."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from feature_store.ingest import ingest_event_records, ingest_events_file, ingest_items_file
from feature_store.validation import validate_event_record

GOOD = {"user_id": "u1", "item_id": "i1", "event_type": "click", "ts": "2020-01-01T00:00:00"}
CASES = [
    ({}, None),
    ({"event_type": "Rate", "value": 4.5}, None),
    ({"ts": 1577836800}, None),
    ({"ts": "2020-01-01T02:00:00+02:00"}, None),
    ({"request_id": "r1", "position": 3, "text": "hello"}, None),
    ({"user_id": ""}, "missing user_id"),
    ({"item_id": None}, "missing item_id"),
    ({"event_type": "clack"}, "unknown event type"),
    ({"ts": None}, "missing ts"),
    ({"ts": "yesterday"}, "bad timestamp"),
    ({"ts": "1850-01-01T00:00:00"}, "timestamp out of range"),
    ({"value": "lots"}, "non-numeric value"),
    ({"event_type": "rate"}, "rate without value"),
    ({"event_type": "rate", "value": 11}, "rating out of range"),
    ({"position": -1}, "bad position"),
    ({"position": "first"}, "bad position"),
    ({"item_id": "i404"}, "unknown item id"),
    # what JSON can carry and the store cannot hold (issue 9): the file path agrees
    ({"position": 3_000_000_000}, "bad position"),
    ({"position": 2**31 - 1}, None),
    ({"position": "\u0663"}, "bad position"),
    ({"value": 1e13}, "value out of range"),
    ({"value": "\u0663"}, "non-numeric value"),
    ({"value": "inf"}, "non-numeric value"),
    ({"ts": "9999-12-31T23:00:00-05:00"}, "timestamp out of range"),
    ({"ts": "0001-01-01T00:00:00+05:00"}, "timestamp out of range"),
]


@pytest.mark.parametrize(("change", "reason"), CASES)
def test_python_rules(change, reason):
    row, got = validate_event_record({**GOOD, **change}, known_item={"i1"}.__contains__)
    assert got == reason
    assert (row is None) == (reason is not None)


def test_normalized_row():
    row, _ = validate_event_record({**GOOD, "ts": "2020-01-01T02:00:00+02:00", "user_id": 7})
    assert row is not None
    assert (row["user_id"], row["ts"]) == ("7", datetime(2020, 1, 1))
    assert row["event_id"].startswith("h:")


def test_unknown_fields_are_named():
    _, reason = validate_event_record({**GOOD, "colour": "red", "size": 2})
    assert reason == "unknown field(s) colour, size"


def test_sql_and_python_paths_agree(store, tmp_path):
    (tmp_path / "items.csv").write_text("item_id,title\ni1,One\n")
    ingest_items_file(store, tmp_path / "items.csv", progress=False)
    records = [{**GOOD, **change} for change, _ in CASES]
    path = tmp_path / "ev.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    ingest_events_file(store, path, progress=False)
    sql_bad = dict(store.execute("SELECT row_number, reason FROM quarantine").fetchall())
    file_ids = store.execute("SELECT event_id FROM events").fetchall()
    api = ingest_event_records(store, records)
    for index, (_, reason) in enumerate(CASES):
        assert sql_bad.get(index + 1) == reason, CASES[index]
        status = api.statuses[index]
        assert status.status == ("rejected" if reason else "duplicate"), CASES[index]
        assert status.reason == reason
    # same content-hash ids (three cases are the same instant written three ways: one event;
    # the fourth is the int32 maximum position)
    assert {s.event_id for s in api.statuses if s.status == "duplicate"} == {r[0] for r in file_ids}
    assert len(file_ids) == 4


def test_records_batch_statuses_and_quarantine(store, tmp_path):
    (tmp_path / "items.csv").write_text("item_id,title\ni1,One\n")
    ingest_items_file(store, tmp_path / "items.csv", progress=False)
    records = [{**GOOD, "event_id": "e1"}, {**GOOD, "event_id": "e1"}, {**GOOD, "ts": "soon"}]
    result = ingest_event_records(store, records)
    assert [s.status for s in result.statuses] == ["accepted", "duplicate", "rejected"]
    assert (result.rows_written, result.rows_duplicate, result.rows_quarantined) == (1, 1, 1)
    assert store.execute("SELECT source, row_number, reason FROM quarantine").fetchall() == [
        ("api", 3, "bad timestamp")
    ]
    assert store.execute("SELECT user_id FROM users").fetchall() == [("u1",)]
    again = ingest_event_records(store, records[:1])
    assert again.statuses[0].status == "duplicate" and again.rows_written == 0


TS_FORMS = [
    ("1577836800", datetime(2020, 1, 1)),
    (" 1577836800.25 ", datetime(2020, 1, 1, 0, 0, 0, 250000)),
    ("1.5778368e9", datetime(2020, 1, 1)),
    ("2020-01-01T10:00:00Z", datetime(2020, 1, 1, 10)),
    ("2020-01-01 10:00:00.5-01:30", datetime(2020, 1, 1, 11, 30, 0, 500000)),
    ("2020-01-01T10:00:00+0200", datetime(2020, 1, 1, 8)),
    ("2020-01-01 10:00:00", datetime(2020, 1, 1, 10)),
    ("2020-01-01", datetime(2020, 1, 1)),
    ("12:00", None),
    ("1:2", None),
]


def test_sql_and_python_parse_timestamp_forms_alike(store, tmp_path):
    (tmp_path / "items.csv").write_text("item_id,title\ni1,One\n")
    ingest_items_file(store, tmp_path / "items.csv", progress=False)
    path = tmp_path / "ts.jsonl"
    path.write_text(
        "".join(
            json.dumps({**GOOD, "event_id": f"e{k}", "ts": ts}) + "\n"
            for k, (ts, _) in enumerate(TS_FORMS)
        )
    )
    ingest_events_file(store, path, progress=False)
    stored = dict(store.execute("SELECT event_id, ts FROM events").fetchall())
    for k, (text, expected) in enumerate(TS_FORMS):
        row, reason = validate_event_record({**GOOD, "ts": text})
        assert stored.get(f"e{k}") == expected, text
        assert (row["ts"] if row else None) == expected, text
        assert reason == (None if expected else "bad timestamp"), text
