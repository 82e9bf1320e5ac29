"""Secrets never leave the process: not in MLflow params or artifacts, settings.json, the home's
files, logs or HTTP answers; the unauthenticated probes report states, not file paths."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from feature_store.db import connect
from feature_store.splits import materialize_protocol_split
from recsys.cli.serve import settings_env
from recsys.core.config import load_settings, secret_keys
from recsys.core.errors import ConfigError
from serving.app import create_app
from serving.writer import EventWriter
from tests.factories import load_into_store, make_catalog, make_events
from tests.integration.test_pipeline import _write_text_model
from tests.unit.test_ranker import N_ITEMS, small_settings
from training import registry
from training.ranker.run import train_and_log

pytestmark = pytest.mark.integration

KEY = "k3y-Zq81-never-leaves"


def _files_containing(root: Path, needle: bytes) -> list[str]:
    return [
        str(p.relative_to(root))
        for p in sorted(root.rglob("*"))
        if p.is_file() and needle in p.read_bytes()
    ]


def test_the_api_key_is_typed_secret_and_masked() -> None:
    settings = load_settings(environ={"RECSYS_SERVING__API_KEY": KEY})
    assert "serving.api_key" in secret_keys()
    assert settings.serving.api_key.get_secret_value() == KEY
    assert KEY not in repr(settings) and KEY not in str(settings.serving.api_key)
    assert KEY not in settings.to_json()
    assert settings.to_dict()["serving"]["api_key"] == "***"
    assert load_settings(environ={}).to_dict()["serving"]["api_key"] == ""
    # the child processes of `recsys serve` get it through their environment only
    assert settings_env(settings)["RECSYS_SERVING__API_KEY"] == KEY


def test_a_bad_secret_value_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={}, overrides={"serving.api_key": ["a", KEY]})
    assert "serving.api_key" in str(info.value) and KEY not in str(info.value)


def test_training_leaves_no_trace_of_the_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = small_settings(tmp_path / "home").replace(**{"serving.api_key": KEY})
    con = connect(settings.db_path)
    load_into_store(
        con, make_catalog(N_ITEMS), make_events(n_users=30, n_items=N_ITEMS, events_per_user=24)
    )
    materialize_protocol_split(con)
    _write_text_model(settings, con)
    summary = train_and_log(settings, con)
    con.close()

    run = registry.client(settings).get_run(summary["run_id"])
    assert run.data.params["serving.api_key"] == "***"
    assert KEY not in json.dumps(run.data.params) and KEY not in json.dumps(run.data.tags)
    artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
    assert (artifacts / "settings.json").is_file()
    assert _files_containing(artifacts, KEY.encode()) == []
    # the whole home: DuckDB store, MLflow database, artifacts, reports
    assert _files_containing(settings.home, KEY.encode()) == []
    assert KEY not in caplog.text
    assert len(caplog.records) > 10  # the run logged; none of it carries the key


def test_http_answers_carry_no_paths_or_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = load_settings(
        environ={}, overrides={"home": str(tmp_path / "home"), "serving.api_key": KEY}
    )
    con = connect(settings.db_path)
    load_into_store(con, make_catalog(), make_events())
    con.close()
    EventWriter(settings).flush()

    def broken(_settings: object, _con: object) -> object:
        raise FileNotFoundError(f"{settings.home.resolve()}/artifacts/ranker/model.txt")

    app = create_app(settings, loader=broken, start_watcher=False)
    try:
        client = app.test_client()
        home = str(settings.home.resolve())
        answers = [
            client.get("/readyz"),
            client.get("/healthz"),
            client.get("/metrics"),
            client.get("/v1/users/u1/recommendations"),  # 503: models not loaded
            client.post("/v1/events", json={"events": []}, headers={"X-API-Key": "wrong"}),
            client.post("/v1/events", json={"events": "x"}, headers={"X-API-Key": KEY}),
        ]
        ready = answers[0].get_json()
        assert answers[0].status_code == 503
        assert ready["checks"]["store"]["state"] == "published"
        assert ready["checks"]["models"]["state"] == "not_loaded"
        assert "<path>" in ready["checks"]["models"]["error"]
        assert ready["checks"]["event_log"]["state"] == "writable"
        for answer in answers:
            body = answer.get_data(as_text=True)
            assert home not in body and str(tmp_path) not in body, answer.request.path
            assert KEY not in body
        assert [a.status_code for a in answers[3:]] == [503, 401, 400]
        assert KEY not in caplog.text
    finally:
        app.extensions["recsys"].close()
