"""Issue 9 item 1: one bad event never stops ingestion; client mistakes are never a 500.

What the API answers ``accepted`` the store can hold (int32 ``position``, valid Unicode, a
timestamp that converts to UTC); anything the writer still cannot store is quarantined with its
reason while the rest lands.  Real DuckDB files, a real event log, the real app.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import feature_store.ingest as ingest_mod
from feature_store.db import EVENT_TYPES, connect
from feature_store.validation import validate_event_record
from recsys.core.config import Settings, load_settings
from serving.app import create_app
from serving.eventlog import EventLog
from serving.writer import EventWriter
from tests.factories import load_into_store, make_catalog, make_events

KEY = {"X-API-Key": "s3cret", "Content-Type": "application/json"}
SURROGATE = "\ud83d"  # half of an emoji, as a JavaScript client cuts it


def _home(root: Path) -> Settings:
    settings = load_settings(
        overrides={"home": str(root / "home"), "serving.api_key": "s3cret"}, environ={}
    )
    con = connect(settings.db_path)
    load_into_store(con, make_catalog(), make_events())
    con.close()
    EventWriter(settings, refresh_embeddings=False).flush()
    return settings


def no_models(settings: Settings, con: Any) -> Any:
    """These tests need no models (and no MLflow import): the API refuses to recommend."""
    raise ValueError("no models in this test")


@pytest.fixture
def home(tmp_path: Path) -> Settings:
    return _home(tmp_path)


@pytest.fixture
def app(home: Settings) -> Iterator[Flask]:
    app = create_app(home, loader=no_models, start_watcher=False)
    yield app
    app.extensions["recsys"].close()


def event(event_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "user_id": "u1",
        "item_id": "i3",
        "event_type": "click",
        "ts": "2021-01-01T00:00:00Z",
        **extra,
    }


def post(app: Flask, events: list[Any]) -> Any:
    # json.dumps escapes a lone surrogate as \ud83d: valid JSON that decodes back to it
    return app.test_client().post("/v1/events", data=json.dumps({"events": events}), headers=KEY)


def store_ids(settings: Settings) -> set[str]:
    con = connect(settings.db_path, read_only=True)
    try:
        return {r[0] for r in con.execute("SELECT event_id FROM events").fetchall()}
    finally:
        con.close()


def quarantine_reasons(settings: Settings) -> list[str]:
    con = connect(settings.db_path, read_only=True)
    try:
        return [r[0] for r in con.execute("SELECT reason FROM quarantine").fetchall()]
    finally:
        con.close()


BAD_EVENTS = [
    (event("pos", position=3_000_000_000), "bad position"),
    (event("pos-str", position="3000000000"), "bad position"),
    (event("pos-digits", position="\u0663"), "bad position"),  # Arabic-Indic 3
    (event("text", text=SURROGATE), "text is not valid Unicode"),
    (event("user", user_id="u" + SURROGATE), "user_id is not valid Unicode"),
    (event("item", item_id=SURROGATE), "item_id is not valid Unicode"),
    (event("req", request_id=SURROGATE), "request_id is not valid Unicode"),
    (event(SURROGATE), "event_id is not valid Unicode"),
    (event("type", event_type=SURROGATE), "event_type is not valid Unicode"),
    (event("ts-hi", ts="9999-12-31T23:00:00-05:00"), "timestamp out of range"),
    (event("ts-lo", ts="0001-01-01T00:00:00+05:00"), "timestamp out of range"),
    (event("ts-int", ts=10**400), "timestamp out of range"),
    (event("value", value=10**400), "non-numeric value"),
    (event("value-str", value="\u0663"), "non-numeric value"),
    (event("value-inf", value="inf"), "non-numeric value"),
    # no event_id: the content hash took round(value * 1e6) and overflowed
    ({**event("-"), "event_id": None, "value": 1e305}, "value out of range"),
]


@pytest.mark.parametrize(("record", "reason"), BAD_EVENTS, ids=[r[1] for r in BAD_EVENTS])
def test_events_the_store_cannot_hold_are_rejected_with_a_reason(
    app: Flask, record: dict[str, Any], reason: str
) -> None:
    resp = post(app, [record, event("fine")])
    assert resp.status_code == 200, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["results"][0]["status"] == "rejected"
    assert body["results"][0]["reason"].startswith(reason)
    assert body["results"][1]["status"] == "accepted"


def test_largest_int32_position_is_accepted() -> None:
    row, reason = validate_event_record(event("p", position=2**31 - 1))
    assert reason is None and row is not None and row["position"] == 2**31 - 1
    assert validate_event_record(event("p", position=2**31))[1] == "bad position"


@pytest.mark.parametrize("k", ["²", "\u0663", "+-5", "1_0", "k"])
def test_non_ascii_or_odd_k_is_400(app: Flask, k: str) -> None:
    resp = app.test_client().get("/v1/users/u1/recommendations", query_string={"k": k})
    assert resp.status_code == 400
    assert resp.get_json()["error"]["code"] == "invalid_request"


def test_lone_surrogate_in_rank_ids_is_400(app: Flask) -> None:
    body = json.dumps({"candidates": ["i1", SURROGATE], "history": ["i2"]})
    resp = app.test_client().post("/v1/rank", data=body, headers=KEY)
    assert resp.status_code == 400
    assert "not valid Unicode" in resp.get_json()["error"]["message"]


def test_events_logged_by_an_older_version_are_quarantined_not_stuck(home: Settings) -> None:
    """The log already holds events an older API let through: the writer moves on."""
    log = EventLog(home.event_log_dir)
    log.append(
        [
            event("old-pos", position=3_000_000_000),
            event("old-text", text="cut " + SURROGATE),
            event("good-1"),
        ]
    )
    result = EventWriter(home, refresh_embeddings=False).flush()
    assert (result.accepted, result.rejected) == (1, 2)
    assert log.backlog() == 0
    assert "good-1" in store_ids(home)
    assert sorted(quarantine_reasons(home)) == [
        "bad position",
        "text is not valid Unicode (a lone UTF-16 surrogate?)",
    ]


def test_writer_quarantines_an_event_the_store_refuses_and_lands_the_rest(
    home: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gap in validation (simulated) must not block the log: the writer isolates the event."""

    def leaky(record: Any, known: Any = None) -> Any:
        row, reason = validate_event_record(record, known)
        if row is not None and row["event_id"] == "poison":
            row["position"] = 3_000_000_000  # past int32: pyarrow refuses the whole batch
        return row, reason

    monkeypatch.setattr(ingest_mod, "validate_event_record", leaky)
    log = EventLog(home.event_log_dir)
    log.append([event(f"e{i}") for i in range(5)] + [event("poison")] + [event("e9")])
    result = EventWriter(home, refresh_embeddings=False).flush()
    assert (result.accepted, result.rejected, result.events_read) == (6, 1, 7)
    assert log.backlog() == 0
    ids = store_ids(home)
    assert {f"e{i}" for i in range(5)} | {"e9"} <= ids and "poison" not in ids
    (reason,) = quarantine_reasons(home)
    assert reason.startswith("cannot store:")
    # the next flush has nothing left to retry
    assert EventWriter(home, refresh_embeddings=False).flush().events_read == 0


