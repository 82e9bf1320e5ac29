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
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from recsys.algorithms.ann import VectorSearch
from recsys.algorithms.text_index import TextIndex
from recsys.core import compat
from recsys.core.config import Settings
from recsys.core.errors import ModelNotReadyError, NotFoundError
from recsys.core.rules import CHAMPION_ALIAS as CHAMPION
from recsys.core.rules import TEXT_MODEL_NAME, mlflow_key, mlflow_metrics

log = logging.getLogger(__name__)

# Model version tag holding {relative path: sha256} of every artifact file, set at registration.
CHECKSUM_TAG = "sha256"
# The name of the store as an MLflow dataset input (its digest is ``data_fingerprint``).
STORE_DATASET = "recsys-store"


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
    mlflow = compat.mlflow()
    uri = tracking_uri(settings)
    settings.home.mkdir(parents=True, exist_ok=True)
    relocate_local_store(settings)
    # set_tracking_uri exports MLFLOW_TRACKING_URI; left behind, it would send the next home's
    # runs (a second CLI invocation or test in this process) to this home's store.
    exported = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if exported is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = exported
    return mlflow.tracking.MlflowClient(tracking_uri=uri, registry_uri=uri)


_RELOCATION_CHECKED: set[str] = set()
# (table, column) holding artifact locations in MLflow's SQL store
_LOCATION_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
    ("logged_models", "artifact_location"),
)


def relocate_local_store(settings: Settings) -> int:
    """Point the home's own tracking store at the home's artifacts after the home was moved.

    MLflow records absolute artifact URIs (``file:///old/home/mlruns/...``), so a copied or moved
    home would keep reading - or fail to find - the old folder.  When the tracking store is the
    home's default ``mlflow.db`` and an experiment of ours records another home's ``mlruns``,
    that prefix is rewritten to this home's in every location column (experiments, runs, model
    versions); ``mlflow.pyfunc.load_model("models:/...")`` then works on the copy too.  Checked
    once per process and home; returns the number of rows rewritten.
    """
    db = (settings.home / "mlflow.db").resolve()
    if tracking_uri(settings) != f"sqlite:///{db}" or not db.is_file():
        return 0
    if str(db) in _RELOCATION_CHECKED:
        return 0
    _RELOCATION_CHECKED.add(str(db))
    root = settings.artifact_root
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as con, con:
        olds = {
            str(loc)
            for (loc,) in con.execute("SELECT artifact_location FROM experiments")
            if str(loc).startswith("file://") and str(loc).endswith("/mlruns") and loc != root
        }
        tables = {name for (name,) in con.execute("SELECT name FROM sqlite_master")}
        changed = 0
        for old in sorted(olds):
            for table, column in _LOCATION_COLUMNS:
                if table not in tables:
                    continue
                cur = con.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                    f"WHERE {column} = ? OR {column} LIKE ? ESCAPE '\\'",
                    (root, len(old) + 1, old, _like_prefix(old) + "/%"),
                )
                changed += cur.rowcount
        if changed:
            log.warning(
                "the home moved: %d artifact locations in %s now point at %s (were %s)",
                changed,
                db,
                root,
                ", ".join(sorted(olds)),
            )
    return changed


