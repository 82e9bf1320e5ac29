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
from recsys.core import compat, rules
from recsys.core.config import Settings
from training import cluster, promotion, registry
from training.ranker import dataset
from training.ranker import state as serving_state
from training.ranker.baselines import holdout_baselines
from training.ranker.distributed import DaskBoosting
from training.ranker.mlflow_model import input_example, write_mlmodel
from training.ranker.train import FitResult, train_both
from training.registry import load_text_index

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"
ABLATION_DIR = "no_text"  # inside the model artifact: the ranker_no_text ablation
WITH_TEXT_DIR = "with_text"  # the losing text variant, when the ablation is registered instead
PROMOTION_METRIC_NAME = promotion.RANKER_GATE_METRIC
PROMOTION_METRIC = rules.mlflow_key(PROMOTION_METRIC_NAME)


def train_and_log(
    settings: Settings,
    con: duckdb.DuckDBPyConnection,
    *,
    promote: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Train the ranker and its no-text ablation in one MLflow run that spans the whole job
    (opened before the frame is built); gate and promote (see ``training.promotion``); returns a
    summary."""

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
        with cluster.connect(settings) as client:  # the frame and the boosting on one cluster
            frame, generators = dataset.build_frame(
                con,
                settings,
                dataset.FIT,
                text_index=text_index,
                max_users=settings.ranker.max_train_users,
                client=client,
            )
            truth = dataset.positives(con, "val")
            recall = dataset.candidate_recall(frame, truth)
            log.info(
                "candidate recall@%d on the validation split: %.4f",
                settings.ranker.num_candidates,
                recall,
            )
            example = frame.select("user_id", "item_id").head(5)
            boosting = None if client is None else DaskBoosting(client)
            product, ablation = train_both(
                frame, generators, settings, truth, text_version, boosting
            )
        del frame  # the serving state below is fitted on every event; keep the peak down
        candidate, text_reason = choose_candidate(product, ablation, text_version, force=force)
        baselines = holdout_baselines(
            con, settings, dataset.FIT.events, candidate.holdout_users, truth
        )
        state = serving_state.build_state(settings, con, generators)
        registry.set_tags(
            {
                "text_model_version": str(candidate.model.text_model_version),
                "candidate": "with_text" if candidate is product and text_version else "no_text",
            }
        )
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
            **candidate.metrics,
            rules.metric_name(
                "candidate_recall", settings.ranker.num_candidates, prefix="val_"
            ): recall,
            **{f"no_text_{k}": v for k, v in ablation.metrics.items()},
            **{f"holdout_{k}_{GATE}": v for k, v in baselines.items()},
            "total_seconds": time.perf_counter() - started,
        }
        if text_version is not None:
            metrics.update({f"with_text_{k}": v for k, v in product.metrics.items()})
        registry.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            _log_artifacts(
                Path(tmp),
                settings,
                product,
                ablation,
                candidate,
                state,
                input_example(example["user_id"].to_list(), example["item_id"].to_list()),
                run.info.run_id,
            )
        ref = registry.register(settings, rules.RANKER_MODEL_NAME, run.info.run_id, MODEL_ARTIFACT)
    decision = _decide(settings, ref, candidate, baselines, text_reason, promote, force)
    promotion.apply(settings, ref, decision)
    summary = {
        "run_id": ref.run_id,
        "version": ref.version,
        "promoted": decision.promote,
        "decision": decision.label,
        "reason": decision.reason,
        "candidate": "with_text" if candidate is product and text_version else "no_text",
        "text_model_version": candidate.model.text_model_version,
        "trained_text_model_version": text_version,
        "baselines": baselines,
        "metrics": metrics,
        "top_features": candidate.importance.head(10).to_dicts(),
    }
    log.info(
        "ranker version %s: %s",
        ref.version,
        json.dumps(
            {k: round(v, 4) for k, v in metrics.items() if k.startswith(("val_", "no_text_val"))}
        ),
    )
    return summary


GATE = rules.metric_name("ndcg", 10)


def choose_candidate(
    product: FitResult, ablation: FitResult, text_version: str | None, *, force: bool = False
) -> tuple[FitResult, str]:
    """The ranker to register: with text features only when they beat the no-text ablation
    on the holdout users (or ``force``); why, in words."""
    key = PROMOTION_METRIC_NAME
    if text_version is None:
        return product, "no text-scorer champion, so the ranker has no text features"
    with_text, without = product.metrics[key], ablation.metrics[key]
    if force and not with_text > without:
        return product, (
            f"text features (text-scorer {text_version}) kept with --force although they do "
            f"not beat the no-text ablation on the holdout ({key} {with_text:.4f} vs "
            f"{without:.4f})"
        )
    if with_text > without:
        return product, (
            f"text features (text-scorer {text_version}) beat the no-text ablation on the "
            f"holdout ({key} {with_text:.4f} vs {without:.4f})"
        )
    return ablation, (
        f"text features (text-scorer {text_version}) did not beat the no-text ablation on the "
        f"holdout ({key} {with_text:.4f} vs {without:.4f}), so the ablation without text "
        "features is the candidate"
    )


def _decide(
    settings: Settings,
    ref: registry.ModelRef,
    candidate: FitResult,
    baselines: dict[str, float],
    text_reason: str,
    promote: bool,
    force: bool,
) -> promotion.Decision:
    if not promote:
        return promotion.Decision(False, f"registered only (--no-promote); {text_reason}")
    bars = {}
    if baselines:
        best = max(baselines, key=lambda n: baselines[n])
        bars[f"the best baseline on the holdout, {best}"] = baselines[best]
    decision = promotion.decide(
        settings,
        ref,
        PROMOTION_METRIC_NAME,
        candidate.metrics[PROMOTION_METRIC_NAME],
        bars,
        force=force,
        keep_serving=True,
    )
    return promotion.Decision(
        decision.promote, f"{text_reason}; {decision.reason}", decision.forced
    )


def _log_artifacts(
    tmp: Path,
    settings: Settings,
    product: FitResult,
    ablation: FitResult,
    candidate: FitResult,
    state: tuple[dict[str, Any], dict[str, Any]],
    example: pd.DataFrame,
    run_id: str,
) -> None:
    model_dir = candidate.model.save(tmp / MODEL_ARTIFACT)
    serving_state.save_state(model_dir / serving_state.STATE_DIR, *state)
    ablation.model.save(model_dir / ABLATION_DIR)
    if candidate is not product:  # kept for inspection; serving loads the top-level model only
        product.model.save(model_dir / WITH_TEXT_DIR)
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
    plt = compat.pyplot()
    imp = result.importance.head(top).reverse()
    fig, ax = plt.subplots(figsize=(7, max(3.0, 0.28 * imp.height)))
    ax.barh(imp["feature"].to_list(), imp["gain"].to_list(), color="#4477aa")
    ax.set_xlabel("total gain")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
