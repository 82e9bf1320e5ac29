"""Item vectors saved with a history-tower model, reused by ``recsys score``.

Training ends with every item's vector under the kept weights (the table it validated with), so
scoring need not run the catalog through BERT again: ``item_vectors.npz`` (``allow_pickle``
off) holds the item ids, a digest of each item's text and the vectors.  An item whose text
changed since training, or that is new, is encoded afresh; the rest are read back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ITEM_VECTORS_FILE = "item_vectors.npz"


def text_digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8"), usedforsecurity=False).hexdigest()[:16]


def save_item_vectors(
    model_dir: Path, item_ids: Sequence[str], texts: Sequence[str], vectors: np.ndarray
) -> Path:
    path = Path(model_dir) / ITEM_VECTORS_FILE
    np.savez(
        path,
        ids=np.asarray(list(item_ids), dtype=str),
        digests=np.asarray([text_digest(t) for t in texts], dtype=str),
        vectors=np.ascontiguousarray(vectors, dtype=np.float32),
    )
    return path


def load_item_vectors(
    model_dir: Path, item_ids: Sequence[str], texts: Sequence[str]
) -> tuple[np.ndarray, np.ndarray] | None:
    """``(matrix, reusable)`` for ``item_ids`` (rows of unknown or changed items are zeros and
    ``reusable`` False), or None when the model has no saved vectors."""
    path = Path(model_dir) / ITEM_VECTORS_FILE
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as saved:
        ids, digests, vectors = saved["ids"], saved["digests"], saved["vectors"]
    row = {str(i): k for k, i in enumerate(ids)}
    out = np.zeros((len(item_ids), vectors.shape[1]), dtype=np.float32)
    reusable = np.zeros(len(item_ids), dtype=bool)
    for k, (item, text) in enumerate(zip(item_ids, texts, strict=True)):
        r = row.get(str(item))
        if r is not None and digests[r] == text_digest(text):
            out[k] = vectors[r]
            reusable[k] = True
    return out, reusable
