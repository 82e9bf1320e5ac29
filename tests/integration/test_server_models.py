"""The real server with real models: recommendations, re-ranking, explanations, a new user
picked up after posting events, and schemathesis over every operation.

Slow: it trains a small text model and ranker on MovieLens first, unless
``RECSYS_SERVE_TEST_HOME`` names a home that has them (its store and registry are copied).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serving.client import RecsysClient
from serving.snapshot import published_cursor
from tests.integration.test_server import (
    KEY,
    RunningServer,
    fuzz_operations,
    ingest_movielens,
    running_server,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRAINED_HOME_ENV = "RECSYS_SERVE_TEST_HOME"
# the per-pair model with a 64-pair cap: a tower run caches the whole real catalog (minutes)
_TINY = {
    "RECSYS_TEXT__MAX_ITEM_TOKENS": "32",
    "RECSYS_TEXT__MAX_USER_TOKENS": "64",
    "RECSYS_TEXT__MODEL": "pairs",
}


def _trained_home(target: Path, data_dir: Path) -> Path:
    """A home with the MovieLens store and champion models: a copy of $RECSYS_SERVE_TEST_HOME
    (store, registry and artifacts: the copy's registry is relocated to its own ``mlruns``), or
    one trained here."""
    source = os.environ.get(TRAINED_HOME_ENV)
    if source:
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(source) / "recsys.duckdb", target / "recsys.duckdb")
        shutil.copy2(Path(source) / "mlflow.db", target / "mlflow.db")
        shutil.copytree(Path(source) / "mlruns", target / "mlruns")
        return target
    ingest_movielens(target, data_dir)
    env = {**os.environ, **_TINY}
    base = [sys.executable, "-m", "recsys", "--home", str(target), "--data-dir", str(data_dir)]
    for step in (
        # a 64-pair model is not expected to pass the promotion gate; these tests need one
        ["train", "text", "--max-pairs", "64", "--batch-size", "16", "--epochs", "1", "--force"],
        ["score"],
        ["train", "ranker", "--num-boost-round", "30"],
    ):
        subprocess.run(base + step, check=True, capture_output=True, env=env)
    return target


@pytest.fixture(scope="module")
def model_server(
    tmp_path_factory: pytest.TempPathFactory, real_data_dir: Path
) -> Iterator[RunningServer]:
    home = _trained_home(tmp_path_factory.mktemp("model-home"), real_data_dir)
    env = {"RECSYS_SERVING__STORE_REFRESH_SECONDS": "1", **_TINY}
    with running_server(home, real_data_dir, env=env, need_models=True, timeout=300) as srv:
        yield srv


def test_recommendations_rank_and_explain_on_real_models(model_server: RunningServer) -> None:
    with httpx.Client(base_url=model_server.base_url, timeout=30) as client:
        res = client.get("/v1/users/414/recommendations", params={"k": 10, "explain": "true"})
        assert res.status_code == 200, res.text
        data = res.json()
        assert [i["rank"] for i in data["items"]] == list(range(1, 11))
        assert all(i["title"] and i["contributions"] for i in data["items"])
        scores = [i["score"] for i in data["items"]]
        assert scores == sorted(scores, reverse=True)
        assert set(data["model_versions"]) >= {"ranker"} and data["cold_start"] is False
        seen = {
            r[0]
            for r in _snapshot_rows(
                model_server, "SELECT item_id FROM events WHERE user_id = '414'"
            )
        }
        assert not seen & {i["item_id"] for i in data["items"]}  # exclude_seen by default

        items = [
            r[0]
            for r in _snapshot_rows(
                model_server, "SELECT item_id FROM items ORDER BY item_id LIMIT 299"
            )
        ]
        res = client.post(
            "/v1/rank", json={"user_id": "414", "candidates": [*items, "no-such"], "k": 10}
        )
        assert res.status_code == 200 and res.json()["unknown_items"] == ["no-such"]
        assert {i["item_id"] for i in res.json()["items"]} <= set(items)

        cold = client.post(
            "/v1/rank", json={"history": ["260", "1196"], "candidates": items[:50], "k": 5}
        )
        assert cold.status_code == 200 and cold.json()["cold_start"] is True
        assert client.get("/v1/users/nobody-here/recommendations").status_code == 404

        reload = client.post("/v1/admin/reload", headers=KEY)
        assert (
            reload.status_code == 200 and reload.json()["model_versions"] == data["model_versions"]
        )


def test_typed_client_on_real_models(model_server: RunningServer) -> None:
    api = RecsysClient(model_server.base_url, api_key=KEY["X-API-Key"])
    top = api.recommendations(414, k=5, explain=True)
    assert len(top.items) == 5 and [i.rank for i in top.items] == [1, 2, 3, 4, 5]
    assert all(0 <= i.score <= 1 and i.reasons for i in top.items)
    given = [i.item_id for i in top.items][::-1]
    ranked = api.rank([*given, "no-such-movie"], user_id=414, k=3)
    assert [i.rank for i in ranked.items] == [1, 2, 3] and {i.item_id for i in ranked.items} < set(
        given
    )
    assert ranked.unknown_items == ["no-such-movie"] and ranked.user_id == "414"


def test_a_new_user_becomes_known_after_posting_events(model_server: RunningServer) -> None:
    events = [
        {
            "event_id": f"newbie-{i}",
            "user_id": "newbie",
            "item_id": item,
            "event_type": "rate",
            "value": 5.0,
            "ts": 1_700_000_000 + i,
        }
        for i, item in enumerate(["260", "1196", "1210"])
    ]
    with httpx.Client(base_url=model_server.base_url, timeout=30) as client:
        assert client.get("/v1/users/newbie/recommendations").status_code == 404
        assert (
            client.post("/v1/events", headers=KEY, json={"events": events}).json()["accepted"] == 3
        )
        model_server.wait_landed()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # each worker rebuilds its recommender on the snapshot
            codes = set()
            for _ in range(6):
                with httpx.Client(base_url=model_server.base_url, timeout=30) as fresh:
                    codes.add(fresh.get("/v1/users/newbie/recommendations").status_code)
            if codes == {200}:
                break
            time.sleep(1)
        assert codes == {200}
        versions = client.get("/v1/users/newbie/recommendations").json()["model_versions"]
    refreshed = [
        int(n) for n in re.findall(r"(\d+) user vectors refreshed", model_server.log_tail(10**6))
    ]
    if "text-scorer" in versions:  # the writer re-encoded the new user's text vector
        assert max(refreshed) >= 1


def test_schemathesis_on_every_operation_with_models(model_server: RunningServer) -> None:
    fuzz_operations(
        model_server.base_url,
        paths=None,
        negative={"/v1/users/{user_id}/recommendations", "/v1/rank", "/v1/events"},
        max_examples=30,
        # a reload rebuilds the recommender: seconds on a busy 2-core machine
        fewer={"/v1/admin/reload": 3},
        timeout=120,
    )


def _snapshot_rows(server: RunningServer, sql: str) -> list[tuple]:
    with published_cursor(server.settings) as cur:  # the base and its delta
        return cur.execute(sql).fetchall()
