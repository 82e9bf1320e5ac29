"""Numpy-only access to text embeddings for the request path and the ranker.

Imports neither torch nor transformers: serving loads a ``TextIndex`` from the store and scores
candidates with a dot product (embeddings are L2-normalized, so scores are cosines).  Top-k
retrieval (``nearest``, ``similar_items``) goes through a ``VectorIndex``
(recsys.algorithms.ann): an exact scan, or an HNSW graph for large catalogs.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import duckdb
import numpy as np

from feature_store.embeddings import read_embeddings
from feature_store.interactions import Interactions
from recsys.algorithms.ann import VectorIndex, VectorSearch, vector_index
from recsys.core.rules import HISTORY_LENGTH, LIVE_SCOPE


def user_text_vector(
    index: TextIndex,
    user_id: str | None,
    data: Interactions | None = None,
    history: Sequence[str] = (),
    recent: int = HISTORY_LENGTH,
) -> np.ndarray | None:
    """The one definition of a user's text vector.

    With a ``history``: the vector of its latest ``recent`` items.  Otherwise the user's stored
    embedding, or (none stored) the vector of their latest ``recent`` positive items in ``data``.
    """
    if history:
        return index.vector_from_history(list(history)[-recent:])
    if user_id is None:
        return None
    vec = index.user_vector(user_id)
    if vec is None and data is not None:
        pos = data.recent_positive_items(user_id, recent)
        if len(pos):
            vec = index.vector_from_history(list(data.item_ids[pos]))
    return vec


class TextIndex:
    """Item (and user) embeddings of one ``model_version`` / ``scope``."""

    def __init__(
        self,
        model_version: str,
        item_ids: Sequence[str],
        item_matrix: np.ndarray,
        user_ids: Sequence[str] = (),
        user_matrix: np.ndarray | None = None,
        scope: str = LIVE_SCOPE.name,
        search: VectorSearch | None = None,
    ) -> None:
        self.model_version = model_version
        self.scope = scope
        self.item_ids = list(item_ids)
        self.item_matrix = np.ascontiguousarray(item_matrix, dtype=np.float32)
        self.dim = int(self.item_matrix.shape[1]) if self.item_matrix.size else 0
        self._ids = np.array(self.item_ids, dtype=object)
        # built here, once per load (a worker's start), never per request
        self.vectors: VectorIndex = vector_index(
            self.item_matrix.reshape(len(self.item_ids), self.dim), search
        )
        self._item_row = {i: k for k, i in enumerate(self.item_ids)}
        self._user_row = {u: k for k, u in enumerate(user_ids)}
        self._user_matrix = (
            np.zeros((0, self.dim), dtype=np.float32)
            if user_matrix is None
            else np.ascontiguousarray(user_matrix, dtype=np.float32)
        )

    @classmethod
    def load(
        cls,
        con: duckdb.DuckDBPyConnection,
        model_version: str | None = None,
        scope: str = LIVE_SCOPE.name,
        *,
        users: bool = True,
        search: VectorSearch | None = None,
    ) -> TextIndex:
        """Read embeddings from the store; ``None`` picks the newest ``model_version`` present.

        ``search`` picks exact or HNSW retrieval (default exact).  Raises
        ``ModelNotReadyError`` when no embeddings were written (run `recsys score`).
        """
        e = read_embeddings(con, model_version, scope, users=users)
        return cls(
            e.model_version, e.item_ids, e.item_matrix, e.user_ids, e.user_matrix, scope, search
        )

    @property
    def user_ids(self) -> list[str]:
        """Users with a stored embedding in this scope."""
        return list(self._user_row)

    def item_vectors(self, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(matrix, mask)``: one row per id (zeros for unknown ids) and which ids are known."""
        rows = np.array([self._item_row.get(str(i), -1) for i in item_ids], dtype=np.int64)
        mask = rows >= 0
        out = np.zeros((len(rows), self.dim), dtype=np.float32)
        out[mask] = self.item_matrix[rows[mask]]
        return out, mask

    def user_vector(self, user_id: str) -> np.ndarray | None:
        """The stored user embedding of this scope, or ``None``."""
        row = self._user_row.get(str(user_id))
        return None if row is None else self._user_matrix[row].copy()

    def vector_from_history(self, item_ids: Sequence[str]) -> np.ndarray | None:
        """Normalized mean of the known items' embeddings; ``None`` when none is known."""
        vecs, mask = self.item_vectors(item_ids)
        if not mask.any():
            return None
        mean = vecs[mask].mean(axis=0)
        norm = float(np.linalg.norm(mean))
        return mean / norm if norm > 0 else None

    def scores(self, user_vec: np.ndarray, item_ids: Sequence[str]) -> np.ndarray:
        """Cosine of ``user_vec`` with each item; NaN for unknown items."""
        vecs, mask = self.item_vectors(item_ids)
        out = vecs @ np.asarray(user_vec, dtype=np.float32)
        out[~mask] = np.nan
        return out

    def nearest(
        self, user_vec: np.ndarray, n: int, exclude: Collection[str] = ()
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(item ids, scores)`` of the ``n`` best items, best first, skipping ``exclude``."""
        if n <= 0 or not self.item_ids:
            return np.array([], dtype=object), np.array([], dtype=np.float32)
        skip = [self._item_row[i] for i in exclude if i in self._item_row]
        rows, scores = self.vectors.search(np.asarray(user_vec), n, exclude=[skip])[0]
        return self._ids[rows], scores

    def similar_items(self, item_id: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``(item ids, cosines)`` of the ``n`` items whose text is nearest ``item_id``'s,
        itself left out; empty for an unknown item."""
        row = self._item_row.get(str(item_id))
        if row is None or n <= 0:
            return np.array([], dtype=object), np.array([], dtype=np.float32)
        rows, scores = self.vectors.search(self.item_matrix[row], n, exclude=[[row]])[0]
        return self._ids[rows], scores
