"""The /v1/admin blueprint (API key required): model reload and a status view."""

from __future__ import annotations

import os
import time

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from serving.contract import AdminStatus, ReloadResult
from serving.errors import StoreNotReadyError
from serving.security import require_api_key
from serving.state import state

bp = Blueprint("admin", __name__, url_prefix="/v1/admin")


@bp.post("/reload")
@require_api_key
def reload_models() -> ResponseReturnValue:
    """Load the current champions and swap them in atomically; on failure the old ones stay."""
    st = state()
    info = st.snapshots.info
    if info is None:
        raise StoreNotReadyError("no store snapshot is published yet; models load on top of one")
    # a refused champion raises ReloadRefusedError (409) and the old models keep serving
    outcome = st.models.load(info.path, delta=info.delta, fallback=False)
    st.watcher.signal_reload()  # the other workers follow
    result = ReloadResult.model_validate({"reloaded": True, **outcome})
    return jsonify(result.model_dump(mode="json", exclude_unset=True))


@bp.get("/status")
@require_api_key
def status() -> ResponseReturnValue:
    """Where this worker stands: models, snapshot, event-log backlog."""
    st = state()
    info = st.snapshots.info
    body = AdminStatus.model_validate(
        {
            "pid": os.getpid(),
            "model_versions": st.models.model_versions,
            # the interleaving challenger's versions ({} when not interleaving)
            "challenger_versions": st.models.challenger_versions,
            "model_error": st.models.error,
            "model_fallback": st.models.fallback,
            "models_loaded_at": st.models.loaded_at,
            "snapshot": info.to_dict() if info else None,
            "snapshot_age_seconds": round(time.time() - info.published_at, 3) if info else None,
            # never raises: an unwritable log is reported
            "event_log": {**st.event_log.health(), "path": str(st.event_log.path)},
        }
    )
    return jsonify(body.model_dump(mode="json"))
