"""One training run of the history-tower text model: plan, cache, fit, save, MLflow.

Called by ``training.text.train.train_text_model`` when ``text.model = "tower"`` (default).
The saved model directory is a plain BERT (``save_pretrained``, the fine-tuned top layers
copied back into the backbone) plus ``towers.safetensors`` (item projection, user tower) and
``text_model.json`` with ``architecture = "history_tower"``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from feature_store.splits import ensure_split
from feature_store.task import apply_task
from recsys.core import compat, rules
from recsys.core.config import Settings
from recsys.core.errors import TrainingError
from training import promotion, registry
from training.text import model as tm
from training.text import tower as tw
from training.text.baselines import tfidf_metrics
from training.text.evaluate import EvalSet, build_eval_set, metrics_from_vectors
from training.text.item_vectors import save_item_vectors
from training.text.results import TextTrainResult, evaluation_table, save_and_log
from training.text.texts import item_summaries, item_texts
from training.text.tower_train import (
    HeadScale,
    TowerConfig,
    TowerExamples,
    TowerPlan,
    build_examples,
    fit_towers,
    pooled_table,
    steps_per_epoch,
    train_step,
)

log = logging.getLogger(__name__)

TOWERS_FILE = "towers.safetensors"
ARCHITECTURE = "history_tower"


def top_layer_count(settings: Settings, device: torch.device, n_layers: int) -> int:
    """Layers fine-tuned: ``text.top_layers`` on CPU; every layer on CUDA (end to end)."""
    return n_layers if device.type == "cuda" else min(settings.text.top_layers, n_layers)


def tower_config(settings: Settings, device: torch.device) -> TowerConfig:
    cfg = settings.text
    bert_items = cfg.bert_items_per_step if cfg.top_layers > 0 else 0
    if device.type == "cuda":
        bert_items = cfg.tower_batch_size  # every target item of the batch, every step
    return TowerConfig(
        epochs=cfg.tower_epochs,
        batch_size=cfg.tower_batch_size,
        bert_items=bert_items,
        lr=cfg.projection_learning_rate,
        bert_lr=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        temperature=cfg.temperature,
        label_weight=cfg.label_loss_weight,
        seed=settings.seed,
        autocast=lambda: tm.autocast(device),
    )


def tokenize_items(
    encoder: tm.TwoTowerEncoder, texts: list[str], max_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    batch = encoder.tokenizer(
        [t or " " for t in texts],
        max_length=max_tokens,
        truncation=True,
        padding="max_length",
        return_tensors="pt",
    )
    return batch["input_ids"], batch["attention_mask"]


def lower_backbone(encoder: tm.TwoTowerEncoder, quantize: bool) -> torch.nn.Module:
    """The backbone used for the frozen lower layers (int8 dynamic quantized on CPU)."""
    if quantize and encoder.device.type == "cpu":
        return tw.quantize(encoder.backbone)
    return encoder.backbone


def padded_tokens(mask: torch.Tensor, batch_size: int = 128) -> int:
    """Token positions ``tw.build_lower_cache`` computes: items sorted by length, each batch
    padded to its longest item.  The probe's one batch is padded to its longest item too, so
    scaling by item count overstated the cache 2x on MovieLens (many short texts)."""
    lengths = torch.sort(mask.sum(1).clamp(min=1), descending=True).values
    return int(
        sum(
            int(lengths[k]) * len(lengths[k : k + batch_size])
            for k in range(0, len(lengths), batch_size)
        )
    )


def plan_run(
    encoder: tm.TwoTowerEncoder,
    ids: torch.Tensor,
    mask: torch.Tensor,
    ex: TowerExamples,
    settings: Settings,
    cfg: TowerConfig,
) -> TowerPlan:
    """Measure the cache on a few items and training steps on them; extrapolate.

    Every part is timed on its second run: the first call of a kernel pays one-off set-up
    (allocations, oneDNN primitives) that made the old single-shot probe 1.7x pessimistic.
    On CPU a part's cost is its process CPU time over torch's threads, which is what it takes
    on this CPU when nothing else runs (the training is ~95% parallel: 436 CPU-s over 233 s
    wall on 2 cores): the epochs chosen for ``text.time_budget_seconds`` (``text.tower_epochs
    = 0``) then depend on the machine, not on what else happens to run on it, and the plan
    says how much longer the run will take at the load it measured.
    """
    n_layers = len(encoder.backbone.encoder.layer)
    top = top_layer_count(settings, encoder.device, n_layers)
    lower = lower_backbone(encoder, settings.text.quantize_cache)
    probe = min(len(ids), 128)
    scale = len(ids) / probe
    threads = torch.get_num_threads() if encoder.device.type == "cpu" else 0
    walls: list[float] = []
    idles: list[float] = []

    def timed_twice(fn: Callable[[], Any]) -> tuple[Any, float]:
        fn()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        out = fn()
        wall = time.perf_counter() - wall0
        idle = min(wall, (time.process_time() - cpu0) / threads) if threads else wall
        walls.append(wall)
        idles.append(idle)
        return out, idle

    cache, cache_s = timed_twice(
        lambda: tw.build_lower_cache(lower, ids[:probe], mask[:probe], n_layers - top)
    )
    item_tower = tw.ItemTower(list(encoder.backbone.encoder.layer)[n_layers - top :], encoder.dim)
    item_tower = item_tower.to(encoder.device)
    pooled, table_s = timed_twice(
        lambda: pooled_table(item_tower, cache, autocast=cfg.autocast).to(encoder.device)
    )
    # steps at the real batch size, with targets and histories mapped into the probe
    small = TowerExamples(
        np.where(ex.history >= 0, ex.history % probe, -1), ex.target % probe, ex.label, ex.kinds
    )
    towers = (
        item_tower,
        tw.UserTower(encoder.dim).to(encoder.device),
        HeadScale(cfg.temperature).to(encoder.device),
    )
    rng = np.random.default_rng(0)

    def step() -> None:
        idx = rng.choice(len(ex), size=min(cfg.batch_size, len(ex)), replace=False)
        train_step(towers, cache, pooled, small, idx, cfg, rng).backward()

    _, step_s = timed_twice(step)
    # the probe's catalog is small: add the full catalog's projection + softmax, measured
    users = torch.randn(min(cfg.batch_size, len(ex)), encoder.dim, device=encoder.device)
    full = torch.randn(len(ids), encoder.dim, device=encoder.device)
    _, softmax_s = timed_twice(
        lambda: (users @ item_tower.project(full).T).logsumexp(-1).sum().backward()
    )
    plan = TowerPlan(
        examples=len(ex),
        items=len(ids),
        epochs=max(1, cfg.epochs),
        steps_per_epoch=steps_per_epoch(len(ex), cfg.batch_size, 0),
        batch_size=cfg.batch_size,
        top_layers=top,
        total_layers=n_layers,
        device=str(encoder.device),
        cache_seconds=cache_s * padded_tokens(mask) / padded_tokens(mask[:probe]),
        step_seconds=step_s + softmax_s,
        table_seconds=table_s * scale if cfg.bert_items > 0 else 0.0,
        slowdown=max(1.0, sum(walls) / max(sum(idles), 1e-9)),
    )
    if cfg.epochs == 0:
        return plan.fit_budget(settings.text.time_budget_seconds, settings.text.max_auto_epochs)
    return plan


def validator(
    eval_set: EvalSet, item_row: dict[str, int], max_history: int
) -> Callable[..., dict[str, float]]:
    """Validation metrics (AUC, NDCG@10 on protocol v1's val part) from an item table."""
    hist_rows = [[item_row[i] for i in h if i in item_row] for h in eval_set.histories]

    def run(table: np.ndarray, user_tower: tw.UserTower, prefix: str = "val_") -> dict[str, float]:
        users = tw.user_vectors(user_tower, table, hist_rows, max_history)
        return metrics_from_vectors(eval_set, users, table, item_row, prefix)

    return run


def train_towers(
    settings: Settings,
    encoder: tm.TwoTowerEncoder,
    item_ids: list[str],
    item_text: dict[str, str],
    ex: TowerExamples,
    eval_set: EvalSet,
    *,
    progress: bool = True,
    on_plan: Callable[[TowerPlan], object] | None = None,
    on_epoch: Callable[[dict[str, float], int], object] | None = None,
) -> tuple[tw.ItemTower, tw.UserTower, list[dict[str, float]], dict[str, Any]]:
    """Plan, cache the lower layers, fit; returns the towers, history and extra meta."""
    cfg = tower_config(settings, encoder.device)
    ids, mask = tokenize_items(
        encoder, [item_text[i] for i in item_ids], settings.text.max_item_tokens
    )
    plan = plan_run(encoder, ids, mask, ex, settings, cfg)
    cfg = replace(cfg, epochs=plan.epochs)
    if plan.sampled_from:
        rows = np.random.default_rng(settings.seed).choice(len(ex), plan.examples, replace=False)
        ex = ex.subset(rows)
    log.info("%s", plan.describe())
    if on_plan is not None:
        on_plan(plan)
    n_layers = plan.total_layers
    started = time.perf_counter()
    lower = lower_backbone(encoder, settings.text.quantize_cache)
    cache = tw.build_lower_cache(lower, ids, mask, n_layers - plan.top_layers)
    log.info(
        "cached %d lower layers for %d items in %.0f s",
        n_layers - plan.top_layers,
        len(item_ids),
        time.perf_counter() - started,
    )
    top = list(encoder.backbone.encoder.layer)[n_layers - plan.top_layers :]
    item_tower = tw.ItemTower(top, encoder.dim).to(encoder.device)
    user_tower = tw.UserTower(encoder.dim).to(encoder.device)
    item_row = {i: k for k, i in enumerate(item_ids)}
    validate = validator(eval_set, item_row, settings.text.user_history_items)
    pooled = pooled_table(item_tower, cache, autocast=cfg.autocast)
    with torch.inference_mode():  # identity projections: the base model, not fine-tuned
        base_table = item_tower.project(pooled.to(encoder.device)).cpu().numpy()
        zeroshot = validate(base_table, user_tower, "zeroshot_val_")
    history, head, kept_pooled = fit_towers(
        item_tower,
        user_tower,
        cache,
        ex,
        cfg,
        validate=validate,
        progress=progress,
        on_epoch=on_epoch,
        pooled=pooled,
    )
    with torch.inference_mode():  # the vectors the kept epoch validated with: reused by scoring
        vectors = item_tower.project(kept_pooled.to(encoder.device)).float().cpu().numpy()
    # the fine-tuned top layers go back into the backbone: the saved BERT is complete
    for k, layer in enumerate(item_tower.top):
        encoder.backbone.encoder.layer[n_layers - plan.top_layers + k].load_state_dict(
            layer.state_dict()
        )
    meta = {
        "architecture": ARCHITECTURE,
        "top_layers": plan.top_layers,
        "calibration": {"scale": float(head.scale.detach()), "bias": float(head.bias.detach())},
        "plan_estimate_seconds": plan.estimate_seconds,
        "examples_trained": plan.examples,
        "zeroshot": zeroshot,
        "item_vectors": vectors,
    }
    return item_tower, user_tower, history, meta


def save_towers(path: Path, item_tower: tw.ItemTower, user_tower: tw.UserTower) -> None:
    tensors = {
        "item_proj.weight": item_tower.proj.weight.detach().cpu().contiguous(),
        "item_proj.bias": item_tower.proj.bias.detach().cpu().contiguous(),
        "user_proj.weight": user_tower.proj.weight.detach().cpu().contiguous(),
        "user_proj.bias": user_tower.proj.bias.detach().cpu().contiguous(),
    }
    save_file(tensors, str(path / TOWERS_FILE))


def train_tower_model(
    settings: Settings,
    con: Any,
    *,
    max_pairs: int | None = None,
    progress: bool = True,
    promote: bool = True,
    force: bool = False,
    on_plan: Callable[[TowerPlan], object] | None = None,
) -> Any:
    """The history-tower run: data, plan, fit, save, MLflow run, register, promote."""
    mlflow = compat.mlflow()
    device = tm.resolve_device(settings.device)
    base = tm.resolve_base_model(settings)
    tm.seed_everything(settings.seed)
    apply_task(con, settings.task)
    ensure_split(con, settings.split)
    item_text = item_texts(con)
    if not item_text:
        raise TrainingError("the store has no items; run `recsys ingest` first")
    item_ids = sorted(item_text)
    item_row = {i: k for k, i in enumerate(item_ids)}
    ex = build_examples(con, item_row, settings.text.user_history_items)
    cap = max_pairs if max_pairs is not None else (settings.text.max_pairs or None)
    if cap is not None and len(ex) > cap:
        ex = ex.subset(np.random.default_rng(settings.seed).choice(len(ex), cap, replace=False))
    eval_set = build_eval_set(con, settings, summaries=item_summaries(con))
    fingerprint = registry.data_fingerprint(con)
    encoder = tm.load_encoder(base, device)
    meta = tm.read_meta(base, settings)
    meta.update(base_model=str(base), temperature=settings.text.temperature, pooling="mean")
    with registry.start_run(
        settings,
        "text-scorer",
        data_fingerprint=fingerprint,
        tags={"model": registry.TEXT_MODEL_NAME},
    ) as run:
        registry.log_store_input(settings, fingerprint, "training", registry.store_counts(con))
        mlflow.log_params(
            {
                "resolved_device": str(device),
                "base_model_dir": str(base),
                "architecture": ARCHITECTURE,
                "pairs": len(ex),
                **{f"pairs_{k}": v for k, v in ex.kinds.items()},
                "val_users_sampled": len(eval_set),
            }
        )
        item_tower, user_tower, history, extra = train_towers(
            settings,
            encoder,
            item_ids,
            item_text,
            ex,
            eval_set,
            progress=progress,
            on_plan=on_plan,
            on_epoch=lambda row, epoch: mlflow.log_metrics(rules.mlflow_metrics(row), step=epoch),
        )
        baselines = {**extra.pop("zeroshot"), **tfidf_metrics(eval_set, item_text)}
        item_vectors = extra.pop("item_vectors")
        best = max(history, key=lambda r: r["val_ndcg@10"])
        metrics = {
            **baselines,
            **{k: best[k] for k in ("val_auc", "val_ndcg@10", "val_users")},
            "best_epoch": best["epoch"],
        }
        mlflow.log_metrics(rules.mlflow_metrics(metrics), step=int(history[-1]["epoch"]))
        mlflow.log_table(evaluation_table(metrics), artifact_file="evaluation.json")
        meta.update(extra, best_epoch=int(best["epoch"]), data_fingerprint=fingerprint)
        model_dir = settings.artifacts_dir / "text-scorer" / run.info.run_id
        model_dir.mkdir(parents=True, exist_ok=True)
        save_towers(model_dir, item_tower, user_tower)
        save_item_vectors(model_dir, item_ids, [item_text[i] for i in item_ids], item_vectors)
        model_dir = save_and_log(encoder, settings, run.info.run_id, meta)
        run_id = run.info.run_id
    ref = registry.register(settings, registry.TEXT_MODEL_NAME, run_id, "model")
    decision = promotion.gate_text_model(settings, ref, metrics, promote=promote, force=force)
    return TextTrainResult(
        run_id, ref.version, metrics, decision.promote, model_dir, history, decision.reason
    )
