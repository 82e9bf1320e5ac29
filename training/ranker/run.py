"""``recsys train ranker`` end to end: build the fit frame, train, log to MLflow, register."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from feature_store.splits import ensure_split
from feature_store.task import apply_task
from recsys.core import rules
from recsys.core.config import Settings
from training import registry
from training.ranker import dataset
from training.ranker.mlflow_model import input_example, write_mlmodel
from training.ranker.train import FitResult, train_both
from training.registry import load_text_index

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"
ABLATION_DIR = "no_text"  # inside the model artifact: the ranker_no_text ablation
PROMOTION_METRIC = rules.mlflow_key(rules.metric_name("ndcg", 10, prefix="val_"))


def train_and_log(
    settings: Settings, con: duckdb.DuckDBPyConnection, *, promote: bool = True
) -> dict[str, Any]:
    """Train the ranker and its no-text ablation in one MLflow run that spans the whole job
    (opened before the frame is built); returns a summary."""

    fingerprint = registry.data_fingerprint(con)
    with registry.start_run(
        settings,
        "train-ranker",
        data_fingerprint=fingerprint,
        tags={"model": rules.RANKER_MODEL_NAME},
    ) as run:
        started = time.perf_counter()
        registry.log_store_input(settings, fingerprint, "training", registry.store_counts(con))
        apply_task(con, settings.task)
        ensure_split(con, settings.split)
        text_index = load_text_index(settings, con, scope=dataset.FIT.text_scope)
        text_version = text_index.model_version if text_index is not None else None
        frame, generators = dataset.build_frame(con, settings, dataset.FIT, text_index=text_index)
        truth = dataset.positives(con, "val")
        recall = dataset.candidate_recall(frame, truth)
        log.info(
            "candidate recall@%d on the validation split: %.4f",
            settings.ranker.num_candidates,
            recall,
        )
        product, ablation = train_both(frame, generators, settings, truth, text_version)
        registry.set_tags({"text_model_version": str(text_version)})
        registry.log_params(
            {
                "lgb." + k: str(v)
                for k, v in product.model.booster.params.items()
                if k not in {"eval_at"}
            }
            | {"generators": ",".join(generators), "text_model_version": str(text_version)}
        )
        for prefix, result in (("", product), ("no_text_", ablation)):
            for key, values in result.curves.items():
                registry.log_metric_history(prefix + key, values)
        metrics = {
            **product.metrics,
            rules.metric_name(
                "candidate_recall", settings.ranker.num_candidates, prefix="val_"
            ): recall,
            **{f"no_text_{k}": v for k, v in ablation.metrics.items()},
            "total_seconds": time.perf_counter() - started,
        }
        registry.log_metrics(metrics)
        example = frame.select("user_id", "item_id").head(5)
        with tempfile.TemporaryDirectory() as tmp:
            _log_artifacts(
                Path(tmp),
                settings,
                product,
                ablation,
                input_example(example["user_id"].to_list(), example["item_id"].to_list()),
                run.info.run_id,
            )
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
    example: pd.DataFrame,
    run_id: str,
) -> None:
    model_dir = product.model.save(tmp / MODEL_ARTIFACT)
    ablation.model.save(model_dir / ABLATION_DIR)
    (model_dir / "settings.json").write_text(settings.to_json(), encoding="utf-8")
    write_mlmodel(model_dir, example, run_id=run_id)
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
