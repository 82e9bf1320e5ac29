"""The whole recommender as an MLflow pyfunc model.

``mlflow.pyfunc.load_model("models:/ranker@champion")`` downloads the registered ranker folder and
calls ``_load_pyfunc`` on it (the ``loader_module`` its ``MLmodel`` names,
``training/ranker/mlflow_model.py``): the ranker's LightGBM text file, the text index and the
generators fitted on the store, as serving builds them.  ``predict`` scores a DataFrame of
``(user_id, item_id)`` rows into a ``score`` column (LambdaRank scores, higher ranks first; the
same numbers ``/v1/rank`` returns as ``raw_score``).  Items the store does not know score NaN; a
user the store does not know is scored as a new visitor.  No pickle is involved.

The store is the home's DuckDB file, opened read-only.  The home is, first match:
``RECSYS_HOME``; the folder of the tracking store when ``MLFLOW_TRACKING_URI`` is a home's
``sqlite:///<home>/mlflow.db``; the home recorded in the model's ``settings.json``.  So a copied
home scores its own store.  The model's other settings (generators, windows, task) are the ones
it was trained with.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from feature_store.db import connect
from recsys.core import rules
from recsys.core.config import ENV_PREFIX, Settings, secret_keys
from recsys.core.errors import DataValidationError, ModelNotReadyError
from recsys.pipeline.loader import load_recommender
from training.registry import ModelRef

log = logging.getLogger(__name__)

INPUT_COLUMNS = ("user_id", "item_id")
OUTPUT_COLUMN = "score"
_NOT_MODEL_SETTINGS = {"home", "data_dir", "mlflow_tracking_uri"}


class RecommenderPyfunc:
    """A loaded recommender behind MLflow's ``predict(model_input, params)``."""

    def __init__(self, recommender: Any, con: Any) -> None:
        self.recommender = recommender
        self.con = con

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """``score`` for every ``(user_id, item_id)`` row, in the input's order."""
        frame = _input_frame(model_input)
        scores = np.full(len(frame), np.nan)
        users = frame["user_id"].to_numpy()
        items = frame["item_id"].to_numpy()
        cur = self.con.cursor()
        try:
            for user, rows in frame.groupby("user_id", sort=False).indices.items():
                wanted = list(dict.fromkeys(items[rows].tolist()))
                result = self.recommender.rank(wanted, k=len(wanted), user_id=str(user), con=cur)
                by_item = {r.item_id: r.score for r in result.items}
                scores[rows] = [by_item.get(i, np.nan) for i in items[rows]]
        finally:
            cur.close()
        log.debug("scored %d rows for %d users", len(frame), len(set(users.tolist())))
        return pd.DataFrame({OUTPUT_COLUMN: scores})


def _input_frame(model_input: Any) -> pd.DataFrame:
    frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
    missing = [c for c in INPUT_COLUMNS if c not in frame.columns]
    if missing:
        raise DataValidationError(
            f"the input needs columns {', '.join(INPUT_COLUMNS)} (one row per user and candidate "
            f"item); missing: {', '.join(missing)}; got: {', '.join(map(str, frame.columns))}"
        )
    if frame[list(INPUT_COLUMNS)].isna().any().any():
        raise DataValidationError("user_id and item_id must not be empty")
    return pd.DataFrame({c: frame[c].astype(str).to_numpy() for c in INPUT_COLUMNS})


def model_settings(model_dir: Path, environ: dict[str, str] | None = None) -> Settings:
    """The settings the model was trained with, on the home whose store it scores."""
    env = dict(os.environ if environ is None else environ)
    saved_file = model_dir / "settings.json"
    saved: dict[str, Any] = (
        json.loads(saved_file.read_text(encoding="utf-8")) if saved_file.is_file() else {}
    )
    secrets = secret_keys()
    values: dict[str, Any] = {}
    for key, value in saved.items():
        if isinstance(value, dict):
            values.update(
                {f"{key}.{k}": v for k, v in value.items() if f"{key}.{k}" not in secrets}
            )
        elif key not in _NOT_MODEL_SETTINGS:
            values[key] = value
    settings = Settings().override(values, f"the model's {saved_file}")
    return settings.override({"home": str(_home(saved, env))}, "the model's home")


def _home(saved: dict[str, Any], env: dict[str, str]) -> Path:
    if env.get(f"{ENV_PREFIX}HOME"):
        return Path(env[f"{ENV_PREFIX}HOME"])
    uri = env.get("MLFLOW_TRACKING_URI", "")
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if (folder / "recsys.duckdb").is_file():
            return folder
    if saved.get("home") and (Path(saved["home"]) / "recsys.duckdb").is_file():
        return Path(saved["home"])
    raise ModelNotReadyError(
        "cannot tell which store this model scores: set RECSYS_HOME to the home (the folder "
        "holding recsys.duckdb), or MLFLOW_TRACKING_URI to sqlite:///<home>/mlflow.db"
    )


def load(model_dir: Path | str, environ: dict[str, str] | None = None) -> RecommenderPyfunc:
    """The pyfunc model for a ranker folder (what ``_load_pyfunc`` returns)."""
    path = Path(model_dir)
    settings = model_settings(path, environ)
    con = connect(settings.db_path, read_only=True)
    try:
        ref = ModelRef(rules.RANKER_MODEL_NAME, _run_version(path), "", str(path))
        recommender = load_recommender(settings, con, precompute=False, ranker=(ref, path))
    except BaseException:
        con.close()
        raise
    log.info("pyfunc recommender on %s (ranker %s)", settings.db_path, ref.version)
    return RecommenderPyfunc(recommender, con)


def _run_version(model_dir: Path) -> str:
    """``run:<id>`` from the MLmodel (a downloaded folder does not know its version number)."""
    mlmodel = model_dir / "MLmodel"
    if mlmodel.is_file():
        for line in mlmodel.read_text(encoding="utf-8").splitlines():
            if line.startswith("run_id:"):
                return f"run:{line.split(':', 1)[1].strip()}"
    return "local"


def _load_pyfunc(data_path: str) -> RecommenderPyfunc:
    """MLflow's entry point for ``loader_module`` models."""
    return load(data_path)
