"""What front ends rely on: cold-start lists for new visitors, recommendation ids echoed on
events and stored (old stores migrated), request ids and the access log, case-insensitive
genres, one id type rule, readable reasons and the documented 0-1 score."""

from __future__ import annotations

import json
import logging
import math
import uuid
from pathlib import Path

import duckdb
import numpy as np
import pytest
from flask import Flask

from feature_store.db import connect
from recsys.pipeline import explain
from serving.writer import EventWriter
from tests.unit.test_serving_app import KEY, app, home, loader  # noqa: F401 - fixtures

pytestmark = pytest.mark.usefixtures("app")


def _click(event_id: str, rec_id: object, **extra: object) -> dict[str, object]:
    return {
        "event_id": event_id,
        "user_id": "newcomer",
        "item_id": "i3",
        "event_type": "click",
        "ts": "2021-01-01T00:00:00Z",
        "recommendation_id": rec_id,
        **extra,
    }


def test_a_new_visitor_gets_a_cold_start_list(app: Flask) -> None:  # noqa: F811
    client = app.test_client()
    first = client.get("/v1/users/newcomer/recommendations?k=4")
    again = client.get("/v1/users/newcomer/recommendations?k=4")
    data = first.get_json()
    assert first.status_code == 200 and data["cold_start"] is True
    assert len(data["items"]) == 4 and data["user_id"] == "newcomer"
    assert uuid.UUID(data["recommendation_id"]).version == 4
    assert again.get_json()["recommendation_id"] != data["recommendation_id"]
    known = client.get("/v1/users/u3/recommendations?k=4").get_json()
    assert known["cold_start"] is False
    rank = client.post("/v1/rank", json={"candidates": ["i1", "i2"]}).get_json()
    assert uuid.UUID(rank["recommendation_id"])


def test_clicks_echo_the_recommendation_id_into_the_store(
    app: Flask,  # noqa: F811
    home,  # noqa: F811
) -> None:
    client = app.test_client()
    rec_id = client.get("/v1/users/newcomer/recommendations").get_json()["recommendation_id"]
    res = client.post(
        "/v1/events",
        json={
            "events": [
                _click("c1", rec_id.upper(), position=0),  # any case: stored canonical
                _click("c2", "list-7"),
                _click("c3", 12),
                _click("c4", None),
            ]
        },
        headers=KEY,
    )
    body = res.get_json()
    assert res.status_code == 200 and body["accepted"] == 2 and body["rejected"] == 2
    reasons = {r["event_id"]: r["reason"] for r in body["results"] if r["reason"]}
    assert reasons == {
        "c2": "recommendation_id must be the uuid of a served list",
        "c3": "recommendation_id must be the uuid of a served list",
    }
    EventWriter(home).flush()
    con = connect(home.db_path, read_only=True)
    try:
        rows = con.execute(
            "SELECT event_id, recommendation_id, position FROM events "
            "WHERE source = 'api' ORDER BY event_id"
        ).fetchall()
    finally:
        con.close()
    assert rows == [("c1", rec_id, 0), ("c4", None, None)]


def test_an_old_store_gains_the_recommendation_id_column(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    old = duckdb.connect(str(path))
    old.execute(
        "CREATE TABLE events (event_id VARCHAR NOT NULL, user_id VARCHAR NOT NULL, "
        "item_id VARCHAR NOT NULL, event_type VARCHAR NOT NULL, value DOUBLE, text VARCHAR, "
        "ts TIMESTAMP NOT NULL, request_id VARCHAR, position INTEGER, source VARCHAR NOT NULL, "
        "batch_id VARCHAR NOT NULL)"
    )
    old.execute("INSERT INTO events VALUES ('e1','u','i','c',NULL,NULL,now(),NULL,NULL,'s','b')")
    old.close()
    con = connect(path)
    try:
        cols = [r[0] for r in con.execute("DESCRIBE events").fetchall()]
        assert cols[-1] == "recommendation_id"
        assert con.execute("SELECT event_id, recommendation_id FROM events").fetchall() == [
            ("e1", None)
        ]
    finally:
        con.close()


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def access_lines():
    handler = _Lines()
    logger = logging.getLogger("recsys.access")
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)


