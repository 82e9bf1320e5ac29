"""Validation of the text score on protocol v1: each user's held-out (``val``) positives against
sampled negatives, AUC and NDCG@10 averaged over users.

The evaluation set is a pure function of the store and the seed (sorted ids, seeded draws), so a
registered model re-evaluated later reproduces its logged ``val_auc``.  User texts come from
``events_fit_v1``; negatives are drawn from a seeded pool of catalog items the user never touched
in fit or val (test interactions are not looked at).  Candidates are shuffled so ties cannot
favour positives.

Positives are the distinct items a user engaged with in ``val`` that they had not already touched
in ``fit``: what scoring and serving ask of the text model (items a user has seen are never
candidates).  On a log with repeats (a purchase after a click, a second click) a positive the
user already had in their history would reward any scorer that ranks the history itself first,
and one item clicked and bought would count twice.  MovieLens has one rating per item, so its
validation set is unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np

from feature_store.rules_sql import positive_sql
from recsys.core.config import Settings
from recsys.core.errors import TrainingError
from recsys.core.rules import EXPOSURE_EVENT_TYPE, FIT_SCOPE, TRAIN_SCOPE
from training.text.texts import ItemSummaries, item_summaries, user_histories

log = logging.getLogger(__name__)

K = 10


@dataclass(frozen=True)
class EvalSet:
    """Per user: the user text and the candidate items with their 0/1 labels."""

    user_ids: list[str]
    user_texts: list[str]
    candidates: list[list[str]]
    labels: list[np.ndarray]
    # the liked fit-period items of each user, oldest first (the history tower's input)
    histories: list[list[str]] = field(default_factory=list)

    @property
    def item_ids(self) -> list[str]:
        return sorted({i for c in self.candidates for i in c})

    def __len__(self) -> int:
        return len(self.user_ids)


def build_eval_set(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    *,
    summaries: ItemSummaries | None = None,
) -> EvalSet:
    """The validation set of protocol v1 (see module docstring)."""
    cfg = settings.text
    rng = np.random.default_rng(settings.seed + 1)
    summaries = summaries or item_summaries(con)
    fit_seen: dict[str, set[str]] = {}  # only the (user, val positive) pairs touched in fit
    for user_id, item_id in con.execute(
        f"""
        SELECT DISTINCT f.user_id, f.item_id FROM {FIT_SCOPE.events} f
        SEMI JOIN (SELECT user_id, item_id FROM split_v1 WHERE part = 'val' AND {positive_sql()})
            v USING (user_id, item_id)
        WHERE f.event_type <> ?
        """,
        [EXPOSURE_EVENT_TYPE],
    ).fetchall():
        fit_seen.setdefault(str(user_id), set()).add(str(item_id))
    val_pos: dict[str, list[str]] = {}
    for user_id, item_id in con.execute(
        f"SELECT user_id, item_id FROM split_v1 WHERE part = 'val' AND {positive_sql()} "
        "ORDER BY user_id, rn"
    ).fetchall():
        user, item = str(user_id), str(item_id)
        known = val_pos.setdefault(user, [])
        if item not in known and item not in fit_seen.get(user, ()):
            known.append(item)
    val_pos = {u: items for u, items in val_pos.items() if items}
    histories = user_histories(con, FIT_SCOPE.events, sorted(val_pos))
    users = sorted(u for u in val_pos if u in histories)
    if not users:
        raise TrainingError(
            "no validation users: nobody has both a fit-period history and a positive on an "
            "item new to them in the validation part of protocol v1"
        )
    if cfg.eval_users and len(users) > cfg.eval_users:
        users = sorted(rng.choice(users, size=cfg.eval_users, replace=False).tolist())
    catalog = [
        str(r[0]) for r in con.execute("SELECT item_id FROM items ORDER BY item_id").fetchall()
    ]
    pool = np.array(catalog, dtype=object)
    if cfg.eval_item_pool and len(pool) > cfg.eval_item_pool:
        pool = np.sort(rng.choice(pool, size=cfg.eval_item_pool, replace=False))
    touched: dict[str, set[str]] = {}
    for user_id, item_id in con.execute(
        f"SELECT DISTINCT user_id, item_id FROM {TRAIN_SCOPE.events}"
    ).fetchall():
        touched.setdefault(str(user_id), set()).add(str(item_id))
    texts, cands, labels, hists = [], [], [], []
    for user_id in users:
        seen = touched.get(user_id, set())
        allowed = [i for i in pool if i not in seen]
        n_neg = min(cfg.eval_negatives, len(allowed))
        negs = rng.choice(allowed, size=n_neg, replace=False).tolist() if n_neg else []
        items = np.array(val_pos[user_id] + negs, dtype=object)
        lab = np.array([1.0] * len(val_pos[user_id]) + [0.0] * len(negs), dtype=np.float32)
        perm = rng.permutation(len(items))
        texts.append(histories[user_id].text_before(None, summaries, cfg.user_history_items))
        cands.append([str(i) for i in items[perm]])
        labels.append(lab[perm])
        hists.append([i for _, i in histories[user_id].liked])
    log.info(
        "validation set: %d users, %d distinct candidate items",
        len(users),
        len({i for c in cands for i in c}),
    )
    return EvalSet(users, texts, cands, labels, hists)


def user_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """P(score of a positive > score of a negative), ties counting half; None if one-class."""
    pos, neg = scores[labels > 0], scores[labels <= 0]
    if len(pos) == 0 or len(neg) == 0:
        return None
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def user_ndcg(scores: np.ndarray, labels: np.ndarray, k: int = K) -> float | None:
    """Binary-relevance NDCG@k; ties keep the (shuffled) candidate order."""
    n_pos = int((labels > 0).sum())
    if n_pos == 0:
        return None
    order = np.argsort(-scores, kind="stable")[:k]
    gains = labels[order] / np.log2(np.arange(2, len(order) + 2))
    ideal = (1.0 / np.log2(np.arange(2, min(n_pos, k) + 2))).sum()
    return float(gains.sum() / ideal)


def metrics_from_scores(
    eval_set: EvalSet, scores: list[np.ndarray], prefix: str = "val_"
) -> dict[str, float]:
    """Mean per-user AUC and NDCG@10 of per-user candidate scores."""
    aucs = [
        a
        for s, lab in zip(scores, eval_set.labels, strict=True)
        if (a := user_auc(s, lab)) is not None
    ]
    ndcgs = [
        n
        for s, lab in zip(scores, eval_set.labels, strict=True)
        if (n := user_ndcg(s, lab)) is not None
    ]
    if not aucs:
        raise TrainingError("validation set has no user with both positives and negatives")
    return {
        f"{prefix}auc": float(np.mean(aucs)),
        f"{prefix}ndcg@{K}": float(np.mean(ndcgs)),
        f"{prefix}users": float(len(aucs)),
    }


def metrics_from_vectors(
    eval_set: EvalSet,
    user_vecs: Any,
    item_vecs: Any,
    item_row: Mapping[str, int],
    prefix: str = "val_",
) -> dict[str, float]:
    """Metrics for dot-product scores (dense arrays or scipy sparse rows)."""
    scores = []
    for u, cands in enumerate(eval_set.candidates):
        rows = [item_row[i] for i in cands]
        s = item_vecs[rows] @ user_vecs[u].T
        scores.append(
            np.asarray(s.todense() if hasattr(s, "todense") else s, dtype=np.float64).ravel()
        )
    return metrics_from_scores(eval_set, scores, prefix)


def evaluate_encoder(
    encoder: Any,
    eval_set: EvalSet,
    item_text: Mapping[str, str],
    meta: Mapping[str, Any],
    batch_size: int = 64,
    progress: bool = False,
    prefix: str = "val_",
) -> dict[str, float]:
    """Encode the eval set's users and candidate items with ``encoder`` and score them."""
    items = eval_set.item_ids
    item_vecs = encoder.encode(
        [item_text.get(i, "") for i in items],
        int(meta["max_item_tokens"]),
        batch_size,
        progress,
        desc="eval items",
    )
    user_vecs = encoder.encode(
        eval_set.user_texts, int(meta["max_user_tokens"]), batch_size, progress, desc="eval users"
    )
    return metrics_from_vectors(
        eval_set, user_vecs, item_vecs, {i: k for k, i in enumerate(items)}, prefix
    )
