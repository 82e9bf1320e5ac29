"""Liveness and readiness probes, the OpenAPI document and the docs page."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, render_template
from flask.typing import ResponseReturnValue

from serving.errors import error_body
from serving.heartbeat import HEARTBEAT_FILE, writer_check
from serving.openapi import openapi_document
from serving.snapshot import serving_dir
from serving.state import state

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    """The process is up and answering."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    """200 when a snapshot and the models are loaded and events can be taken and ingested
    (event log writable, writer alive), else 503 saying what is wrong."""
    st = state()
    info = st.snapshots.info
    checks: dict[str, dict[str, Any]] = {
        "store": {"ok": info is not None, "snapshot": info.to_dict() if info else None},
        "models": {
            "ok": st.models.recommender is not None,
            "model_versions": st.models.model_versions,
            "error": st.models.error,
            # a refused champion and the verified version served instead
            "fallback": st.models.fallback,
        },
        "event_log": st.event_log.health(),
        "writer": writer_check(serving_dir(st.settings) / HEARTBEAT_FILE),
    }
    if all(c["ok"] for c in checks.values()):
        return jsonify({"status": "ready", "checks": checks})
    missing = [name for name, c in checks.items() if not c["ok"]]
    body = error_body("not_ready", f"not ready: {', '.join(missing)} not ok")
    return jsonify({"status": "not_ready", "checks": checks, **body}), 503


@bp.get("/openapi.json")
def openapi_json() -> ResponseReturnValue:
    return jsonify(openapi_document(state().settings))


@bp.get("/docs")
def docs() -> ResponseReturnValue:
    """A self-contained HTML page describing every endpoint (no CDN: works offline)."""
    spec = openapi_document(state().settings)
    return render_template("docs.html", spec=spec, title=current_app.name)