def test_request_ids_are_echoed_generated_or_refused(
    app: Flask,  # noqa: F811
    access_lines: list[str],
) -> None:
    client = app.test_client()
    given = client.get("/healthz", headers={"X-Request-ID": "front-42:a.b_c"})
    assert given.headers["X-Request-ID"] == "front-42:a.b_c"
    generated = client.get("/v1/users/u3/recommendations")
    assert uuid.UUID(generated.headers["X-Request-ID"]).version == 4
    missing = client.get("/nowhere", headers={"X-Request-ID": "r-404"})
    assert missing.status_code == 404 and missing.headers["X-Request-ID"] == "r-404"
    for bad in ("has space", "x" * 129, "semi;colon"):
        res = client.get("/healthz", headers={"X-Request-ID": bad})
        message = res.get_json()["error"]["message"]
        assert res.status_code == 400 and "X-Request-ID must be" in message
        assert uuid.UUID(res.headers["X-Request-ID"])  # a fresh id, not the bad one
    client.post("/v1/events", json={"events": []}, headers=KEY)
    entries = [json.loads(line) for line in access_lines]
    assert entries[0]["request_id"] == "front-42:a.b_c" and entries[0]["route"] == "/healthz"
    assert entries[1]["route"] == "/v1/users/<path:user_id>/recommendations"  # no user ids
    assert entries[2] == {**entries[2], "route": "<unmatched>", "status": 404, "method": "GET"}
    assert all(e["latency_ms"] >= 0 for e in entries)
    fields = {"ts", "request_id", "method", "route", "status", "latency_ms", "bytes"}
    assert set(entries[0]) == fields
    assert not any("s3cret" in line for line in access_lines)


def test_genres_match_in_any_case_and_unknown_ones_are_listed(app: Flask) -> None:  # noqa: F811
    client = app.test_client()
    for spelling in ("comedy", "COMEDY", " Comedy "):
        data = client.get(f"/v1/users/u3/recommendations?k=3&genre={spelling}").get_json()
        assert [i["title"].split()[0] for i in data["items"]] == ["Comedy"] * 3, spelling
    res = client.get("/v1/users/u3/recommendations?genre=Western")
    message = res.get_json()["error"]["message"]
    assert res.status_code == 400 and "unknown genre 'Western'" in message
    assert "Action, Comedy, Drama, Horror, Romance, Sci-Fi" in message


def test_rank_takes_numeric_ids_like_events(app: Flask) -> None:  # noqa: F811
    res = app.test_client().post("/v1/rank", json={"candidates": [7, "i2"], "user_id": 3})
    data = res.get_json()
    assert res.status_code == 200 and data["user_id"] == "3" and data["unknown_items"] == ["7"]


def test_scores_are_0_to_1_and_follow_the_raw_score(app: Flask) -> None:  # noqa: F811
    items = app.test_client().get("/v1/users/u3/recommendations?k=5").get_json()["items"]
    assert all(0.0 <= i["score"] <= 1.0 for i in items)
    assert [i["raw_score"] for i in items] == [29.0, 28.0, 27.0, 26.0, 25.0]
    assert explain.unit_score(0.0, cold=False) == 0.5
    assert explain.unit_score(2.0, cold=False) > explain.unit_score(-1.0, cold=False)
    assert explain.unit_score(explain.COLD_MAX, cold=True) == 1.0
    assert explain.unit_score(1 / 61, cold=True) == pytest.approx(60 / 122)
    assert not math.isnan(explain.unit_score(1e9, cold=False))


def test_reasons_read_like_sentences() -> None:
    contributions = {
        "covisit_strength": 0.4,
        "gen_itemknn_rank": 0.2,
        "text_score": 0.5,
        "item_events_all": 0.05,
        "user_events_all": 0.9,  # user-only: says nothing about the item
        "user_genre_affinity": -0.3,  # lowered the score: no reason
    }
    got = explain.reasons(
        contributions, liked_title="Heat", genres=["Crime", "Thriller"], text_score=0.7134
    )
    assert got == (
        "because you liked *Heat*",
        "matches your interest in Crime, Thriller: text score 0.71",
        "popular with other users",
    )
    assert explain.reasons({"text_score": 0.2}, text_score=float("nan")) == ()
    assert explain.reasons({"text_sim_max": 0.3, "text_sim_last": 0.1}, liked_title="Heat") == (
        "its description is close to *Heat*, which you liked",
    )
    assert explain.reasons({"text_sim_max": 0.3}) == ()
    assert explain.reasons({"gen_als_rank": 0.7}) == ("liked by people with tastes like yours",)
    assert explain.cold_reasons("Heat") == (
        "similar to *Heat*, which you picked",
        "popular with other users",
    )


def test_closest_liked_prefers_text_then_genres() -> None:
    liked = ["a", "b", "c"]
    vecs = np.array([[1, 0], [0, 1], [0.7, 0.7]], dtype=np.float32)
    assert explain.closest_liked(np.array([0.1, 1.0]), vecs, liked, [], [[]] * 3) == "b"
    genres = [["Drama"], ["Crime", "Thriller"], ["Crime"]]
    assert explain.closest_liked(None, None, liked, ["Crime", "Thriller"], genres) == "b"
    assert explain.closest_liked(None, None, liked, ["Horror"], genres) is None


def test_explained_items_carry_reasons_beside_contributions(app: Flask) -> None:  # noqa: F811
    item = app.test_client().get("/v1/users/u3/recommendations?k=1&explain=true").get_json()
    row = item["items"][0]
    assert row["contributions"] == {"text_score": 0.5, "popularity": 28.5}
    assert isinstance(row["reasons"], list)
