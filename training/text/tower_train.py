"""Training data, plan/time estimate and the fit loop of the history-tower text model.

Examples come from ``events_fit_v1`` (protocol v1's fit part), point in time: every positive
(the project's one positive rule) and every explicit negative (low rating, unclicked impression)
that has at least one liked item before it, with the user's last ``history`` liked items strictly
before the event.  See ``training.text.tower`` for the model.
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import duckdb
import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from feature_store.task import stored_task
from recsys.core.errors import TrainingError
from training.text.pairs import FIT_RELATION, _labelled_events
from training.text.texts import user_histories
from training.text.tower import ItemTower, LowerCache, UserTower, history_means

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TowerExamples:
    """Parallel arrays: history rows ``[n, H]`` (-1 padding), target rows, labels (1/0)."""

    history: np.ndarray
    target: np.ndarray
    label: np.ndarray
    kinds: dict[str, int]

    def __len__(self) -> int:
        return int(len(self.target))

    def subset(self, rows: np.ndarray) -> TowerExamples:
        """A seeded cap (``--max-pairs``): the chosen rows, in their original order."""
        keep = np.sort(rows)
        label = self.label[keep]
        if not (label > 0).any():
            raise TrainingError("the capped examples hold no positive; raise --max-pairs")
        kinds = {"positive": int((label > 0).sum()), "negative": int((label <= 0).sum())}
        return TowerExamples(self.history[keep], self.target[keep], label, kinds)


def build_examples(
    con: duckdb.DuckDBPyConnection,
    item_row: dict[str, int],
    max_history: int,
    relation: str = FIT_RELATION,
) -> TowerExamples:
    """Every labelled event of ``relation`` with a non-empty liked history before it, except
    events on an item the user already liked (a purchase after its click, a second click):
    the text model learns which *new* items match a user's interests (what validation and
    serving ask of it: items already seen are never candidates); repeat behaviour is the
    ranker's, through its behavioural features.  MovieLens has no repeats (one rating per
    item): protocol v1's 42,054 examples are unchanged."""
    # each user's liked items as (times, rows), in time order: the history before an event is
    # a prefix found by bisection (a scan per event was quadratic in the user's history)
    liked: dict[str, tuple[list[Any], list[int], dict[int, Any]]] = {}
    for user_id, hist in user_histories(con, relation).items():
        kept = [(t, item_row[i]) for t, i in hist.liked if i in item_row]
        first: dict[int, Any] = {}
        for t, row in kept:
            first.setdefault(row, t)
        liked[user_id] = ([t for t, _ in kept], [row for _, row in kept], first)
    rows_h: list[list[int]] = []
    targets, labels, kinds = [], [], {"positive": 0, "low_rating": 0, "not_clicked": 0}
    repeats = 0
    for r in _labelled_events(con, relation):
        user = liked.get(r.user_id)
        if r.item_id not in item_row or user is None:
            continue
        times, rows, first = user
        end = bisect.bisect_left(times, r.ts)  # liked strictly before the event
        if not end:
            continue
        target = item_row[r.item_id]
        if target in first and first[target] < r.ts:
            repeats += 1
            continue
        rows_h.append(rows[max(0, end - max_history) : end])
        targets.append(target)
        labels.append(1.0 if r.kind == "positive" else 0.0)
        kinds[r.kind] = kinds.get(r.kind, 0) + 1
    if not kinds["positive"]:
        raise TrainingError(
            f"no positive interactions with prior history in {relation}; the text model needs "
            f"users with at least two positives ({stored_task(con).describe()})"
        )
    history = np.full((len(rows_h), max(1, max_history)), -1, dtype=np.int64)
    for k, h in enumerate(rows_h):
        history[k, : len(h)] = h
    log.info(
        "text training examples from %s: %d (%s; %d events on an item already liked left out)",
        relation,
        len(targets),
        kinds,
        repeats,
    )
    return TowerExamples(
        history, np.asarray(targets, np.int64), np.asarray(labels, np.float32), kinds
    )


