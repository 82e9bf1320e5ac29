"""One HTTP contract: the pydantic models, the OpenAPI document generated from them, the routes
they describe and the docs page that renders them."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from flask import Flask
from pydantic import BaseModel, ValidationError

from feature_store.validation import validate_event_record
from recsys.core.config import Settings
from serving import contract as c
from serving.app import create_app
from serving.docs import ASSETS
from serving.errors import PayloadTooLargeError, RequestValidationError
from serving.openapi import OPERATIONS, component_schemas, openapi_document
from serving.validation import parse_event, parse_events_body, parse_rank_body


def no_models(settings: Settings, con: Any) -> Any:
    raise ValueError("no models in this test")


@pytest.fixture
def doc(settings: Settings) -> dict[str, Any]:
    return openapi_document(settings)


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    app = create_app(settings, loader=no_models, start_watcher=False)
    yield app
    app.extensions["recsys"].close()


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_every_ref_resolves(doc: dict[str, Any]) -> None:
    refs = set(_refs(doc))
    assert "#/components/schemas/Event" in refs and len(refs) >= 10
    for ref in refs:
        assert isinstance(_resolve(doc, ref), dict), ref
    # every component is reached from some operation (no dead schema left behind)
    reached = {r.rsplit("/", 1)[1] for r in refs}
    assert reached == set(doc["components"]["schemas"])


def test_every_operation_has_id_tag_summary_and_example(doc: dict[str, Any]) -> None:
    tags = {t["name"] for t in doc["tags"]}
    ids = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            where = f"{method.upper()} {path}"
            ids.append(op["operationId"])
            assert op["summary"] and op["description"], where
            assert op["tags"] and set(op["tags"]) <= tags, where
            ok = next(iter(op["responses"]["200"]["content"].values()))
            assert "example" in ok, where
            if "requestBody" in op:
                assert "example" in op["requestBody"]["content"]["application/json"], where
    assert len(ids) == len(set(ids)) == len(OPERATIONS) == 10


def test_the_document_matches_the_routes(app: Flask, doc: dict[str, Any]) -> None:
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint in ("static", "docs.asset"):
            continue
        path = rule.rule.replace("<path:user_id>", "{user_id}")
        routes |= {(m.lower(), path) for m in rule.methods or () if m not in ("HEAD", "OPTIONS")}
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert routes == documented


def test_limits_reach_the_document(settings: Settings) -> None:
    schemas = component_schemas(settings.replace(**{"serving.max_events_per_batch": 7}))
    assert schemas["EventBatch"]["properties"]["events"]["maxItems"] == 7
    rank = schemas["RankRequest"]["properties"]
    assert (rank["k"]["minimum"], rank["k"]["maximum"]) == (1, c.MAX_K)
    assert rank["candidates"]["maxItems"] == c.MAX_CANDIDATES
    assert rank["candidates"]["items"]["oneOf"][0]["maxLength"] == c.MAX_ID_LENGTH
    assert schemas["RankRequest"]["additionalProperties"] is False
    event = schemas["Event"]
    assert set(event["required"]) == {"user_id", "item_id", "event_type", "ts"}
    assert event["properties"]["position"]["anyOf"][0]["maximum"] == 2**31 - 1


@pytest.mark.parametrize(
    ("model", "mode"),
    [
        (c.RankRequest, "validation"),
        (c.Event, "validation"),
        (c.EventBatch, "validation"),
        (c.RecommendationList, "serialization"),
        (c.EventResults, "serialization"),
        (c.ErrorResponse, "serialization"),
        (c.Readiness, "serialization"),
        (c.ReloadResult, "serialization"),
        (c.Health, "serialization"),
        (c.AdminStatus, "serialization"),
    ],
)
def test_the_examples_are_valid(model: type[BaseModel], mode: str) -> None:
    examples = model.model_json_schema(mode=mode)["examples"]  # type: ignore[arg-type]
    assert examples
    for example in examples:
        model.model_validate(example)


def test_event_model_applies_the_stores_rules() -> None:
    good = {"user_id": 5, "item_id": " 9 ", "event_type": "RATE", "value": "4.5", "ts": 0}
    row, _ = validate_event_record(good)
    assert c.Event.model_validate(good).to_row() == row
    assert row is not None and row["event_type"] == "rate" and row["item_id"] == "9"
    with_list = c.Event.model_validate(
        {**good, "recommendation_id": "6F1C2A8E-2B7D-4C1E-9D0A-3F5E8B9C7A11"}
    )
    assert with_list.to_row()["recommendation_id"] == "6f1c2a8e-2b7d-4c1e-9d0a-3f5e8b9c7a11"
    bad = [
        ({**good, "value": 11}, "rating out of range"),
        ({**good, "ts": "2100-01-01T00:00:00"}, "timestamp out of range"),
        ({**good, "user_id": "\ud83d"}, "user_id is not valid Unicode (a lone UTF-16 surrogate?)"),
        ({**good, "position": 2**31}, "bad position"),
        ({**good, "surprise": 1}, "unknown field(s) surprise"),
        ({**good, "recommendation_id": "list-7"}, "recommendation_id must be the uuid"),
        ([1, 2], "record is not an object"),
    ]
    for record, reason in bad:
        event, message = parse_event(record)
        assert event is None and message is not None and message.startswith(reason), record


def test_event_built_in_python_matches_the_server_row() -> None:
    event = c.Event(user_id="5", item_id="1", event_type="click", ts=datetime(2024, 5, 1, 12))
    sent = event.model_dump(mode="json", exclude_none=True)
    assert sent["ts"] == "2024-05-01T12:00:00"
    row, _ = validate_event_record({k: v for k, v in sent.items() if k != "event_id"})
    assert row is not None and sent["event_id"] == row["event_id"]  # the same content id


def test_messages_name_the_field_and_the_fix() -> None:
    with pytest.raises(RequestValidationError) as exc:
        parse_rank_body({"candidates": ["a"], "k": 0, "colour": "red", "size": 1})
    assert str(exc.value) == (
        "unknown field(s) colour, size in request body; allowed: candidates, user_id, "
        "history, k, explain; k must be from 1 to 100, got 0"
    )
    with pytest.raises(RequestValidationError, match=r"^candidates is required: a list of item"):
        parse_rank_body({"k": 3})
    with pytest.raises(PayloadTooLargeError, match="history has 1001 entries; the limit is 1000"):
        parse_rank_body({"candidates": ["a"], "history": ["h"] * 1001})
    with pytest.raises(PayloadTooLargeError, match="over the limit of 2"):
        parse_events_body({"events": [{}, {}, {}]}, max_events=2)
    with pytest.raises(RequestValidationError, match="request body must be a JSON object, got"):
        parse_events_body("events", max_events=2)


def test_validation_error_types_are_only_client_errors() -> None:
    with pytest.raises(ValidationError):
        c.RecommendationQuery.model_validate({"k": "0"})
    assert c.RecommendationQuery.model_validate({"k": " 7 ", "explain": "YES"}).explain is True


def test_docs_page_loads_only_bundled_files(app: Flask) -> None:
    client = app.test_client()
    page = client.get("/docs").get_data(as_text=True)
    assert 'src="/docs/assets/swagger-ui-bundle.js"' in page
    assert 'href="/docs/assets/swagger-ui.css"' in page and '"/openapi.json"' in page
    assert "http://" not in page.replace('"http://www.w3.org', "") and "https://" not in page
    # readers without JavaScript still get every operation
    assert all(op.operation_id in page and op.path in page for op in OPERATIONS)
    bodies = {}
    for name in ASSETS:
        with client.get(f"/docs/assets/{name}") as res:  # a file response: close it
            assert res.status_code == 200, name
            bodies[name] = res.get_data()
    assert b"SwaggerUIBundle" in bodies["swagger-ui-bundle.js"]
    assert b"Apache License" in bodies["LICENSE"]
    assert client.get("/docs/assets/secrets.txt").status_code == 404
    assert client.get("/docs/assets/..%2Fflask_swagger_ui.py").status_code == 404


def test_client_does_not_import_flask() -> None:
    code = (
        "import sys, serving.client; "
        "print(sorted(m for m in ('flask', 'werkzeug', 'gunicorn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
