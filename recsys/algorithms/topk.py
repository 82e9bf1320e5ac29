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


class DenseGenerator(ABC):
    """Base for generators that score the whole catalog per user with a dense vector."""

    name = "dense"
    data: Interactions

    @abstractmethod
    def user_scores(self, u: int | None, as_of: datetime | None) -> np.ndarray | None:
        """Scores of every catalog item for user row ``u`` (None: unknown user), or None."""

    def generate(
        self, user_ids: Sequence[str], n: int, as_of: Sequence[datetime] | None = None
    ) -> list[Scored]:
        out: list[Scored] = []
        for k, user_id in enumerate(user_ids):
            u = self.data.user_index.get(user_id)
            scores = self.user_scores(u, as_of[k] if as_of is not None else None)
            if scores is None:
                out.append(EMPTY)
                continue
            out.append(top_n(scores, self.data.seen_items(user_id), n, self.data.item_ids))
        return out