# the fewest steps a budget-fitted run takes, however large the log (TowerPlan.fit_budget)
MIN_BUDGET_STEPS = 50


@dataclass(frozen=True)
class TowerPlan:
    """What one training run will do, with a time estimate from measured steps."""

    examples: int
    items: int
    epochs: int
    steps_per_epoch: int
    batch_size: int
    top_layers: int
    total_layers: int
    device: str
    cache_seconds: float = 0.0
    step_seconds: float = 0.0
    table_seconds: float = 0.0
    # wall / idle time of the probe: how much longer than ``estimate_seconds`` the run takes
    # at the load measured while planning (1.0 on a quiet machine)
    slowdown: float = 1.0
    # set when the epochs were chosen to fit a time budget (``text.tower_epochs = 0``)
    budget_seconds: float | None = None
    max_epochs: int = 0
    # set when one epoch over every example did not fit the budget: ``examples`` is a seeded
    # sample of this many
    sampled_from: int = 0

    @property
    def epoch_seconds(self) -> float:
        """One epoch: the steps plus one item-table refresh."""
        return self.steps_per_epoch * self.step_seconds + self.table_seconds

    @property
    def fixed_seconds(self) -> float:
        """What does not grow with epochs: the lower-layer cache and the first item table."""
        return self.cache_seconds + self.table_seconds

    @property
    def estimate_seconds(self) -> float:
        return self.fixed_seconds + self.epochs * self.epoch_seconds

    def fit_budget(self, budget_seconds: float, max_epochs: int) -> TowerPlan:
        """The plan with as many epochs as fit ``budget_seconds`` (at least 1, at most
        ``max_epochs``).  When not even one epoch over every example fits (a large log), one
        epoch over a seeded sample of the examples that fits, at least ``MIN_BUDGET_STEPS``
        steps: ``examples`` then says how many the run trains on."""
        room = (budget_seconds - self.fixed_seconds) / max(self.epoch_seconds, 1e-9)
        epochs = int(min(max_epochs, max(1, math.floor(room))))
        plan = replace(self, epochs=epochs, budget_seconds=budget_seconds, max_epochs=max_epochs)
        if room >= 1 or self.steps_per_epoch <= MIN_BUDGET_STEPS:
            return plan
        left = budget_seconds - self.fixed_seconds - self.table_seconds
        steps = max(MIN_BUDGET_STEPS, math.floor(left / max(self.step_seconds, 1e-9)))
        if steps >= self.steps_per_epoch:
            return plan
        return replace(
            plan,
            steps_per_epoch=steps,
            examples=steps * self.batch_size,
            sampled_from=self.examples,
        )

    def describe(self) -> str:
        trained = (
            f"top {self.top_layers} of {self.total_layers} BERT layers + pooling projection "
            "+ user tower"
        )
        chosen = (
            f" (auto: the most that fit the {self.budget_seconds:.0f} s budget, at most "
            f"{self.max_epochs}; text.time_budget_seconds / text.tower_epochs)"
            if self.budget_seconds is not None
            else ""
        )
        scope = (
            f"a seeded sample of {self.sampled_from:,} examples: one epoch over all of them "
            "does not fit the budget"
            if self.sampled_from
            else "every fit-period positive and explicit negative with history"
        )
        return (
            f"plan: {self.examples:,} examples ({scope}), {self.items:,} items, "
            f"{self.epochs} epoch(s){chosen} x "
            f"{self.steps_per_epoch} steps of {self.batch_size} on {self.device}; trained: "
            f"{trained}; lower {self.total_layers - self.top_layers} layers cached once.\n"
            f"estimate: {self.estimate_seconds:.0f} s of caching and training on this "
            f"{self.device.upper()} when idle (cache {self.cache_seconds:.0f} s, "
            f"{self.step_seconds:.2f} s/step, item table {self.table_seconds:.0f} s, "
            f"{self.epoch_seconds:.0f} s/epoch; measured on a probe after a warm-up)"
            + (
                f"; the machine is busy ({self.slowdown:.1f}x slower while planning): "
                f"expect about {self.estimate_seconds * self.slowdown:.0f} s"
                if self.slowdown >= 1.3
                else ""
            )
        )


