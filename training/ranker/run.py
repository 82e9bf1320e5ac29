"""``recsys train ranker`` end to end: build the fit frame, train, log to MLflow, register."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb

from feature_store.splits import ensure_split
from feature_store.task import apply_task
from recsys.core import rules
from recsys.core.config import Settings
from training import registry
from training.ranker import dataset
from training.ranker import state as serving_state
from training.ranker.train import FitResult, train_both
from training.registry import load_text_index

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"
ABLATION_DIR = "no_text"  # inside the model artifact: the ranker_no_text ablation
PROMOTION_METRIC = rules.mlflow_key(rules.metric_name("ndcg", 10, prefix="val_"))


def train_and_log(
    settings: Settings, con: duckdb.DuckDBPyConnection, *, promote: bool = True
) -> dict[str, Any]:
    """Train the ranker and its no-text ablation; one MLflow run; returns a summary."""

    started = time.perf_counter()
    apply_task(con, settings.task)
    ensure_split(con, settings.split)
    text_index = load_text_index(settings, con, scope=dataset.FIT.text_scope)
    text_version = text_index.model_version if text_index is not None else None
    frame, generators = dataset.build_frame(
        con,
        settings,
        dataset.FIT,
        text_index=text_index,
        max_users=settings.ranker.max_train_users,
    )
    truth = dataset.positives(con, "val")
    recall = dataset.candidate_recall(frame, truth)
    log.info(
        "candidate recall@%d on the validation split: %.4f", settings.ranker.num_candidates, recall
    )
    product, ablation = train_both(frame, generators, settings, truth, text_version)
    del frame  # the serving state below is fitted on every event; keep the peak down
    state = serving_state.build_state(settings, con, generators)
    fingerprint = registry.data_fingerprint(con, dataset.FIT.events)
    with registry.start_run(
        settings,
        "train-ranker",
        data_fingerprint=fingerprint,
        tags={"model": rules.RANKER_MODEL_NAME, "text_model_version": str(text_version)},
    ) as run:
        registry.log_params(
            {
                "lgb." + k: str(v)
                for k, v in product.model.booster.params.items()
                if k not in {"eval_at"}
            }
            | {"generators": ",".join(generators), "text_model_version": str(text_version)}
        )
        metrics = {
            **product.metrics,
            rules.metric_name(
                "candidate_recall", settings.ranker.num_candidates, prefix="val_"
            ): recall,
            **{f"no_text_{k}": v for k, v in ablation.metrics.items()},
            "total_seconds": time.perf_counter() - started,
        }
        registry.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            _log_artifacts(Path(tmp), settings, product, ablation, state)
        ref = registry.register(settings, rules.RANKER_MODEL_NAME, run.info.run_id, MODEL_ARTIFACT)
    promoted = registry.promote_if_better(settings, ref, PROMOTION_METRIC) if promote else False
    summary = {
        "run_id": ref.run_id,
        "version": ref.version,
        "promoted": promoted,
        "text_model_version": text_version,
        "metrics": metrics,
        "top_features": product.importance.head(10).to_dicts(),
    }
    log.info(
        "ranker version %s: %s",
        ref.version,
        json.dumps(
            {k: round(v, 4) for k, v in metrics.items() if k.startswith(("val_", "no_text_val"))}
        ),
    )
    return summary


def _log_artifacts(
    tmp: Path,
    settings: Settings,
    product: FitResult,
    ablation: FitResult,
    state: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    model_dir = product.model.save(tmp / MODEL_ARTIFACT)
    serving_state.save_state(model_dir / serving_state.STATE_DIR, *state)
    ablation.model.save(model_dir / ABLATION_DIR)
    (model_dir / "settings.json").write_text(settings.to_json(), encoding="utf-8")
    registry.log_artifacts(model_dir, MODEL_ARTIFACT)
    for name, result in (("ranker", product), ("ranker_no_text", ablation)):
        table = tmp / f"{name}_importance.csv"
        result.importance.write_csv(table)
        registry.log_artifact(table, "importance")
        png = tmp / f"{name}_importance.png"
        _importance_plot(result, png, title=f"{name}: gain importance")
        registry.log_artifact(png, "importance")


def _importance_plot(result: FitResult, path: Path, title: str, top: int = 25) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    imp = result.importance.head(top).reverse()
    fig, ax = plt.subplots(figsize=(7, max(3.0, 0.28 * imp.height)))
    ax.barh(imp["feature"].to_list(), imp["gain"].to_list(), color="#4477aa")
    ax.set_xlabel("total gain")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
