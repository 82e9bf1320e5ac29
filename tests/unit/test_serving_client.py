"""The typed client over real HTTP: the app (with the deterministic ``TableRecommender``:
item ``iN`` scores N) behind werkzeug's server on a loopback port."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import datetime

import pytest
from werkzeug.serving import make_server

from recsys.core.config import Settings
from serving.app import create_app
from serving.client import ApiError, RecsysClient
from serving.contract import Event, EventResults, RecommendationList
from tests.servers import free_port
from tests.unit.test_serving_app import Loader
from tests.unit.test_serving_app import home as home  # noqa: F401  (fixture)


@pytest.fixture
def base_url(home: Settings) -> Iterator[str]:  # noqa: F811
    app = create_app(home, loader=Loader(), start_watcher=False)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
        app.extensions["recsys"].close()


def test_recommendations_and_rank_return_the_models(base_url: str) -> None:
    api = RecsysClient(base_url)
    top = api.recommendations("u3", k=3)
    assert isinstance(top, RecommendationList)
    assert [(i.item_id, i.rank, i.raw_score) for i in top.items] == [
        ("i29", 1, 29.0),
        ("i28", 2, 28.0),
        ("i27", 3, 27.0),
    ]
    assert top.user_id == "u3" and not top.cold_start and top.items[0].reasons is None
    assert uuid.UUID(top.recommendation_id).version == 4
    explained = api.recommendations("u3", k=1, explain=True, genre="sci-fi")
    assert explained.items[0].contributions == {"text_score": 0.5, "popularity": 28.5}
    assert explained.items[0].reasons is not None
    ranked = api.rank(["i2", "zz", "i7", 2], history=["i1"], k=5)
    assert [i.item_id for i in ranked.items] == ["i7", "i2"]
    assert ranked.unknown_items == ["zz", "2"] and ranked.cold_start and ranked.user_id is None


def test_errors_carry_status_code_and_message(base_url: str) -> None:
    api = RecsysClient(base_url)
    with pytest.raises(ApiError) as exc:
        api.recommendations("u3", k=0)
    assert (exc.value.status, exc.value.code) == (400, "invalid_request")
    assert exc.value.message == "k must be from 1 to 100, got 0" and exc.value.request_id
    with pytest.raises(ApiError, match="unknown genre 'Westerns'") as exc:
        api.recommendations("u3", genre="Westerns")
    with pytest.raises(ApiError) as exc:
        api.post_events([{"user_id": "u1"}])
    assert (exc.value.status, exc.value.code) == (401, "unauthorized")
    with pytest.raises(ApiError) as exc:
        RecsysClient(f"http://127.0.0.1:{free_port()}", timeout=5).health()
    assert (exc.value.status, exc.value.code) == (0, "unreachable")


def test_events_health_and_admin(base_url: str) -> None:
    api = RecsysClient(base_url, api_key="s3cret")
    typed = Event(user_id="u1", item_id="i3", event_type="click", ts=datetime(2021, 1, 1))
    batch = [
        typed,
        {"event_id": "c-2", "user_id": "u1", "item_id": "i4", "event_type": "like", "ts": 1e9},
        {"event_id": "c-3", "user_id": "u1", "item_id": "nope", "event_type": "click", "ts": 1},
    ]
    result = api.post_events(batch)
    assert isinstance(result, EventResults)
    assert (result.accepted, result.duplicate, result.rejected) == (2, 0, 1)
    assert result.results[0].event_id == typed.event_id
    assert result.results[2].reason == "unknown item id"
    again = api.post_events(batch[:1])
    assert again.duplicate == 1 and again.results[0].status == "duplicate"

    assert api.health().status == "ok"
    ready = api.ready()
    assert ready.status in ("ready", "not_ready") and ready.checks["store"].ok
    assert api.reload().model_versions["ranker"] == "2"
    status = api.admin_status()
    assert status.model_versions["ranker"] == "2" and status.pid > 0
    assert set(api.openapi()["paths"]) >= {"/v1/rank", "/v1/events"}