class HeadScale(nn.Module):
    """``scale * cosine + bias``: logits of the explicit labels (calibrated probability)."""

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0 / temperature))
        self.bias = nn.Parameter(torch.tensor(-0.5 / temperature))

    def forward(self, cosine: torch.Tensor) -> torch.Tensor:
        return cosine * self.scale + self.bias


def pooled_table(
    tower: ItemTower, cache: LowerCache, batch_size: int = 256, autocast: Callable | None = None
) -> torch.Tensor:
    """Every item's pooled top-layer output with the current layers (no gradients)."""
    was = tower.training
    tower.eval()
    out = []
    device = tower.proj.weight.device
    with torch.inference_mode():
        for start in range(0, len(cache), batch_size):
            hidden, mask = cache.batch(np.arange(start, min(len(cache), start + batch_size)))
            hidden, mask = hidden.to(device), mask.to(device)
            with autocast() if autocast else contextlib.nullcontext():
                out.append(tower.pooled(hidden, mask).float().cpu())
    tower.train(was)
    return torch.cat(out) if out else torch.zeros((0, tower.proj.in_features))


def tower_loss(
    users: torch.Tensor,
    catalog: torch.Tensor,
    target_rows: np.ndarray,
    labels: torch.Tensor,
    head: HeadScale,
    temperature: float,
    label_weight: float,
) -> torch.Tensor:
    """Softmax over the whole catalog for the positive rows plus ``label_weight`` x BCE of
    ``head(cosine)`` against the labels (positives and explicit negatives)."""
    rows = torch.as_tensor(target_rows, device=catalog.device)
    cosine = (users * catalog[rows]).sum(-1)
    loss = label_weight * nn.functional.binary_cross_entropy_with_logits(head(cosine), labels)
    pos = torch.nonzero(labels > 0).flatten()
    if len(pos):
        logits = users[pos] @ catalog.T / temperature
        loss = loss + nn.functional.cross_entropy(logits, rows[pos])
    return loss


def train_step(
    towers: tuple[ItemTower, UserTower, HeadScale],
    cache: LowerCache,
    pooled: torch.Tensor,
    ex: TowerExamples,
    idx: np.ndarray,
    cfg: TowerConfig,
    rng: np.random.Generator,
) -> torch.Tensor:
    """Loss of one batch.  Up to ``cfg.bert_items`` distinct target items of the batch run
    through the top BERT layers with gradients (each once) and replace their stale rows of the
    pooled table; the projection sees the whole catalog every step."""
    item_tower, user_tower, head = towers
    rows = ex.target[idx]
    table = pooled
    if cfg.bert_items > 0:
        uniq = np.unique(rows)
        if len(uniq) > cfg.bert_items:
            uniq = np.sort(rng.choice(uniq, size=cfg.bert_items, replace=False))
        hidden, mask = cache.batch(uniq)
        with cfg.autocast():
            fresh = item_tower.pooled(hidden.to(pooled.device), mask.to(pooled.device)).float()
        table = pooled.index_put((torch.as_tensor(uniq, device=pooled.device),), fresh)
    catalog = item_tower.project(table)
    history_table = item_tower.project(pooled).detach()  # history side: stop-gradient
    users = user_tower(history_means(history_table, ex.history[idx]))
    labels = torch.as_tensor(ex.label[idx], device=users.device)
    return tower_loss(users, catalog, rows, labels, head, cfg.temperature, cfg.label_weight)


@dataclass(frozen=True)
class TowerConfig:
    """Training knobs (from ``settings.text``)."""

    epochs: int
    batch_size: int
    bert_items: int
    lr: float
    bert_lr: float
    weight_decay: float
    temperature: float
    label_weight: float
    seed: int
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext


def batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    perm = rng.permutation(n)
    return [perm[s : s + batch_size] for s in range(0, n, batch_size)]