def _like_prefix(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


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
    """An active MLflow run carrying the resolved settings, data fingerprint and git commit.

    Open it before the work, so the run spans the job.  It ends FINISHED, FAILED on an error,
    or KILLED on Ctrl-C or SIGTERM (SIGTERM is turned into ``KeyboardInterrupt`` while the run
    is open in the main thread); the interrupt is re-raised.
    """
    mlflow = compat.mlflow()
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
    run = mlflow.start_run(**run_kwargs, tags=all_tags)
    try:
        with _sigterm_interrupts():
            params = _flatten_params(settings.to_dict())
            if data_fingerprint:
                params["data_fingerprint"] = data_fingerprint
            mlflow.log_params(params)
            mlflow.log_dict(settings.to_dict(), "settings.json")
            yield run
    except KeyboardInterrupt:
        log.warning("run %s (%s) interrupted; ending it as KILLED", run.info.run_id, run_name)
        mlflow.end_run(status="KILLED")
        raise
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run(status="FINISHED")


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises ``KeyboardInterrupt`` in the main thread until the block ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def store_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Rows per content table, logged with the store input."""
    return {
        table: int((con.execute(f"SELECT count(*) FROM {table}").fetchone() or (0,))[0])
        for table in ("events", "items", "users")
    }


def log_store_input(
    settings: Settings, fingerprint: str, context: str, counts: Mapping[str, int]
) -> None:
    """Log the store the active run read as an MLflow dataset input: name ``recsys-store``,
    digest ``data_fingerprint`` (one definition for every run), source the DuckDB file."""
    mlflow = compat.mlflow()
    resolve_dataset_source = compat.mlflow("data.dataset_source_registry").resolve_dataset_source
    MetaDataset = compat.mlflow("data.meta_dataset").MetaDataset
    with warnings.catch_warnings():  # "file:" matches MLflow's local source class twice
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(Path(settings.db_path).resolve().as_uri())
    dataset = MetaDataset(  # abstract in MLflow's types: its profile is None at run time
        source=source, name=STORE_DATASET, digest=fingerprint
    )
    mlflow.log_input(dataset, context=context, tags={k: str(v) for k, v in counts.items()})


def log_metric_history(key: str, values: Sequence[float], first_step: int = 1) -> None:
    """One metric's curve (e.g. per boosting iteration) in a few batched writes."""
    mlflow = compat.mlflow()
    Metric = compat.mlflow("entities").Metric
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_metric_history needs an active run")
    now = int(time.time() * 1000)
    metrics = [Metric(mlflow_key(key), float(v), now, first_step + i) for i, v in enumerate(values)]
    c = mlflow.tracking.MlflowClient()
    for start in range(0, len(metrics), 1000):
        c.log_batch(run.info.run_id, metrics=metrics[start : start + 1000])


def register(settings: Settings, name: str, run_id: str, artifact_path: str) -> ModelRef:
    """Register ``runs:/<run_id>/<artifact_path>`` as a new version of ``name``."""
    c = client(settings)
    with contextlib.suppress(Exception):  # already exists
        c.create_registered_model(name)
    source = f"{c.get_run(run_id).info.artifact_uri}/{artifact_path}"
    mv = c.create_model_version(name=name, source=source, run_id=run_id)
    ref = ModelRef(name=name, version=str(mv.version), run_id=run_id, source=source)
    try:
        record_checksums(settings, ref)
    except Exception:  # the version stays usable; serving then verifies it by parsing only
        log.exception("could not record checksums for %s version %s", name, ref.version)
    log.info("registered %s version %s from run %s", name, mv.version, run_id)
    return ref


# MLflow writes this file into a model folder that a ``models:/`` URI resolved to (for a local
# store: into the run's own artifact folder) - bookkeeping that no loader reads, never checksummed
MLFLOW_MODEL_META = "registered_model_meta"


def sha256_tree(directory: Path) -> dict[str, str]:
    """``{relative posix path: sha256 hex}`` of every file under ``directory`` (but MLflow's
    top-level ``registered_model_meta``)."""
    out: dict[str, str] = {}
    root = Path(directory)
    meta = root / MLFLOW_MODEL_META
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p != meta):
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
        out[path.relative_to(directory).as_posix()] = digest.hexdigest()
    return out


def record_checksums(settings: Settings, ref: ModelRef) -> dict[str, str]:
    """Hash the registered version's artifact files (as the store holds them) into a version tag.

    Serving checks the files it loads against this record, so a file damaged or replaced after
    registration is refused instead of parsed.
    """
    with tempfile.TemporaryDirectory(prefix="checksum-") as tmp:
        _, local = download(settings, ref.name, ref.version, dst=Path(tmp))
        sums = sha256_tree(local)
    client(settings).set_model_version_tag(ref.name, ref.version, CHECKSUM_TAG, json.dumps(sums))
    return sums


def recorded_checksums(settings: Settings, name: str, version: str) -> dict[str, str] | None:
    """The checksums recorded at registration, or ``None`` for a version registered without."""
    try:
        mv = client(settings).get_model_version(name, str(version))
    except Exception as exc:
        raise NotFoundError(f"model {name!r} has no version {version}") from exc
    raw = (mv.tags or {}).get(CHECKSUM_TAG)
    if raw is None:
        return None
    try:
        sums = json.loads(raw)
    except ValueError:
        return {}  # an unreadable record matches no file: the version is refused
    return {str(k): str(v) for k, v in sums.items()} if isinstance(sums, dict) else {}


def promote(settings: Settings, name: str, version: str | int, alias: str = CHAMPION) -> ModelRef:
    """Point the ``alias`` (default ``champion``) of ``name`` at ``version``."""
    c = client(settings)
    try:
        mv = c.get_model_version(name, str(version))
    except Exception as exc:
        raise NotFoundError(
            f"model {name!r} has no version {version}; see `recsys models list`"
        ) from exc
    c.set_registered_model_alias(name, alias, str(version))
    log.info("promoted %s version %s to %s", name, version, alias)
    return ModelRef(
        name=name, version=str(mv.version), run_id=str(mv.run_id), source=str(mv.source)
    )


def remove_alias(settings: Settings, name: str, alias: str) -> bool:
    """Delete ``alias`` of ``name``; False when no version carried it."""
    if aliased(settings, name, alias) is None:
        return False
    client(settings).delete_registered_model_alias(name, alias)
    log.info("removed alias %s of %s", alias, name)
    return True


