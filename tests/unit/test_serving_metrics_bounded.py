"""Issue 9 item 4: no client can grow /metrics; unknown methods and routes share one label."""

from __future__ import annotations

import random
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from feature_store.db import connect
from recsys.core.config import load_settings
from serving.app import create_app
from serving.metrics import request_labels
from serving.writer import EventWriter
from tests.factories import load_into_store, make_catalog, make_events

# the body of /metrics on a fresh app plus the label sets the probes below may add
MAX_METRICS_BYTES = 40_000


def no_models(settings: Any, con: Any) -> Any:
    raise ValueError("no models in this test")


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    settings = load_settings(overrides={"home": str(tmp_path / "home")}, environ={})
    con = connect(settings.db_path)
    load_into_store(con, make_catalog(), make_events())
    con.close()
    EventWriter(settings, refresh_embeddings=False).flush()
    app = create_app(settings, loader=no_models, start_watcher=False)
    yield app
    app.extensions["recsys"].close()


def test_request_labels_collapse_unknown_values() -> None:
    assert request_labels("/v1/rank", "POST") == ("/v1/rank", "POST")
    assert request_labels(None, "GET") == ("unmatched", "GET")
    assert request_labels(None, "XKCD") == ("unmatched", "OTHER")
    assert request_labels("/healthz", "get") == ("/healthz", "OTHER")


def test_random_methods_and_paths_keep_metrics_small(app: Flask) -> None:
    rng = random.Random(9)
    client = app.test_client()
    for _ in range(1000):
        method = "".join(rng.choices(string.ascii_letters, k=rng.randint(3, 12)))
        path = rng.choice(["/healthz", "/v1/rank", "/metrics", "/"]) + (
            "" if rng.random() < 0.5 else "/" + "".join(rng.choices(string.ascii_lowercase, k=10))
        )
        resp = client.open(path, method=method)
        assert resp.status_code in {404, 405}, (method, path, resp.status_code)
    text = client.get("/metrics").get_data(as_text=True)
    assert len(text.encode()) < MAX_METRICS_BYTES, f"/metrics is {len(text)} bytes"
    methods = {
        line.split('method="', 1)[1].split('"', 1)[0]
        for line in text.splitlines()
        if line.startswith("recsys_http_requests_total{")
    }
    assert methods <= {"OTHER", "GET"}, methods
    assert 'endpoint="unmatched",method="OTHER",status="405"' in text or (
        'endpoint="unmatched",method="OTHER",status="404"' in text
    )
