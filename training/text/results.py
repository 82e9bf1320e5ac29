"""What a text-model training run produces and how both recipes (``train.py``'s pairs model and
``tower_run.py``'s history tower) save and log it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recsys.core import compat, rules
from recsys.core.config import Settings
from training.text import model as tm


@dataclass(frozen=True)
class TextTrainResult:
    """What a training run produced."""

    run_id: str
    model_version: str
    metrics: dict[str, float]
    promoted: bool
    model_dir: Path
    history: list[dict[str, float]] = field(default_factory=list)
    promotion_reason: str = ""  # why it was or was not promoted (training.promotion)


def save_and_log(
    encoder: tm.TwoTowerEncoder, settings: Settings, run_id: str, meta: dict[str, Any]
) -> Path:
    """Save the model (safetensors) with its settings and log the directory as ``model``."""
    model_dir = tm.save_model(
        encoder, settings.artifacts_dir / rules.TEXT_MODEL_NAME / run_id, meta
    )
    (model_dir / "settings.json").write_text(settings.to_json(), encoding="utf-8")
    compat.mlflow().log_artifacts(str(model_dir), "model")
    return model_dir


def evaluation_table(metrics: dict[str, float]) -> dict[str, list[Any]]:
    """The run's ``evaluation.json`` table: fine-tuned vs zero-shot vs TF-IDF on validation."""
    rows = [
        ("fine-tuned", "val_"),
        ("zero-shot base model", "zeroshot_val_"),
        ("TF-IDF cosine", "tfidf_val_"),
    ]
    return {
        "model": [name for name, _ in rows],
        "auc": [metrics[f"{p}auc"] for _, p in rows],
        "ndcg@10": [metrics[f"{p}ndcg@10"] for _, p in rows],
        "users": [metrics[f"{p}users"] for _, p in rows],
    }
