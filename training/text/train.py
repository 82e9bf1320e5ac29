"""Fine-tune the two-tower text scorer end to end; one MLflow run per training.

Recipe:
1. protocol v1 split (materialized if missing), item texts, point-in-time training pairs from
   ``events_fit_v1``, the seeded validation set;
2. evaluate the baselines on the validation set: zero-shot base encoder and TF-IDF cosine;
3. fine-tune (AdamW, linear warmup and decay, bf16 autocast on CUDA, gradient accumulation),
   evaluating AUC / NDCG@10 after every epoch and keeping the best epoch (early stopping);
4. save (safetensors), log the model directory, metrics and evaluation table, register as
   ``text-scorer`` and promote to ``champion`` only when it beats the current champion's val_auc.

Loss: in-batch softmax over the batch's items for every positive pair (temperature
``text.temperature``) plus ``text.label_loss_weight`` x binary cross-entropy of a learned affine
map of the cosine against the explicit labels (positives, low ratings, unclicked impressions,
sampled negatives).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from typing import Any

import duckdb
import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from feature_store.splits import ensure_split
from feature_store.task import apply_task
from recsys.core import compat, rules
from recsys.core.config import Settings
from recsys.core.errors import ConfigError, TrainingError
from training import promotion, registry
from training.text import model as tm
from training.text.baselines import tfidf_metrics
from training.text.evaluate import EvalSet, build_eval_set, evaluate_encoder
from training.text.pairs import PairSet, build_training_pairs
from training.text.results import TextTrainResult, evaluation_table, save_and_log
from training.text.texts import item_summaries, item_texts
from training.text.tower_run import train_tower_model

log = logging.getLogger(__name__)


class LabelHead(nn.Module):
    """``sigmoid(scale * cosine + bias)``: a calibrated probability for the explicit labels."""

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0 / temperature))
        self.bias = nn.Parameter(torch.tensor(-0.5 / temperature))

    def forward(self, cosine: torch.Tensor) -> torch.Tensor:
        return cosine * self.scale + self.bias


def pair_loss(
    user_vecs: torch.Tensor,
    item_vecs: torch.Tensor,
    labels: torch.Tensor,
    item_keys: list[str],
    head: LabelHead,
    temperature: float,
    label_weight: float,
) -> torch.Tensor:
    """In-batch softmax for positive rows plus weighted BCE on all labelled pairs."""
    cosine = (user_vecs * item_vecs).sum(-1)
    loss = label_weight * nn.functional.binary_cross_entropy_with_logits(head(cosine), labels)
    pos = torch.nonzero(labels > 0).flatten()
    if len(pos):
        logits = user_vecs[pos] @ item_vecs.T / temperature
        keys = np.array(item_keys, dtype=object)
        # The same item elsewhere in the batch is not a negative for this row.
        dup = torch.from_numpy(keys[pos.cpu().numpy()][:, None] == keys[None, :]).to(logits.device)
        dup[torch.arange(len(pos)), pos] = False
        logits = logits.masked_fill(dup, float("-inf"))
        loss = loss + nn.functional.cross_entropy(logits, pos)
    return loss


def _batches(pairs: PairSet, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches that keep pairs sharing a user text together (each text encoded once)."""
    groups: dict[str, list[int]] = {}
    for k, text in enumerate(pairs.user_texts):
        groups.setdefault(f"{pairs.user_ids[k]}\x00{text}", []).append(k)
    order = [groups[key] for key in rng.permutation(sorted(groups))]
    flat = np.array([k for g in order for k in g], dtype=np.int64)
    return [flat[s : s + batch_size] for s in range(0, len(flat), batch_size)]