def champion(settings: Settings, name: str) -> ModelRef | None:
    """The version the ``champion`` alias points at, or ``None``."""
    return aliased(settings, name, CHAMPION)


def aliased(settings: Settings, name: str, alias: str) -> ModelRef | None:
    """The version ``alias`` of ``name`` points at, or ``None``."""
    c = client(settings)
    try:
        mv = c.get_model_version_by_alias(name, alias)
    except Exception:
        return None
    return ModelRef(
        name=name, version=str(mv.version), run_id=str(mv.run_id), source=str(mv.source)
    )


def model_version(settings: Settings, name: str, version: str | int) -> ModelRef:
    """One registered version of ``name``; NotFoundError when there is no such version."""
    try:
        mv = client(settings).get_model_version(name, str(version))
    except Exception as exc:
        raise NotFoundError(f"model {name!r} has no version {version}") from exc
    return ModelRef(name, str(mv.version), str(mv.run_id), str(mv.source))


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
    mlflow = compat.mlflow()
    client(settings)
    if version is None:
        ref = champion(settings, name)
        if ref is None:
            raise ModelNotReadyError(
                f"no {CHAMPION} version of model {name!r}; train it (`recsys train ...`) "
                f"or promote one (`recsys models promote {name} VERSION`)"
            )
    else:
        ref = model_version(settings, name, version)
    target = dst or Path(tempfile.mkdtemp(prefix=f"{name}-v{ref.version}-"))
    local = mlflow.artifacts.download_artifacts(artifact_uri=ref.source, dst_path=str(target))
    return ref, Path(local)


def set_tags(tags: Mapping[str, str]) -> None:
    """Tag the active run (e.g. with what the job found out after the run was opened)."""
    mlflow = compat.mlflow()
    mlflow.set_tags(dict(tags))


def log_params(params: Mapping[str, Any]) -> None:
    """Log ``params`` to the active run."""
    mlflow = compat.mlflow()
    mlflow.log_params(dict(params))


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log ``metrics`` (names as ``recsys.core.rules`` spells them) to the active run."""
    mlflow = compat.mlflow()
    mlflow.log_metrics(mlflow_metrics(metrics), step=step)


def log_artifact(path: Path | str, artifact_path: str) -> None:
    """Log one file to the active run under ``artifact_path``."""
    mlflow = compat.mlflow()
    mlflow.log_artifact(str(path), artifact_path)


def log_artifacts(directory: Path | str, artifact_path: str) -> None:
    """Log a directory's files to the active run under ``artifact_path``."""
    mlflow = compat.mlflow()
    mlflow.log_artifacts(str(directory), artifact_path)


def model_cache_dir(settings: Settings, name: str, version: str) -> Path:
    """Where a registered version's files are kept once downloaded (the one champion cache)."""
    return settings.home / "serving" / "models" / name / str(version)


def cached_download(settings: Settings, ref: ModelRef) -> Path:
    """``ref``'s artifacts in its per-version cache folder, downloaded on first use.

    The download goes to a temporary sibling that is then renamed, so a concurrent reader never
    sees half a download; a download another process finished first wins.
    """
    cache = model_cache_dir(settings, ref.name, ref.version)
    if cache.is_dir() and any(cache.iterdir()):
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=cache.parent))
    try:
        _, local = download(settings, ref.name, ref.version, dst=tmp)
        try:
            os.replace(local, cache)
        except OSError:
            if not (cache.is_dir() and any(cache.iterdir())):
                raise  # not a concurrent download that finished first
        log.info("downloaded %s v%s to %s", ref.name, ref.version, cache)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return cache


def cached_champion(settings: Settings, name: str) -> tuple[ModelRef, Path]:
    """The champion of ``name`` and its cached files; ``ModelNotReadyError`` when none."""
    ref = champion(settings, name)
    if ref is None:
        return download(settings, name)  # raises the registry's "no champion" error
    return ref, cached_download(settings, ref)


def list_versions(settings: Settings, name: str) -> list[dict[str, Any]]:
    """Every version of ``name`` with its aliases, tags (the promotion decision and reason) and
    run metrics, newest first."""
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
                "tags": dict(getattr(full, "tags", {}) or {}),
                "run_id": mv.run_id,
                "created": mv.creation_timestamp,
                "metrics": dict(run.data.metrics) if run else {},
            }
        )
    return rows


def data_fingerprint(con: duckdb.DuckDBPyConnection) -> str:
    """A short stable hash of the store's content: all events and items.

    The one definition every run logs (tag ``data_fingerprint``, the digest of the logged store
    input), so the ranker, text model and evaluate runs of one store carry the same value.
    """
    ev = con.execute(
        "SELECT count(*), min(ts), max(ts), bit_xor(hash(event_id)) FROM events"
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
        index = TextIndex.load(
            con, model_version=version, scope=scope, search=VectorSearch.of(settings)
        )
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
