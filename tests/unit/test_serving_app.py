"""The HTTP contract of the real app on a real snapshot: errors, security, CORS, metrics,
OpenAPI, readiness and atomic model reload.

Model-dependent endpoints use ``TableRecommender``, a deterministic recommender with the
``recsys.pipeline.recommender.Recommender`` interface whose right answers are known:
item ``iN`` scores N.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from flask import Flask

from feature_store.db import connect
from recsys.core.config import Settings
from recsys.pipeline.recommender import Recommendation as Rec
from recsys.pipeline.recommender import RecommendationResult as Result
from serving.app import create_app
from serving.writer import EventWriter
from tests.factories import GENRES, load_into_store, make_catalog, make_events

KEY = {"X-API-Key": "s3cret"}


class TableRecommender:
    """Scores item ``iN`` as N; reads titles and users from the request's snapshot cursor."""

    def __init__(self, version: str) -> None:
        self.model_versions = {"ranker": version, "text-scorer": "1"}
        self.cursors: list[Any] = []

    def known_user(self, user_id: str) -> bool:
        return user_id.startswith("u") and user_id[1:].isdigit() and int(user_id[1:]) < 12

    def known_items(self, item_ids: list[str]) -> tuple[list[str], list[str]]:
        known = [i for i in item_ids if i.startswith("i") and i[1:].isdigit() and int(i[1:]) < 30]
        return known, [i for i in item_ids if i not in known]

    def _result(self, ids: list[str], k: int, explain: bool, con: Any, **kw: Any) -> Result:
        self.cursors.append(con)
        titles = dict(con.execute("SELECT item_id, title FROM items").fetchall())
        ranked = sorted(ids, key=lambda i: -int(i[1:]))[:k]
        items = tuple(
            Rec(
                i,
                n + 1,
                float(i[1:]),
                titles[i],
                {"text_score": 0.5, "popularity": float(i[1:]) - 0.5} if explain else None,
            )
            for n, i in enumerate(ranked)
        )
        return Result(items, dict(self.model_versions), **kw)

    def recommend(
        self,
        user_id: str,
        k: int,
        *,
        exclude_seen: bool = True,
        genre: str | None = None,
        explain: bool = False,
        history: tuple[str, ...] = (),
        con: Any = None,
    ) -> Result:
        ids = [f"i{n}" for n in range(30)]
        if genre is not None:  # the catalogue's spelling: the API resolved the case
            ids = [i for i in ids if GENRES[int(i[1:]) % len(GENRES)] == genre]
        cold = not self.known_user(user_id)
        return self._result(ids, k, explain, con, cold_start=cold)

    def genres(self) -> list[str]:
        return sorted(GENRES)

    def rank(
        self,
        candidates: list[str],
        k: int,
        *,
        user_id: str | None = None,
        history: tuple[str, ...] = (),
        explain: bool = False,
        con: Any = None,
    ) -> Result:
        known, unknown = self.known_items(candidates)
        cold = user_id is None or not self.known_user(user_id)
        return self._result(known, k, explain, con, cold_start=cold, unknown_items=tuple(unknown))


class Loader:
    """Hands out TableRecommender v1, v2, ...; raises while ``broken`` is set."""

    def __init__(self) -> None:
        self.calls = 0
        self.broken = False

    def __call__(self, settings: Settings, con: Any) -> TableRecommender:
        if self.broken:
            raise ValueError("ranker model file is corrupt")
        self.calls += 1
        return TableRecommender(str(self.calls))


@pytest.fixture
def home(settings: Settings) -> Settings:
    settings = settings.replace(
        **{"serving.api_key": "s3cret", "serving.cors_origins": "https://shop.example"}
    )
    con = connect(settings.db_path)
    load_into_store(con, make_catalog(), make_events())
    con.close()
    EventWriter(settings).flush()
    return settings


@pytest.fixture
def loader() -> Loader:
    return Loader()


@pytest.fixture
def app(home: Settings, loader: Loader):
    app = create_app(home, loader=loader, start_watcher=False)
    yield app
    app.extensions["recsys"].close()