def _train_step(
    encoder: tm.TwoTowerEncoder,
    head: LabelHead,
    pairs: PairSet,
    idx: np.ndarray,
    item_text: dict[str, str],
    meta: dict[str, Any],
    settings: Settings,
) -> torch.Tensor:
    cfg = settings.text
    texts = [pairs.user_texts[k] for k in idx]
    uniq_users = list(dict.fromkeys(texts))
    item_keys = [pairs.item_ids[k] for k in idx]
    uniq_items = list(dict.fromkeys(item_keys))
    with tm.autocast(encoder.device):
        u = encoder.embed(uniq_users, int(meta["max_user_tokens"]))
        v = encoder.embed([item_text.get(i, i) for i in uniq_items], int(meta["max_item_tokens"]))
    u = u[[uniq_users.index(t) for t in texts]]
    v = v[[uniq_items.index(i) for i in item_keys]]
    labels = torch.from_numpy(pairs.labels[idx]).to(u.device)
    return pair_loss(u, v, labels, item_keys, head, cfg.temperature, cfg.label_loss_weight)


def _optimize(
    encoder: tm.TwoTowerEncoder,
    head: LabelHead,
    pairs: PairSet,
    idx: np.ndarray,
    item_text: dict[str, str],
    meta: dict[str, Any],
    settings: Settings,
    opt: tuple[Any, Any, list[nn.Parameter]],
    step: int,
    n_steps: int,
) -> float:
    """One batch: loss, backward, and an optimizer step every ``grad_accum_steps`` batches."""
    optimizer, scheduler, params = opt
    accum = settings.text.grad_accum_steps
    encoder.train()
    loss = _train_step(encoder, head, pairs, idx, item_text, meta, settings)
    if not torch.isfinite(loss):
        raise TrainingError(f"training diverged (loss {loss.item()}); lower text.learning_rate")
    (loss / accum).backward()
    if (step + 1) % accum == 0 or step + 1 == n_steps:
        nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def fit(
    encoder: tm.TwoTowerEncoder,
    pairs: PairSet,
    eval_set: EvalSet,
    item_text: dict[str, str],
    meta: dict[str, Any],
    settings: Settings,
    *,
    progress: bool = True,
    on_epoch: Any = None,
) -> list[dict[str, float]]:
    """Fine-tune in place; leaves the best epoch's weights loaded.  Returns per-epoch metrics."""
    get_linear_schedule_with_warmup = compat.transformers().get_linear_schedule_with_warmup
    cfg = settings.text
    rng = np.random.default_rng(settings.seed)
    head = LabelHead(cfg.temperature).to(encoder.device)
    params = [p for p in encoder.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    per_epoch = math.ceil(math.ceil(len(pairs) / cfg.batch_size) / cfg.grad_accum_steps)
    total = max(1, per_epoch * cfg.epochs)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    opt = (optimizer, scheduler, params)
    history: list[dict[str, float]] = []
    best_auc, best_state, bad_epochs = -math.inf, None, 0
    for epoch in range(1, cfg.epochs + 1):
        started = time.perf_counter()
        batches = _batches(pairs, cfg.batch_size, rng)
        desc = f"epoch {epoch}"
        losses = [
            _optimize(encoder, head, pairs, idx, item_text, meta, settings, opt, step, len(batches))
            for step, idx in enumerate(tqdm(batches, desc=desc, disable=not progress))
        ]
        seconds = time.perf_counter() - started
        row = {
            "epoch": float(epoch),
            "train_loss": float(np.mean(losses)),
            "train_pairs_per_s": len(pairs) / seconds,
            "epoch_seconds": seconds,
        }
        row.update(
            evaluate_encoder(encoder, eval_set, item_text, meta, cfg.score_batch_size, progress)
        )
        history.append(row)
        log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in row.items()})
        if on_epoch is not None:
            on_epoch(row, epoch)
        if row["val_auc"] > best_auc:
            best_auc, bad_epochs = row["val_auc"], 0
            best_state = copy.deepcopy(
                {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
            )
            meta["calibration"] = {
                "scale": float(head.scale.detach()),
                "bias": float(head.bias.detach()),
            }
            meta["best_epoch"] = epoch
        else:
            bad_epochs += 1
            if bad_epochs > cfg.early_stopping_patience:
                log.info("early stopping after epoch %d (best val_auc %.4f)", epoch, best_auc)
                break
    if best_state is not None:
        encoder.load_state_dict(best_state)
    return history


def train_text_model(
    settings: Settings,
    con: duckdb.DuckDBPyConnection,
    *,
    max_pairs: int | None = None,
    progress: bool = True,
    promote: bool = True,
    force: bool = False,
    on_plan: Any = None,
) -> TextTrainResult:
    """Train, evaluate, log, register and (when better) promote the text scorer."""
    mlflow = compat.mlflow()
    if settings.text.model == "tower":
        return train_tower_model(
            settings, con, progress=progress, promote=promote, force=force, on_plan=on_plan
        )
    if settings.text.model != "pairs":
        raise ConfigError(
            f"unknown text.model {settings.text.model!r}; choose 'tower' (default) or 'pairs'"
        )

    device = tm.resolve_device(settings.device)
    base = tm.resolve_base_model(settings)
    tm.seed_everything(settings.seed)
    item_text, pairs, eval_set, fingerprint = _prepare_data(settings, con, max_pairs)
    encoder = tm.load_encoder(base, device)
    meta = tm.read_meta(base, settings)
    meta.update(base_model=str(base), temperature=settings.text.temperature, pooling="mean")
    log.info(
        "training text model from %s on %s: %d pairs, %d validation users",
        base,
        device,
        len(pairs),
        len(eval_set),
    )
    with registry.start_run(
        settings,
        rules.TEXT_MODEL_NAME,
        data_fingerprint=fingerprint,
        tags={"model": rules.TEXT_MODEL_NAME},
    ) as run:
        registry.log_store_input(settings, fingerprint, "training", registry.store_counts(con))
        mlflow.log_params(
            {
                "resolved_device": str(device),
                "base_model_dir": str(base),
                "pairs": len(pairs),
                **{f"pairs_{k}": v for k, v in pairs.counts().items()},
                "val_users_sampled": len(eval_set),
            }
        )
        baselines = evaluate_encoder(
            encoder,
            eval_set,
            item_text,
            meta,
            settings.text.score_batch_size,
            progress,
            prefix="zeroshot_val_",
        )
        baselines.update(tfidf_metrics(eval_set, item_text))
        mlflow.log_metrics(rules.mlflow_metrics(baselines))
        log.info("baselines: %s", {k: round(v, 4) for k, v in baselines.items()})
        if settings.text.use_lora:
            tm.apply_lora(encoder, settings.text.lora_rank)
        history = fit(
            encoder,
            pairs,
            eval_set,
            item_text,
            meta,
            settings,
            progress=progress,
            on_epoch=lambda row, epoch: mlflow.log_metrics(rules.mlflow_metrics(row), step=epoch),
        )
        tm.merge_lora(encoder)
        best = max(history, key=lambda r: r["val_auc"])
        metrics = {
            **baselines,
            **{k: best[k] for k in ("val_auc", "val_ndcg@10", "val_users")},
            "best_epoch": best["epoch"],
        }
        # At the last epoch's step, so the run's latest value is the kept (best) epoch's, not
        # the last epoch's curve point.
        mlflow.log_metrics(rules.mlflow_metrics(metrics), step=int(history[-1]["epoch"]))
        mlflow.log_table(evaluation_table(metrics), artifact_file="evaluation.json")
        model_dir = save_and_log(
            encoder, settings, run.info.run_id, {**meta, "data_fingerprint": fingerprint}
        )
        run_id = run.info.run_id
    ref = registry.register(settings, rules.TEXT_MODEL_NAME, run_id, "model")
    decision = promotion.gate_text_model(settings, ref, metrics, promote=promote, force=force)
    return TextTrainResult(
        run_id, ref.version, metrics, decision.promote, model_dir, history, decision.reason
    )


def _prepare_data(
    settings: Settings, con: duckdb.DuckDBPyConnection, max_pairs: int | None
) -> tuple[dict[str, str], PairSet, EvalSet, str]:
    """Split (if missing), item texts, training pairs, validation set and data fingerprint."""
    apply_task(con, settings.task)
    ensure_split(con, settings.split)
    item_text = item_texts(con)
    if not item_text:
        raise TrainingError("the store has no items; run `recsys ingest` first")
    summaries = item_summaries(con)
    pairs = build_training_pairs(con, settings, max_pairs=max_pairs, summaries=summaries)
    eval_set = build_eval_set(con, settings, summaries=summaries)
    return item_text, pairs, eval_set, registry.data_fingerprint(con)
