"""Online evaluation through the real server: ``recsys serve`` (gunicorn + the event writer) with
``serving.interleave_challenger``, real models from the registry, clicks posted over HTTP, and
``recsys evaluate --online`` on what the writer stored.

Slow (it needs a trained home, ``RECSYS_SERVE_TEST_HOME`` or trained here): a second, weak ranker
version (20 candidates, 5 rounds, not promoted) gets the ``challenger`` alias, so each worker
verifies and loads two ranker versions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.test_server import KEY, RunningServer, running_server
from tests.integration.test_server_models import _TINY, _trained_home

pytestmark = [pytest.mark.integration, pytest.mark.slow]

USERS = ["1", "15", "414", "600"]


def _recsys(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # no RECSYS_* of the caller (RECSYS_SERVE_TEST_HOME is not a setting)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    return subprocess.run(
        [sys.executable, "-m", "recsys", "--home", str(home), *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )


@pytest.fixture(scope="module")
def interleaving_server(
    tmp_path_factory: pytest.TempPathFactory, real_data_dir: Path
) -> Iterator[RunningServer]:
    home = _trained_home(tmp_path_factory.mktemp("interleave-home"), real_data_dir)
    weak = ["train", "ranker", "--no-promote", "--num-candidates", "20", "--num-boost-round", "5"]
    trained = _recsys(home, "--data-dir", str(real_data_dir), *weak)
    assert trained.returncode == 0, trained.stderr[-3000:]
    listed = json.loads(_recsys(home, "models", "list", "ranker", "--json").stdout)
    newest = max(listed, key=lambda r: int(r["version"]))
    assert "champion" not in newest["aliases"]
    promoted = _recsys(
        home, "models", "promote", "ranker", newest["version"], "--alias", "challenger"
    )
    assert promoted.returncode == 0, promoted.stderr
    env = {"RECSYS_SERVING__INTERLEAVE_CHALLENGER": "challenger", **_TINY}
    with running_server(home, real_data_dir, env=env, need_models=True, timeout=300) as srv:
        yield srv


def test_interleaved_lists_are_served_recorded_and_evaluated(
    interleaving_server: RunningServer,
) -> None:
    srv = interleaving_server
    lists = []
    with httpx.Client(base_url=srv.base_url, timeout=30) as client:
        for user in USERS:
            res = client.get(f"/v1/users/{user}/recommendations", params={"k": 6})
            assert res.status_code == 200, res.text
            data = res.json()
            assert data["interleaved"] is True and "team" not in res.text
            assert len({i["item_id"] for i in data["items"]}) == 6
            lists.append(data)
        clicks = [
            {
                "event_id": f"online-{uuid.uuid4()}",
                "user_id": data["user_id"],
                "item_id": data["items"][0]["item_id"],  # the top item of every list
                "event_type": "click",
                "ts": "2026-12-01T12:00:00Z",
                "recommendation_id": data["recommendation_id"],
            }
            for data in lists
        ]
        posted = client.post("/v1/events", json={"events": clicks}, headers=KEY)
        assert posted.status_code == 200 and posted.json()["accepted"] == len(USERS)
        status = client.get("/v1/admin/status", headers=KEY).json()
        assert status["challenger_versions"]["ranker"] != status["model_versions"]["ranker"]
    srv.wait_landed()
    out = _recsys(srv.home, "evaluate", "--online", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    (comparison,) = json.loads(out.stdout)["comparisons"]
    # one click per list: every list is decided, for the team that placed its top item
    assert (comparison["lists"], comparison["ties"]) == (len(USERS), 0)
    assert comparison["champion_wins"] + comparison["challenger_wins"] == len(USERS)
