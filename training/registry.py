"""MLflow logging, registration and promotion shared by the text model and the ranker.

Models are logged as plain safe files (safetensors directories, LightGBM text models) plus the
resolved settings, and registered under fixed names; the alias ``champion`` marks the version
that serving loads.  The default tracking store is ``sqlite:///<home>/mlflow.db`` with artifacts
under ``<home>/mlruns``; ``MLFLOW_TRACKING_URI`` / ``RECSYS_MLFLOW_TRACKING_URI`` point at a
real ``mlflow server`` instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from recsys.algorithms.text_index import TextIndex
from recsys.core.config import Settings
from recsys.core.errors import ModelNotReadyError, NotFoundError

log = logging.getLogger(__name__)

CHAMPION = "champion"
TEXT_MODEL_NAME = "text-scorer"
RANKER_MODEL_NAME = "ranker"


@dataclass(frozen=True)
class ModelRef:
    """A registered model version and where its files are."""

    name: str
    version: str
    run_id: str
    source: str


def tracking_uri(settings: Settings) -> str:
    """The settings' tracking URI (``MLFLOW_TRACKING_URI`` was folded in when they were loaded)."""
    return settings.tracking_uri


def client(settings: Settings) -> Any:
    """An ``MlflowClient`` on the settings' tracking store (created on first use)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(settings)
    settings.home.mkdir(parents=True, exist_ok=True)
    # set_tracking_uri exports MLFLOW_TRACKING_URI; left behind, it would send the next home's
    # runs (a second CLI invocation or test in this process) to this home's store.
    exported = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if exported is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = exported
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(settings: Settings, name: str | None = None) -> str:
    """The experiment id, creating it with artifacts under ``<home>/mlruns`` when local."""
    c = client(settings)
    exp_name = name or settings.experiment
    exp = c.get_experiment_by_name(exp_name)
    if exp is not None:
        return str(exp.experiment_id)
    local = tracking_uri(settings).startswith("sqlite:")
    return str(
        c.create_experiment(exp_name, artifact_location=settings.artifact_root if local else None)
    )


@contextlib.contextmanager
def start_run(
    settings: Settings,
    run_name: str,
    *,
    data_fingerprint: str | None = None,
    tags: Mapping[str, str] | None = None,
    experiment: str | None = None,
) -> Iterator[Any]:
    """An active MLflow run carrying the resolved settings, data fingerprint and git commit."""
    import mlflow

    client(settings)
    all_tags = {"git_commit": git_commit(), **(tags or {})}
    if data_fingerprint:
        all_tags["data_fingerprint"] = data_fingerprint
    # Under `mlflow run`, MLFLOW_RUN_ID names the run the project launcher created: log into it.
    launched = os.environ.get("MLFLOW_RUN_ID")
    run_kwargs: dict[str, Any] = (
        {"run_id": launched}
        if launched
        else {"experiment_id": ensure_experiment(settings, experiment), "run_name": run_name}
    )
    with mlflow.start_run(**run_kwargs, tags=all_tags) as run:
        params = _flatten_params(settings.to_dict())
        if data_fingerprint:
            params["data_fingerprint"] = data_fingerprint
        mlflow.log_params(params)
        mlflow.log_dict(settings.to_dict(), "settings.json")
        yield run


def register(settings: Settings, name: str, run_id: str, artifact_path: str) -> ModelRef:
    """Register ``runs:/<run_id>/<artifact_path>`` as a new version of ``name``."""
    c = client(settings)
    with contextlib.suppress(Exception):  # already exists
        c.create_registered_model(name)
    source = f"{c.get_run(run_id).info.artifact_uri}/{artifact_path}"
    mv = c.create_model_version(name=name, source=source, run_id=run_id)
    log.info("registered %s version %s from run %s", name, mv.version, run_id)
    return ModelRef(name=name, version=str(mv.version), run_id=run_id, source=source)


def promote(settings: Settings, name: str, version: str | int) -> ModelRef:
    """Point the ``champion`` alias of ``name`` at ``version``."""
    c = client(settings)
    try:
        mv = c.get_model_version(name, str(version))
    except Exception as exc:
        raise NotFoundError(
            f"model {name!r} has no version {version}; see `recsys models list`"
        ) from exc
    c.set_registered_model_alias(name, CHAMPION, str(version))
    log.info("promoted %s version %s to %s", name, version, CHAMPION)
    return ModelRef(
        name=name, version=str(mv.version), run_id=str(mv.run_id), source=str(mv.source)
    )


def champion(settings: Settings, name: str) -> ModelRef | None:
    """The version the ``champion`` alias points at, or ``None``."""
    c = client(settings)
    try:
        mv = c.get_model_version_by_alias(name, CHAMPION)
    except Exception:
        return None
    return ModelRef(
        name=name, version=str(mv.version), run_id=str(mv.run_id), source=str(mv.source)
    )


def run_metric(settings: Settings, run_id: str, key: str) -> float | None:
    value = client(settings).get_run(run_id).data.metrics.get(key)
    return None if value is None else float(value)


def promote_if_better(
    settings: Settings, ref: ModelRef, metric_key: str, higher_is_better: bool = True
) -> bool:
    """Promote ``ref`` when it beats the current champion on ``metric_key`` (or none exists)."""
    new = run_metric(settings, ref.run_id, metric_key)
    current = champion(settings, ref.name)
    old = run_metric(settings, current.run_id, metric_key) if current else None
    better = (
        current is None
        or old is None
        or (new is not None and (new > old if higher_is_better else new < old))
    )
    if better:
        promote(settings, ref.name, ref.version)
    else:
        log.info(
            "%s version %s (%s=%s) does not beat champion version %s (%s); not promoted",
            ref.name,
            ref.version,
            metric_key,
            new,
            current.version if current else None,
            old,
        )
    return better


def download(
    settings: Settings, name: str, version: str | None = None, dst: Path | None = None
) -> tuple[ModelRef, Path]:
    """Download a registered version (default: the champion) and return its local directory."""
    import mlflow

    c = client(settings)
    if version is None:
        ref = champion(settings, name)
        if ref is None:
            raise ModelNotReadyError(
                f"no {CHAMPION} version of model {name!r}; train it (`recsys train ...`) "
                f"or promote one (`recsys models promote {name} VERSION`)"
            )
    else:
        try:
            mv = c.get_model_version(name, str(version))
        except Exception as exc:
            raise NotFoundError(f"model {name!r} has no version {version}") from exc
        ref = ModelRef(name, str(mv.version), str(mv.run_id), str(mv.source))
    target = dst or Path(tempfile.mkdtemp(prefix=f"{name}-v{ref.version}-"))
    local = mlflow.artifacts.download_artifacts(artifact_uri=ref.source, dst_path=str(target))
    return ref, Path(local)


def list_versions(settings: Settings, name: str) -> list[dict[str, Any]]:
    """Every version of ``name`` with its aliases and run metrics, newest first."""
    c = client(settings)
    try:
        versions = c.search_model_versions(f"name = '{name}'")
    except Exception:
        return []
    rows = []
    for mv in sorted(versions, key=lambda v: int(v.version), reverse=True):
        run = c.get_run(mv.run_id) if mv.run_id else None
        full = c.get_model_version(name, mv.version)  # search results omit aliases
        rows.append(
            {
                "name": name,
                "version": str(mv.version),
                "aliases": list(getattr(full, "aliases", []) or []),
                "run_id": mv.run_id,
                "created": mv.creation_timestamp,
                "metrics": dict(run.data.metrics) if run else {},
            }
        )
    return rows


def data_fingerprint(con: duckdb.DuckDBPyConnection, events_relation: str = "events") -> str:
    """A short stable hash of the store's content (events and items) that a model was trained on."""
    ev = con.execute(
        f"SELECT count(*), min(ts), max(ts), bit_xor(hash(event_id)) FROM {events_relation}"
    ).fetchone()
    it = con.execute(
        "SELECT count(*), bit_xor(hash(item_id, title, description)) FROM items"
    ).fetchone()
    payload = json.dumps([str(v) for v in (*(ev or ()), *(it or ()))])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _flatten_params(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten_params(v, f"{key}."))
        else:
            out[key] = str(v)[:500]
    return out


def load_text_index(
    settings: Settings, con: duckdb.DuckDBPyConnection, scope: str, version: str | None = None
) -> TextIndex | None:
    """The ``TextIndex`` of text-scorer ``version`` (default: the champion) for ``scope``.

    ``None`` (with a logged reason) when no text model is registered or its embeddings for the
    scope were never written: callers then run without text features.
    """
    if version is None:
        ref = champion(settings, TEXT_MODEL_NAME)
        if ref is None:
            log.warning(
                "no champion %r model: text features are skipped "
                "(run `recsys train text` and `recsys score`)",
                TEXT_MODEL_NAME,
            )
            return None
        version = ref.version
    try:
        index = TextIndex.load(con, model_version=version, scope=scope)
    except ModelNotReadyError as exc:
        log.warning("text features skipped: %s", exc)
        return None
    if not index.user_ids:
        log.warning(
            "text model %s has no %r user embeddings: run `recsys score` for that scope; "
            "text features are skipped",
            version,
            scope,
        )
        return None
    log.info(
        "text index: model version %s, scope %s, %d items", version, scope, len(index.item_ids)
    )
    return index