def test_recommendations(app: Flask) -> None:
    res = app.test_client().get("/v1/users/u3/recommendations?k=3")
    assert res.status_code == 200
    data = res.get_json()
    assert [(i["item_id"], i["rank"], i["raw_score"]) for i in data["items"]] == [
        ("i29", 1, 29.0),
        ("i28", 2, 28.0),
        ("i27", 3, 27.0),
    ]
    assert (
        data["items"][0]["title"] == "Sci-Fi Story 29" and "contributions" not in data["items"][0]
    )
    assert data["model_versions"] == {"ranker": "1", "text-scorer": "1"} and data["user_id"] == "u3"
    explained = app.test_client().get("/v1/users/u3/recommendations?k=1&explain=true").get_json()
    assert explained["items"][0]["contributions"] == {"text_score": 0.5, "popularity": 28.5}


def test_unknown_user_is_cold_start_and_bad_k_is_4xx(app: Flask) -> None:
    client = app.test_client()
    res = client.get("/v1/users/stranger/recommendations")
    assert res.status_code == 200 and res.get_json()["cold_start"] is True
    for query in ("k=0", "k=101", "k=abc", "explain=2", "foo=1"):
        res = client.get(f"/v1/users/u1/recommendations?{query}")
        assert res.status_code == 400, query
        assert res.get_json()["error"]["code"] == "invalid_request"


def test_rank_reports_unknown_items(app: Flask) -> None:
    res = app.test_client().post(
        "/v1/rank", json={"history": ["i1"], "candidates": ["i2", "zz", "i7", "i2"], "k": 5}
    )
    data = res.get_json()
    assert res.status_code == 200
    assert [i["item_id"] for i in data["items"]] == ["i7", "i2"]
    assert (
        data["unknown_items"] == ["zz"] and data["cold_start"] is True and data["user_id"] is None
    )


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"data": "{not json", "content_type": "application/json"}, 400, "malformed_json"),
        (
            {"data": '{"candidates": [NaN]}', "content_type": "application/json"},
            400,
            "malformed_json",
        ),
        (
            {"data": "candidates=i1", "content_type": "application/x-www-form-urlencoded"},
            415,
            "unsupported_media_type",
        ),
        ({"json": {"candidates": ["i1"], "k": "5"}}, 400, "invalid_request"),
        ({"json": {"candidates": ["i1"], "surprise": True}}, 400, "invalid_request"),
        ({"json": [1, 2]}, 400, "invalid_request"),
    ],
)
def test_bad_rank_bodies(app: Flask, kwargs: dict[str, Any], status: int, code: str) -> None:
    res = app.test_client().post("/v1/rank", **kwargs)
    assert res.status_code == status and res.get_json()["error"]["code"] == code


def test_http_errors_are_json(app: Flask) -> None:
    client = app.test_client()
    res = client.get("/v2/nothing")
    assert res.status_code == 404 and res.get_json()["error"]["code"] == "not_found"
    res = client.delete("/v1/rank")
    assert res.status_code == 405 and res.get_json()["error"]["code"] == "method_not_allowed"
    assert "POST" in res.headers["Allow"]


def test_a_bug_in_the_model_is_a_json_500(app: Flask) -> None:
    rec = app.extensions["recsys"].models.recommender
    rec.recommend = lambda *a, **k: 1 / 0
    res = app.test_client().get("/v1/users/u1/recommendations")
    assert res.status_code == 500 and res.get_json()["error"]["code"] == "internal_error"


def test_no_models_means_503_and_not_ready(home: Settings, loader: Loader) -> None:
    loader.broken = True
    app = create_app(home, loader=loader, start_watcher=False)
    client = app.test_client()
    res = client.get("/v1/users/u1/recommendations")
    assert res.status_code == 503 and res.get_json()["error"]["code"] == "model_not_ready"
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.get_json()["checks"]["store"]["ok"] is True
    assert client.get("/healthz").status_code == 200
    app.extensions["recsys"].close()


