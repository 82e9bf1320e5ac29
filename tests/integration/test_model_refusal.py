"""A damaged ranker promoted to champion is refused, never parsed by a worker (real gunicorn).

Issue 9 item 2: a truncated or garbled ``ranker.txt`` used to kill every worker that parsed it
(LightGBM's native parser), and every new worker died again at boot.  Here both are promoted
while the server runs (the reload answers 409, the workers live on and keep answering with the
good version), then the server is restarted on the bad champion: it falls back to the last
verified version and says so in /readyz and the log.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest

from recsys.core import rules
from recsys.core.config import Settings
from tests.integration.test_server import KEY, RunningServer, running_server
from tests.integration.test_server_models import _TINY, _trained_home
from training import registry

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _truncate(model: Path) -> None:
    model.write_bytes(model.read_bytes()[: model.stat().st_size * 2 // 3])


def _garble(model: Path) -> None:
    data = bytearray(model.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 2000] = np.random.default_rng(7).integers(0, 256, 2000, np.uint8).tobytes()
    model.write_bytes(bytes(data))


def _promote_damaged(settings: Settings, damage: Callable[[Path], None]) -> str:
    """Register a copy of the champion ranker with ``ranker.txt`` damaged, and promote it."""
    with tempfile.TemporaryDirectory() as tmp:
        _, local = registry.download(settings, rules.RANKER_MODEL_NAME, dst=Path(tmp))
        damage(local / "ranker.txt")
        with registry.start_run(settings, f"damaged-{damage.__name__}") as run:
            mlflow.log_artifacts(str(local), "model")
    ref = registry.register(settings, rules.RANKER_MODEL_NAME, run.info.run_id, "model")
    registry.promote(settings, ref.name, ref.version)
    return ref.version


def _recommend(server: RunningServer) -> dict:
    resp = httpx.get(f"{server.base_url}/v1/users/1/recommendations?k=5", timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_damaged_rankers_are_refused_and_the_service_keeps_answering(
    tmp_path_factory: pytest.TempPathFactory, real_data_dir: Path
) -> None:
    home = _trained_home(tmp_path_factory.mktemp("refusal-home"), real_data_dir)
    env = {"RECSYS_SERVING__STORE_REFRESH_SECONDS": "1", **_TINY}
    with running_server(home, real_data_dir, env=env, need_models=True, timeout=300) as srv:
        good = _recommend(srv)["model_versions"]["ranker"]
        workers = sorted(srv.gunicorn_workers())
        refused = []
        for damage in (_truncate, _garble):
            version = _promote_damaged(srv.settings, damage)
            resp = httpx.post(f"{srv.base_url}/v1/admin/reload", headers=KEY, timeout=120)
            assert resp.status_code == 409, resp.text
            assert resp.json()["error"]["code"] == "reload_refused"
            assert f"version {version} was refused" in resp.json()["error"]["message"]
            for _ in range(10):
                assert _recommend(srv)["model_versions"]["ranker"] == good
            refused.append(version)
        assert sorted(srv.gunicorn_workers()) == workers, "a worker died"

    # a restart on the garbled champion: every worker falls back to the verified version
    with running_server(home, real_data_dir, env=env, need_models=True, timeout=300) as srv:
        ready = httpx.get(f"{srv.base_url}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        fallback = ready.json()["checks"]["models"]["fallback"]
        assert fallback["refused"]["version"] == refused[-1]
        assert fallback["serving"]["version"] == good
        for _ in range(10):
            assert _recommend(srv)["model_versions"]["ranker"] == good
        assert "falling back to the last verified ranker version" in srv.log_tail(200_000)
