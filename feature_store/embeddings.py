"""Reads of stored text embeddings (written by ``training.text.scoring``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import duckdb
import numpy as np

from recsys.core.errors import ModelNotReadyError

# Registry versions are integers written as text; order numerically, then as text.
_NEWEST_VERSION_SQL = (
    "SELECT model_version FROM item_embeddings GROUP BY model_version "
    "ORDER BY TRY_CAST(model_version AS BIGINT) DESC NULLS LAST, model_version DESC LIMIT 1"
)


@dataclass(frozen=True)
class StoredEmbeddings:
    """Item (and user) vectors of one model version and scope, rows in id order."""

    model_version: str
    item_ids: list[str]
    item_matrix: np.ndarray
    user_ids: list[str]
    user_matrix: np.ndarray | None


def _matrix(table: object, column: str) -> np.ndarray:
    col = table.column(column).combine_chunks()  # type: ignore[attr-defined]
    n = len(col)
    if n == 0:
        return np.zeros((0, 0), dtype=np.float32)
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    if flat.size % n:
        raise ModelNotReadyError(f"stored {column} vectors have inconsistent dimensions")
    return flat.reshape(n, flat.size // n)


def read_embeddings(
    con: duckdb.DuckDBPyConnection,
    model_version: str | None,
    scope: str,
    *,
    users: bool = True,
) -> StoredEmbeddings:
    """Embeddings of ``model_version`` (``None``: the newest present) and ``scope``.

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
        "SELECT item_id, embedding FROM item_embeddings WHERE model_version = ? ORDER BY item_id",
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
    return StoredEmbeddings(
        model_version,
        [str(i) for i in items.column("item_id").to_pylist()],
        _matrix(items, "embedding"),
        user_ids,
        user_matrix,
    )


def user_embedding_times(
    con: duckdb.DuckDBPyConnection, model_version: str, scope: str
) -> dict[str, datetime]:
    """When each user's stored vector of ``model_version`` / ``scope`` was computed (as of)."""
    rows = con.execute(
        "SELECT user_id, max(as_of) FROM user_embeddings WHERE model_version = ? "
        "AND scope = ? GROUP BY user_id",
        [model_version, scope],
    ).fetchall()
    return {str(u): t for u, t in rows}