def steps_per_epoch(n_examples: int, batch_size: int, max_steps: int) -> int:
    steps = math.ceil(n_examples / batch_size)
    return min(steps, max_steps) if max_steps > 0 else steps


def parameter_groups(
    item_tower: ItemTower, user_tower: UserTower, head: HeadScale, lr: float, bert_lr: float
) -> list[dict]:
    """Projections and head at ``lr``; the fine-tuned BERT layers at ``bert_lr``."""
    return [
        {"params": list(item_tower.top.parameters()), "lr": bert_lr},
        {
            "params": list(item_tower.proj.parameters())
            + list(user_tower.parameters())
            + list(head.parameters()),
            "lr": lr,
        },
    ]


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def describe_kinds(kinds: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in kinds.items() if v)


def pad_histories(histories: Sequence[Sequence[int]], width: int) -> np.ndarray:
    out = np.full((len(histories), max(1, width)), -1, dtype=np.int64)
    for k, h in enumerate(histories):
        recent = list(h)[-width:]
        out[k, : len(recent)] = recent
    return out


def fit_towers(
    item_tower: ItemTower,
    user_tower: UserTower,
    cache: LowerCache,
    ex: TowerExamples,
    cfg: TowerConfig,
    *,
    validate: Callable[[np.ndarray, UserTower], dict[str, float]],
    progress: bool = False,
    on_epoch: Callable[[dict[str, float], int], object] | None = None,
    pooled: torch.Tensor | None = None,
) -> tuple[list[dict[str, float]], HeadScale, torch.Tensor]:
    """Train in place; keeps the best epoch by ``val_ndcg@10``.  Returns (per-epoch metrics,
    label head, the pooled item table of the kept weights)."""
    rng = np.random.default_rng(cfg.seed)
    head = HeadScale(cfg.temperature).to(item_tower.proj.weight.device)
    groups = parameter_groups(item_tower, user_tower, head, cfg.lr, cfg.bert_lr)
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    per_epoch = math.ceil(len(ex) / cfg.batch_size)
    total = max(1, per_epoch * cfg.epochs)
    warm = max(1, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * max(0.05, 1.0 - s / total)
    )
    params = [p for g in groups for p in g["params"]]
    device = item_tower.proj.weight.device
    if pooled is None:
        pooled = pooled_table(item_tower, cache, autocast=cfg.autocast)
    pooled = pooled.to(device)
    history: list[dict[str, float]] = []
    best: tuple[float, dict, torch.Tensor] | None = None
    for epoch in range(1, cfg.epochs + 1):
        started = time.perf_counter()
        losses = []
        item_tower.train()
        for idx in tqdm(
            batches(len(ex), cfg.batch_size, rng), desc=f"epoch {epoch}", disable=not progress
        ):
            loss = train_step((item_tower, user_tower, head), cache, pooled, ex, idx, cfg, rng)
            if not torch.isfinite(loss):
                raise TrainingError(f"training diverged (loss {loss.item()}); lower the rates")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        if cfg.bert_items > 0:
            pooled = pooled_table(item_tower, cache, autocast=cfg.autocast).to(device)
        seconds = time.perf_counter() - started
        with torch.inference_mode():
            table = item_tower.project(pooled).cpu().numpy()
        row = {
            "epoch": float(epoch),
            "train_loss": float(np.mean(losses)),
            "train_pairs_per_s": len(ex) / seconds,
            "epoch_seconds": seconds,
            **validate(table, user_tower),
        }
        history.append(row)
        log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in row.items()})
        if on_epoch is not None:
            on_epoch(row, epoch)
        if best is None or row["val_ndcg@10"] > best[0]:
            state = {
                "item": copy.deepcopy(item_tower.state_dict()),
                "user": copy.deepcopy(user_tower.state_dict()),
                "head": copy.deepcopy(head.state_dict()),
            }
            best = (row["val_ndcg@10"], state, pooled)
    assert best is not None
    item_tower.load_state_dict(best[1]["item"])
    user_tower.load_state_dict(best[1]["user"])
    head.load_state_dict(best[1]["head"])
    return history, head, best[2]
