"""Numpy-only access to stored text embeddings for the request path and the ranker.

Imports neither torch nor transformers: serving loads a ``TextIndex`` from the store and scores
candidates with a dot product (embeddings are L2-normalized, so scores are cosines).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import duckdb
import numpy as np

from recsys.core.errors import ModelNotReadyError

# Registry versions are integers written as text; order numerically, then as text.
_NEWEST_VERSION_SQL = (
    "SELECT model_version FROM item_embeddings GROUP BY model_version "
    "ORDER BY TRY_CAST(model_version AS BIGINT) DESC NULLS LAST, model_version DESC LIMIT 1"
)


def _matrix(table: object, column: str) -> np.ndarray:
    col = table.column(column).combine_chunks()  # type: ignore[attr-defined]
    n = len(col)
    if n == 0:
        return np.zeros((0, 0), dtype=np.float32)
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    if flat.size % n:
        raise ModelNotReadyError(f"stored {column} vectors have inconsistent dimensions")
    return flat.reshape(n, flat.size // n)


class TextIndex:
    """Item (and user) embeddings of one ``model_version`` / ``scope``."""

    def __init__(
        self,
        model_version: str,
        item_ids: Sequence[str],
        item_matrix: np.ndarray,
        user_ids: Sequence[str] = (),
        user_matrix: np.ndarray | None = None,
        scope: str = "live",
    ) -> None:
        self.model_version = model_version
        self.scope = scope
        self.item_ids = list(item_ids)
        self.item_matrix = np.ascontiguousarray(item_matrix, dtype=np.float32)
        self.dim = int(self.item_matrix.shape[1]) if self.item_matrix.size else 0
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
        scope: str = "live",
        *,
        users: bool = True,
    ) -> TextIndex:
        """Read embeddings from the store; ``None`` picks the newest ``model_version`` present.

        Raises ``ModelNotReadyError`` when no embeddings were written (run `recsys score`).
        """
        if model_version is None:
            row = con.execute(_NEWEST_VERSION_SQL).fetchone()
            if not row:
                raise ModelNotReadyError(
                    "no text embeddings in the store; run `recsys train text` then `recsys score`"
                )
            model_version = str(row[0])
        items = con.execute(
            "SELECT item_id, embedding FROM item_embeddings "
            "WHERE model_version = ? ORDER BY item_id",
            [model_version],
        ).to_arrow_table()
        if items.num_rows == 0:
            raise ModelNotReadyError(
                f"no item embeddings for text model version {model_version!r}; "
                f"run `recsys score --model-version {model_version}`"
            )
        user_ids: list[str] = []
        user_matrix = None
        if users:
            rows = con.execute(
                "SELECT user_id, embedding FROM user_embeddings "
                "WHERE model_version = ? AND scope = ? ORDER BY user_id",
                [model_version, scope],
            ).to_arrow_table()
            user_ids = [str(u) for u in rows.column("user_id").to_pylist()]
            user_matrix = _matrix(rows, "embedding") if user_ids else None
        return cls(
            model_version,
            [str(i) for i in items.column("item_id").to_pylist()],
            _matrix(items, "embedding"),
            user_ids,
            user_matrix,
            scope,
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
        scores = self.item_matrix @ np.asarray(user_vec, dtype=np.float32)
        skip = [self._item_row[i] for i in exclude if i in self._item_row]
        scores[skip] = -np.inf
        k = min(n, len(self.item_ids) - len(set(skip)))
        if k <= 0:
            return np.array([], dtype=object), np.array([], dtype=np.float32)
        best = np.argpartition(-scores, k - 1)[:k]
        best = best[np.argsort(-scores[best], kind="stable")]
        return np.array(self.item_ids, dtype=object)[best], scores[best]
