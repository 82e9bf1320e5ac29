"""What a report was computed from: date, store fingerprint, and the model versions evaluated."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from recsys.core.config import Settings
from recsys.core.rules import CHAMPION_ALIAS, RANKER_MODEL_NAME, TEXT_MODEL_NAME
from training import registry
from training.promotion import DECISION_TAG, REASON_TAG

log = logging.getLogger(__name__)


def provenance(
    settings: Settings, report: dict[str, Any], fingerprint: str | None
) -> dict[str, Any]:
    """``date`` (UTC), ``data_fingerprint`` and ``models`` entries for ``report``."""
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "data_fingerprint": fingerprint,
        "models": model_versions(settings, report),
    }


def model_versions(settings: Settings, report: dict[str, Any]) -> list[dict[str, str]]:
    """The champions of both models, and the text model the ranker uses when it is not one."""
    rows: list[dict[str, str]] = []
    for name in (RANKER_MODEL_NAME, TEXT_MODEL_NAME):
        ref = registry.champion(settings, name)
        if ref is not None:
            rows.append(_row(settings, name, ref.version, CHAMPION_ALIAS, ref.run_id))
    used = report.get("text_model_version")
    if used is not None and not any(
        r["name"] == TEXT_MODEL_NAME and r["version"] == str(used) for r in rows
    ):
        alias = "used by the ranker"
        try:
            ref = registry.model_version(settings, TEXT_MODEL_NAME, str(used))
            rows.append(_row(settings, TEXT_MODEL_NAME, ref.version, alias, ref.run_id))
        except Exception:  # a deleted version: still say which one the ranker was trained with
            rows.append({"name": TEXT_MODEL_NAME, "version": str(used), "alias": alias})
    return rows


def _row(settings: Settings, name: str, version: str, alias: str, run_id: str) -> dict[str, str]:
    row = {"name": name, "version": version, "alias": alias, "run_id": run_id}
    try:
        tags = registry.client(settings).get_run(run_id).data.tags
    except Exception:  # the run may live in a store that is gone; the version is still known
        log.warning("could not read run %s of %s version %s", run_id, name, version)
        return row
    for key in (DECISION_TAG, REASON_TAG):
        if key in tags:
            row[key] = str(tags[key])
    return row