def test_reload_swaps_atomically_and_refuses_broken_models(
    app: Flask, home: Settings, loader: Loader
) -> None:
    client = app.test_client()
    assert client.post("/v1/admin/reload").status_code == 401
    other = create_app(home, loader=loader, start_watcher=False)  # a second gunicorn worker
    res = client.post("/v1/admin/reload", headers=KEY)
    assert res.status_code == 200
    assert res.get_json()["model_versions"]["ranker"] == "3"
    assert res.get_json()["previous_model_versions"]["ranker"] == "1"
    assert client.get("/v1/users/u1/recommendations").get_json()["model_versions"]["ranker"] == "3"
    other.extensions["recsys"].watcher.tick()  # follows the reload signal
    assert other.extensions["recsys"].models.model_versions["ranker"] == "4"
    loader.broken = True
    res = client.post("/v1/admin/reload", headers=KEY)
    assert res.status_code == 409 and res.get_json()["error"]["code"] == "reload_refused"
    assert "ranker model file is corrupt" in res.get_json()["error"]["message"]
    assert client.get("/v1/users/u1/recommendations").get_json()["model_versions"]["ranker"] == "3"
    assert client.get("/readyz").status_code == 200
    status = client.get("/v1/admin/status", headers=KEY).get_json()
    assert status["model_versions"]["ranker"] == "3" and status["event_log"]["backlog"] == 0
    other.extensions["recsys"].close()


def test_cors(app: Flask) -> None:
    client = app.test_client()
    pre = client.options(
        "/v1/rank",
        headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"},
    )
    assert pre.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    assert "X-API-Key" in pre.headers["Access-Control-Allow-Headers"]
    other = client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_metrics(app: Flask) -> None:
    client = app.test_client()
    client.get("/v1/users/u1/recommendations")
    client.get("/v1/users/u1/recommendations?k=0")
    text = client.get("/metrics").get_data(as_text=True)
    assert (
        'recsys_http_requests_total{endpoint="/v1/users/<path:user_id>/recommendations",'
        'method="GET",status="200"} 1.0'
    ) in text
    assert 'status="400"} 1.0' in text
    assert "recsys_http_request_duration_seconds_bucket" in text
    assert 'recsys_model_version_info{model="ranker",version="1"} 1.0' in text


def test_openapi_and_docs(app: Flask) -> None:
    client = app.test_client()
    doc = client.get("/openapi.json").get_json()
    assert doc["components"]["schemas"]["EventBatch"]["properties"]["events"]["maxItems"] == 1000
    schema = schemathesis.openapi.from_dict(doc)
    operations = {f"{op.ok().method.upper()} {op.ok().path}" for op in schema.get_all_operations()}
    assert {
        "GET /v1/users/{user_id}/recommendations",
        "POST /v1/rank",
        "POST /v1/events",
        "POST /v1/admin/reload",
        "GET /readyz",
        "GET /metrics",
    } <= operations
    page = client.get("/docs").get_data(as_text=True)
    assert all(path in page for path in doc["paths"])


def test_a_new_snapshot_rebuilds_the_recommender(home: Settings, loader: Loader) -> None:
    app = create_app(
        home.replace(**{"serving.store_refresh_seconds": 0.0}), loader=loader, start_watcher=False
    )
    state = app.extensions["recsys"]
    old_snapshot = state.models.snapshot_path
    state.watcher.tick()
    assert loader.calls == 1  # nothing new: no reload
    client = app.test_client()
    event = {
        "event_id": "fresh",
        "user_id": "u1",
        "item_id": "i2",
        "event_type": "click",
        "ts": "2021-01-01T00:00:00",
    }
    assert (
        client.post("/v1/events", json={"events": [event]}, headers=KEY).get_json()["accepted"] == 1
    )
    EventWriter(home).flush()
    state.watcher.tick()
    assert loader.calls == 2 and state.models.snapshot_path != old_snapshot
    assert state.models.snapshot_path == state.snapshots.info.path
    state.close()
