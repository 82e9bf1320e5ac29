"""Top-k with exclusions over dense score vectors, and the base of dense-scoring generators.

``top_n`` is the one top-k of the generators and baselines (implicit's ``topk`` with
``filter_items``): the n best catalog entries, excluded and non-finite scores removed, ties
broken by catalog index so results are deterministic.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import datetime

import numpy as np
import scipy.sparse as sp

from feature_store.interactions import Interactions

Scored = tuple[np.ndarray, np.ndarray]  # (item ids, scores), best first
EMPTY: Scored = (np.empty(0, dtype=object), np.empty(0, dtype=np.float32))


def top_n(scores: np.ndarray, exclude: np.ndarray, n: int, item_ids: np.ndarray) -> Scored:
    """The n best catalog entries of a dense score vector, excluded indices and -inf removed.

    Ties are broken by catalog index (integer item id ascending), so results are deterministic.
    """
    s = scores.astype(np.float64, copy=True)
    if len(exclude):
        s[exclude] = -np.inf
    valid = np.flatnonzero(np.isfinite(s))
    if len(valid) == 0 or n <= 0:
        return EMPTY
    if len(valid) > n:
        # keep everything tied with the n-th score so the tie-break below stays exact
        kth = np.partition(-s[valid], n - 1)[n - 1]
        valid = valid[-s[valid] <= kth]
    order = valid[np.lexsort((valid, -s[valid]))][:n]
    return item_ids[order], s[order].astype(np.float32)


def row_sum(
    matrix: sp.csr_matrix, rows: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """``sum_k weights[k] * matrix[rows[k]]`` as a dense float64 vector.

    What ``(x @ matrix)`` or ``matrix[rows].sum(axis=0)`` give for one user, with the same
    additions in the same order (row by row, each row's stored order), so the same floats;
    without scipy building a sparse product, about 10x faster on a 100,000-item catalog.
    """
    indptr = matrix.indptr
    spans = [np.arange(indptr[r], indptr[r + 1]) for r in np.asarray(rows, dtype=np.int64)]
    at = np.concatenate(spans) if spans else np.empty(0, dtype=np.int64)
    values = np.asarray(matrix.data[at], dtype=np.float64)
    if weights is not None:
        values = values * np.repeat(np.asarray(weights, dtype=np.float64), [len(x) for x in spans])
    return np.bincount(matrix.indices[at], weights=values, minlength=matrix.shape[1])


def ranked(scores: np.ndarray) -> np.ndarray:
    """Every finite entry of ``scores`` in ``top_n``'s order (best first, ties by index)."""
    valid = np.flatnonzero(np.isfinite(scores))
    return valid[np.lexsort((valid, -scores[valid]))]


def top_n_ranked(
    order: np.ndarray, scores: np.ndarray, exclude: np.ndarray, n: int, item_ids: np.ndarray
) -> Scored:
    """``top_n(scores, exclude, n, item_ids)`` from ``order = ranked(scores)``, computed once.

    For a score vector shared by many requests (popularity): the first ``n`` of ``order``
    outside ``exclude`` instead of a partial sort of the whole catalog per request.
    """
    if n <= 0 or len(order) == 0:
        return EMPTY
    head = order[: n + len(exclude)]
    if len(exclude):
        head = head[~np.isin(head, exclude)]
    head = head[:n]
    if len(head) == 0:
        return EMPTY
    return item_ids[head], scores[head].astype(np.float32)


class DenseGenerator(ABC):
    """Base for generators that score the whole catalog per user with a dense vector."""

    name = "dense"
    data: Interactions

    @abstractmethod
    def user_scores(self, u: int | None, as_of: datetime | None) -> np.ndarray | None:
        """Scores of every catalog item for user row ``u`` (None: unknown user), or None."""

    def scores_of(self, user_id: str, as_of: datetime | None) -> np.ndarray | None:
        """``user_scores`` of a user id (None for a user the generator cannot score)."""
        return self.user_scores(self.data.user_index.get(user_id), as_of)

    def top(self, user_id: str, scores: np.ndarray | None, n: int) -> Scored:
        """The user's n best unseen items from ``scores`` (``scores_of``), best first."""
        if scores is None:
            return EMPTY
        return top_n(scores, self.data.seen_items(user_id), n, self.data.item_ids)

    def generate(
        self, user_ids: Sequence[str], n: int, as_of: Sequence[datetime] | None = None
    ) -> list[Scored]:
        when = list(as_of) if as_of is not None else [None] * len(user_ids)
        return [
            self.top(user_id, self.scores_of(user_id, at), n)
            for user_id, at in zip(user_ids, when, strict=True)
        ]
