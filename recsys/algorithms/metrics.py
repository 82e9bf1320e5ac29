"""Ranking metrics: top-k metrics for the offline protocol and the MIND impression metrics.

Top-k metrics take a ranked list of item ids and the set of relevant ids (binary relevance):

- ``ndcg_at_k``: DCG with gain 1 and discount ``1/log2(rank + 1)`` over the top k, divided by
  the DCG of an ideal list with ``min(|relevant|, k)`` hits;
- ``recall_at_k``: hits in the top k / ``|relevant|``;
- ``mrr_at_k``: 1 / rank of the first hit in the top k, 0 when there is none.

Impression metrics (``auc``, ``mrr``, ``ndcg_graded``) follow the MIND competition's
``evaluate.py``: they score one impression list (the items shown together) against its clicks.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

import numpy as np
import numpy.typing as npt

Scores = Sequence[float] | npt.NDArray[np.floating] | npt.NDArray[np.integer]


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def ndcg_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Binary-relevance NDCG@k; 0 when nothing is relevant."""
    if not relevant:
        return 0.0
    hits = np.fromiter(
        (item in relevant for item in ranked[:k]), dtype=bool, count=min(k, len(ranked))
    )
    disc = _discounts(k)
    dcg = float(disc[: len(hits)][hits].sum())
    idcg = float(disc[: min(len(relevant), k)].sum())
    return dcg / idcg


def recall_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Share of the relevant items found in the top k; 0 when nothing is relevant."""
    if not relevant:
        return 0.0
    return sum(1 for item in ranked[:k] if item in relevant) / len(relevant)


def mrr_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Reciprocal rank of the first relevant item within the top k, else 0."""
    for pos, item in enumerate(ranked[:k]):
        if item in relevant:
            return 1.0 / (pos + 1)
    return 0.0


def coverage_at_k(rankings: Iterable[Sequence[str]], catalog_size: int, k: int) -> float:
    """Distinct items appearing in any top-k list / catalog size."""
    if catalog_size <= 0:
        return 0.0
    distinct = {item for ranked in rankings for item in ranked[:k]}
    return len(distinct) / catalog_size


# --- impression (logged-click replay) metrics, as in MIND's evaluate.py -------------------


def _order(scores: np.ndarray) -> np.ndarray:
    # Stable descending order: equal scores keep the logged (display) order.
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def auc(labels: Scores, scores: Scores) -> float:
    """ROC AUC by the rank-sum formula, ties counted half; NaN without both classes."""
    y = np.asarray(labels, dtype=np.float64) > 0
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # average ranks over ties (1-based)
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def mrr(labels: Scores, scores: Scores) -> float:
    """MIND MRR: mean reciprocal rank of the clicked items in the impression."""
    y = np.asarray(labels, dtype=np.float64)[_order(np.asarray(scores))]
    total = y.sum()
    if total == 0:
        return float("nan")
    return float((y / np.arange(1, len(y) + 1)).sum() / total)


def dcg_graded(labels: Scores, scores: Scores, k: int) -> float:
    """DCG@k with gain ``2**label - 1`` (MIND's ``dcg_score``)."""
    y = np.asarray(labels, dtype=np.float64)[_order(np.asarray(scores))][:k]
    return float(((2.0**y - 1.0) * _discounts(k)[: len(y)]).sum())


def ndcg_graded(labels: Scores, scores: Scores, k: int) -> float:
    """NDCG@k with graded gains (MIND's ``ndcg_score``); NaN when nothing was clicked."""
    best = dcg_graded(labels, labels, k)
    if best == 0:
        return float("nan")
    return dcg_graded(labels, scores, k) / best