# --------------------------------------------------------------------------------------------
# property: whatever JSON a client posts, "accepted" means it reaches the store
# --------------------------------------------------------------------------------------------

# st.text never yields surrogates; build strings that may hold lone ones
_any_text = st.lists(
    st.characters() | st.sampled_from([SURROGATE, "\udc00", "\x00"]), max_size=12
).map("".join)
_json_scalar = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([3_000_000_000, 2**31 - 1, 10**400, -1, 0])
    | st.floats(allow_nan=False, allow_infinity=False)
    | _any_text
    | st.sampled_from([SURROGATE, "inf", "\u0663", " 7 ", "1e3", ""])
)
_json = st.recursive(
    _json_scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=5,
)
_valid = st.fixed_dictionaries(
    {
        "user_id": st.sampled_from(["u1", "u2", "new-user"]),
        "item_id": st.sampled_from(["i1", "i3", "i29"]),
        "event_type": st.sampled_from(EVENT_TYPES),
        "ts": st.sampled_from(["2021-01-01T00:00:00Z", 1_600_000_000, "2099-12-31T23:59:59"]),
        "value": st.sampled_from([4.5, "3", 1]),
    },
    optional={
        "event_id": st.text(min_size=1, max_size=8) | _any_text,
        "text": _any_text,
        "request_id": _any_text,
        "position": st.sampled_from([0, 3, 2**31 - 1, 2**31, "5", 3_000_000_000]),
    },
)
# what the store must hold or the API must refuse: values mixed into an otherwise good event
_odd_values = {
    "ts": st.sampled_from(
        ["9999-12-31T23:00:00-05:00", "0001-01-01T00:00:00+05:00", 10**400, "\u0663"]
    ),
    "value": st.sampled_from([10**400, 1e305, "inf", "\u0663", -(2**70)]),
    "position": st.integers(min_value=-(2**70), max_value=2**70),
}
_field_names = st.sampled_from(
    [
        "event_id",
        "user_id",
        "item_id",
        "event_type",
        "ts",
        "value",
        "text",
        "request_id",
        "position",
        "junk",
    ]
)
_changes = st.dictionaries(_field_names, _any_text | _json, max_size=2) | st.one_of(
    *[st.fixed_dictionaries({name: values}) for name, values in _odd_values.items()]
)
_event = st.builds(lambda base, change: {**base, **change}, _valid, _changes) | _json


@pytest.fixture(scope="module")
def shared_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Flask, Settings]]:
    settings = _home(tmp_path_factory.mktemp("prop"))
    app = create_app(settings, loader=no_models, start_watcher=False)
    yield app, settings
    app.extensions["recsys"].close()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(events=st.lists(_event, min_size=1, max_size=6))
def test_every_accepted_event_reaches_the_store(
    shared_app: tuple[Flask, Settings], events: list[Any]
) -> None:
    app, home = shared_app
    resp = post(app, events)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    results = resp.get_json()["results"]
    assert len(results) == len(events)
    accepted = {r["event_id"] for r in results if r["status"] == "accepted"}
    EventWriter(home, refresh_embeddings=False).flush()
    assert EventLog(home.event_log_dir).backlog() == 0
    assert accepted <= store_ids(home)
