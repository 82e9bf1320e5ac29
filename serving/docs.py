"""The OpenAPI document and the interactive docs page (Swagger UI, served offline).

Swagger UI's files come from the ``flask-swagger-ui`` wheel (its ``dist`` folder: swagger-ui
5.x, Apache-2.0, licence file shipped beside the files); this blueprint serves them itself, so
the page needs no CDN and no request leaves the host.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from flask import Blueprint, abort, jsonify, render_template, send_from_directory, url_for
from flask.typing import ResponseReturnValue

from serving.openapi import OPERATIONS, openapi_document
from serving.state import state

bp = Blueprint("docs", __name__)

# the only files the page loads (the licence is served for whoever wants to read it)
ASSETS = ("swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png", "LICENSE")


def swagger_ui_dir() -> Path:
    """The folder of Swagger UI's bundled files (inside the installed flask-swagger-ui)."""
    return Path(str(importlib.resources.files("flask_swagger_ui") / "dist"))


@bp.get("/openapi.json")
def openapi_json() -> ResponseReturnValue:
    """The OpenAPI 3.1 document, generated from the contract's models."""
    return jsonify(openapi_document(state().settings))


@bp.get("/docs")
def docs() -> ResponseReturnValue:
    """Swagger UI over /openapi.json, with a plain list of the operations for no-script readers."""
    return render_template(
        "docs.html",
        operations=OPERATIONS,
        spec_url=url_for("docs.openapi_json"),
        assets=url_for("docs.asset", name="").rstrip("/"),
    )


@bp.get("/docs/assets/<name>")
def asset(name: str) -> ResponseReturnValue:
    """One of Swagger UI's bundled files."""
    if name not in ASSETS:
        abort(404)
    return send_from_directory(swagger_ui_dir(), name, max_age=3600)
