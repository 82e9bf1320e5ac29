"""The ranker as the request path sees it: a LightGBM text model plus its feature spec.

Small on purpose: serving imports this module, never the training loop.  A model directory
holds ``ranker.txt`` (LightGBM's own text format) and ``features.json`` (feature names in
column order, the text model version it was trained with, the candidate generators).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recsys.core import compat
from recsys.core.errors import ModelNotReadyError

log = logging.getLogger(__name__)

MODEL_FILE = "ranker.txt"
SPEC_FILE = "features.json"


@dataclass
class RankerModel:
    """A loaded LightGBM ranker and the feature names its columns must follow."""

    booster: Any
    feature_names: list[str]
    spec: dict[str, Any] = field(default_factory=dict)

    @property
    def text_model_version(self) -> str | None:
        return self.spec.get("text_model_version")

    @property
    def uses_text(self) -> bool:
        return bool(self.spec.get("uses_text"))

    @classmethod
    def load(cls, directory: Path | str) -> RankerModel:
        """Load ``ranker.txt`` and ``features.json`` from a model directory."""
        lgb = compat.lightgbm()
        path = Path(directory)
        model_file, spec_file = path / MODEL_FILE, path / SPEC_FILE
        if not model_file.is_file() or not spec_file.is_file():
            raise ModelNotReadyError(
                f"{path} is not a ranker model directory (needs {MODEL_FILE} and {SPEC_FILE}); "
                "run `recsys train ranker`"
            )
        spec = json.loads(spec_file.read_text(encoding="utf-8"))
        booster = lgb.Booster(model_file=str(model_file))
        names = list(spec["feature_names"])
        if booster.feature_name() != names:
            raise ModelNotReadyError(
                f"{model_file} features do not match {spec_file}; "
                "retrain with `recsys train ranker`"
            )
        return cls(booster=booster, feature_names=names, spec=spec)

    def save(self, directory: Path | str) -> Path:
        """Write the model and its spec; returns the directory."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(
            str(path / MODEL_FILE), num_iteration=self.booster.best_iteration or None
        )
        spec = {**self.spec, "feature_names": self.feature_names}
        (path / SPEC_FILE).write_text(json.dumps(spec, indent=2, sort_keys=True), encoding="utf-8")
        return path

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Scores for rows of the feature matrix (columns in ``feature_names`` order)."""
        return np.asarray(self.booster.predict(x, num_threads=1), dtype=np.float64)

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """Per-feature SHAP contributions (rows x (features + 1); the last column is the bias)."""
        return np.asarray(self.booster.predict(x, pred_contrib=True, num_threads=1))

    def top_contributions(self, x: np.ndarray, top: int = 5) -> list[dict[str, float]]:
        """For each row, the ``top`` features with the largest absolute contribution."""
        contrib = self.contributions(x)[:, :-1]
        out = []
        for row in contrib:
            idx = np.argsort(-np.abs(row), kind="stable")[:top]
            out.append({self.feature_names[i]: round(float(row[i]), 6) for i in idx})
        return out
