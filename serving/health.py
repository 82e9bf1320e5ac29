"""Liveness and readiness probes."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from serving.contract import Health, Readiness
from serving.errors import error_body, redact_paths
from serving.heartbeat import HEARTBEAT_FILE, writer_check
from serving.snapshot import serving_dir
from serving.state import state

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    """The process is up and answering."""
    return jsonify(Health(status="ok").model_dump(mode="json"))


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    """200 when a snapshot and the models are loaded and events can be taken and ingested
    (event log writable, writer alive), else 503 saying what is wrong.

    Unauthenticated, so it reports states, versions and ages, never file paths (GET
    /v1/admin/status, behind the API key, has those)."""
    st = state()
    checks: dict[str, dict[str, Any]] = {
        "store": _store_check(st),
        "models": _models_check(st),
        "event_log": st.event_log.health(),
        "writer": _writer_check(st),
    }
    if all(c["ok"] for c in checks.values()):
        ready = Readiness.model_validate({"status": "ready", "checks": checks})
        return jsonify(ready.model_dump(mode="json", exclude_unset=True))
    missing = [name for name, c in checks.items() if not c["ok"]]
    body = error_body("not_ready", f"not ready: {', '.join(missing)} not ok")
    not_ready = Readiness.model_validate({"status": "not_ready", "checks": checks, **body})
    return jsonify(not_ready.model_dump(mode="json", exclude_unset=True)), 503


def _store_check(st: Any) -> dict[str, Any]:
    info = st.snapshots.info
    if info is None:
        return {"ok": False, "state": "absent", "detail": "no store snapshot published yet"}
    return {
        "ok": True,
        "state": "published",
        "published_at": info.published_at,
        "age_s": round(max(0.0, time.time() - info.published_at), 3),
        "log_seq": info.log_seq,
    }


def _models_check(st: Any) -> dict[str, Any]:
    loaded = st.models.recommender is not None
    fallback = st.models.fallback
    return {
        "ok": loaded,
        "state": ("fallback" if fallback else "loaded") if loaded else "not_loaded",
        "model_versions": st.models.model_versions,
        "error": redact_paths(st.models.error),
        # a refused champion and the verified version served instead
        "fallback": _redact_tree(fallback),
    }


def _writer_check(st: Any) -> dict[str, Any]:
    out = writer_check(serving_dir(st.settings) / HEARTBEAT_FILE)
    return {k: _redact_tree(v) for k, v in out.items()}


def _redact_tree(value: Any) -> Any:
    if isinstance(value, str):
        return redact_paths(value)
    if isinstance(value, dict):
        return {k: _redact_tree(v) for k, v in value.items()}
    return value
