"""Batch scoring: embed the catalog and every user, write embeddings and top-N text scores.

The catalog is encoded here, or in item chunks on a Dask cluster when ``distributed.address``
is set (``training.text.catalog``); users are encoded here (from the item vectors, for the
history tower).

Tables written (schema in feature_store/schema.sql), each replacing earlier rows of the same
``model_version`` (and ``scope``):

- ``item_embeddings(item_id, model_version, embedding)``;
- ``user_embeddings(user_id, model_version, scope, as_of, embedding)``;
- ``text_scores(user_id, item_id, model_version, scope, score)``: per user the top
  ``ranker.num_candidates`` items by score, excluding items the user engaged with in that scope.

Embeddings are L2-normalized float32, so ``score`` is the cosine (dot product) in [-1, 1].
Scopes: ``fit_v1`` (user text from ``events_fit_v1``), ``train_v1`` (``events_train_v1``),
``live`` (all events).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from feature_store.db import transaction
from feature_store.splits import ensure_split
from feature_store.task import apply_task
from recsys.algorithms.text_index import TextIndex
from recsys.core.config import Settings
from recsys.core.errors import ConfigError
from recsys.core.rules import LIVE_SCOPE, SCOPES
from training import cluster
from training.text import model as tm
from training.text import tower as tw
from training.text.catalog import (
    cached_encoder,
    catalog_vectors,
    encode_catalog,
    encode_on_cluster,
    load_scoring_encoder,
)
from training.text.texts import ItemSummaries, item_summaries, item_texts, user_histories

log = logging.getLogger(__name__)

# Users per scoring chunk: about 6M text-score rows (~0.3 GB in flight) at 300 per user.
SCORE_CHUNK_USERS = 20_000


@dataclass(frozen=True)
class ScoreSummary:
    """Rows written per table and scope."""

    model_version: str
    items: int
    users: dict[str, int]
    scores: dict[str, int]


def check_scopes(scopes: Sequence[str]) -> list[str]:
    bad = [s for s in scopes if s not in SCOPES]
    if bad:
        raise ConfigError(f"unknown scope(s) {bad}; choose from {', '.join(SCOPES)}")
    return list(dict.fromkeys(scopes))


def _vectors(matrix: np.ndarray) -> pa.Array:
    flat = pa.array(np.ascontiguousarray(matrix, dtype=np.float32).ravel(), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1]).cast(pa.list_(pa.float32()))


def write_item_embeddings(
    con: duckdb.DuckDBPyConnection, model_version: str, item_ids: Sequence[str], matrix: np.ndarray
) -> int:
    """Replace the item embeddings of ``model_version``."""
    table = pa.table(
        {"item_id": pa.array(list(item_ids), pa.string()), "embedding": _vectors(matrix)}
    )
    with transaction(con):
        con.execute("DELETE FROM item_embeddings WHERE model_version = ?", [model_version])
        con.register("_item_emb", table)
        con.execute(
            "INSERT INTO item_embeddings SELECT item_id, ?, embedding FROM _item_emb",
            [model_version],
        )
        con.unregister("_item_emb")
    return len(item_ids)


@dataclass(frozen=True)
class TopN:
    """Per user the best-scoring items as flat code columns (no Python string per row):
    ``user_rows`` index ``user_ids``, ``item_codes`` index ``item_ids``, best first per user."""

    user_ids: Sequence[str]
    item_ids: Sequence[str]
    user_rows: np.ndarray
    item_codes: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    def table(self) -> pa.Table:
        users = pa.array(list(self.user_ids), pa.string())
        items = pa.array(list(self.item_ids), pa.string())
        return pa.table(
            {
                "user_id": users.take(pa.array(self.user_rows, pa.int32())),
                "item_id": items.take(pa.array(self.item_codes, pa.int32())),
                "score": pa.array(self.scores.astype(np.float32), pa.float32()),
            }
        )


def delete_scope(con: duckdb.DuckDBPyConnection, model_version: str, scope: str) -> None:
    """Delete every user row of ``scope`` (inside the caller's transaction)."""
    for table in ("user_embeddings", "text_scores"):
        con.execute(
            f"DELETE FROM {table} WHERE model_version = ? AND scope = ?", [model_version, scope]
        )


def insert_user_rows(
    con: duckdb.DuckDBPyConnection,
    model_version: str,
    scope: str,
    user_ids: Sequence[str],
    as_of: Sequence[object],
    matrix: np.ndarray,
    top: TopN,
    *,
    replace: bool,
) -> None:
    """Insert the rows of ``user_ids`` (inside the caller's transaction); with ``replace``,
    first delete what these users had in the scope."""
    users = pa.table(
        {
            "user_id": pa.array(list(user_ids), pa.string()),
            "as_of": pa.array(list(as_of), pa.timestamp("us")),
            "embedding": _vectors(matrix),
        }
    )
    con.register("_user_emb", users)
    con.register("_text_sc", top.table())
    try:
        if replace:
            for table in ("user_embeddings", "text_scores"):
                con.execute(
                    f"DELETE FROM {table} WHERE model_version = ? AND scope = ? "
                    "AND user_id IN (SELECT user_id FROM _user_emb)",
                    [model_version, scope],
                )
        con.execute(
            "INSERT INTO user_embeddings SELECT user_id, ?, ?, as_of, embedding FROM _user_emb",
            [model_version, scope],
        )
        con.execute(
            "INSERT INTO text_scores SELECT user_id, item_id, ?, ?, score FROM _text_sc",
            [model_version, scope],
        )
    finally:
        con.unregister("_user_emb")
        con.unregister("_text_sc")


def top_n(
    user_ids: Sequence[str],
    user_matrix: np.ndarray,
    item_ids: Sequence[str],
    item_matrix: np.ndarray,
    engaged: dict[str, set[str]],
    n: int,
    block: int = 256,
) -> TopN:
    """Per user the ``n`` best-scoring items not in ``engaged[user]``, best first.

    Works on ``block`` users at a time (a block x catalog score matrix), selecting with one
    2-D partial sort instead of a Python loop per user."""
    row_of = {i: k for k, i in enumerate(item_ids)}
    n = min(n, len(item_ids))
    out_u, out_i, out_s = [], [], []
    for start in range(0, len(user_ids) if n else 0, block):
        chunk = user_ids[start : start + block]
        scores = user_matrix[start : start + block] @ item_matrix.T
        rows: list[int] = []
        cols: list[int] = []
        for r, user_id in enumerate(chunk):
            seen = [row_of[i] for i in engaged.get(user_id, ()) if i in row_of]
            rows.extend([r] * len(seen))
            cols.extend(seen)
        scores[np.asarray(rows, dtype=np.intp), np.asarray(cols, dtype=np.intp)] = -np.inf
        if n < scores.shape[1]:
            best = np.argpartition(-scores, n - 1, axis=1)[:, :n]
        else:
            best = np.broadcast_to(np.arange(scores.shape[1]), scores.shape).copy()
        values = np.take_along_axis(scores, best, axis=1)
        order = np.argsort(-values, axis=1, kind="stable")
        best = np.take_along_axis(best, order, axis=1)
        values = np.take_along_axis(values, order, axis=1)
        keep = np.isfinite(values)  # fewer unseen items than n: the engaged ones drop out
        out_u.append((start + np.nonzero(keep)[0]).astype(np.int32))
        out_i.append(best[keep].astype(np.int32))
        out_s.append(values[keep].astype(np.float32))

    def flat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    return TopN(
        user_ids, item_ids, flat(out_u, np.int32), flat(out_i, np.int32), flat(out_s, np.float32)
    )


@contextlib.contextmanager
def _user_list(con: duckdb.DuckDBPyConnection, user_ids: Sequence[str]) -> Iterator[str]:
    """Register ``user_ids`` as a one-column relation for the duration; yields its name."""
    con.register("_score_users", pa.table({"id": pa.array(list(user_ids), pa.string())}))
    try:
        yield "_score_users"
    finally:
        con.unregister("_score_users")


def _engaged(
    con: duckdb.DuckDBPyConnection, relation: str, user_ids: Sequence[str]
) -> dict[str, set[str]]:
    with _user_list(con, user_ids) as ids:
        rows = con.execute(
            f"SELECT DISTINCT user_id, item_id FROM {relation} "
            f"WHERE user_id IN (SELECT id FROM {ids})"
        ).fetchall()
    out: dict[str, set[str]] = {}
    for u, i in rows:
        out.setdefault(str(u), set()).add(str(i))
    return out


def _last_ts(
    con: duckdb.DuckDBPyConnection, relation: str, user_ids: Sequence[str]
) -> dict[str, object]:
    with _user_list(con, user_ids) as ids:
        rows = con.execute(
            f"SELECT user_id, max(ts) FROM {relation} "
            f"WHERE user_id IN (SELECT id FROM {ids}) GROUP BY user_id"
        ).fetchall()
    return {str(u): ts for u, ts in rows}


def _scope_users(con: duckdb.DuckDBPyConnection, relation: str) -> list[str]:
    return [
        str(u)
        for (u,) in con.execute(f"SELECT DISTINCT user_id FROM {relation} ORDER BY 1").fetchall()
    ]


def _text_users(
    encoder: tm.TwoTowerEncoder,
    meta: dict,
    hists: dict,
    summaries: ItemSummaries,
    scope: str,
    batch_size: int,
    progress: bool,
) -> tuple[list[str], np.ndarray]:
    """User vectors of the per-pair model: the user text through the shared encoder."""
    texts = {
        u: h.text_before(None, summaries, int(meta["user_history_items"]))
        for u, h in sorted(hists.items())
    }
    texts = {u: t for u, t in texts.items() if t}
    users = list(texts)
    matrix = encoder.encode(
        [texts[u] for u in users],
        int(meta["max_user_tokens"]),
        batch_size,
        progress,
        desc=f"users ({scope})",
    )
    return users, matrix


def _tower_users(
    encoder: tm.TwoTowerEncoder,
    meta: dict,
    hists: dict,
    row: dict[str, int],
    item_matrix: np.ndarray,
) -> tuple[list[str], np.ndarray]:
    """User vectors of the history tower: the user tower over their last liked items."""
    histories = {u: [row[i] for _, i in h.liked if i in row] for u, h in sorted(hists.items())}
    users = [u for u, h in histories.items() if h]
    width = int(meta["user_history_items"])
    tower = getattr(encoder, "user_tower", None)
    if tower is None:
        raise ConfigError("a history-tower model needs its user tower (towers.safetensors)")
    matrix = tw.user_vectors(tower, item_matrix, [histories[u] for u in users], width)
    return users, matrix


def score_users(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    encoder: tm.TwoTowerEncoder,
    meta: dict,
    model_version: str,
    scope: str,
    item_ids: Sequence[str],
    item_matrix: np.ndarray,
    *,
    user_ids: Sequence[str] | None = None,
    batch_size: int = 64,
    progress: bool = False,
    chunk_users: int = SCORE_CHUNK_USERS,
) -> tuple[int, int]:
    """Encode users of ``scope`` (all, or ``user_ids``) and write their embeddings and top-N.

    Users go in chunks of ``chunk_users`` (history read, encoding, top-N, insert), so memory
    stays bounded by one chunk whatever the number of users; all chunks land in one
    transaction, so readers see the old rows or the new ones, never a mix."""
    relation = SCOPES[check_scopes([scope])[0]].events
    everyone = user_ids is None
    wanted = _scope_users(con, relation) if user_ids is None else list(dict.fromkeys(user_ids))
    encode_users: Callable[[dict], tuple[list[str], np.ndarray]]
    if meta.get("architecture") == "history_tower":
        row = {i: k for k, i in enumerate(item_ids)}
        encode_users = functools.partial(
            _tower_users, encoder, meta, row=row, item_matrix=item_matrix
        )
    else:
        encode_users = functools.partial(
            _text_users,
            encoder,
            meta,
            summaries=item_summaries(con),
            scope=scope,
            batch_size=batch_size,
            progress=progress,
        )
    n_users = n_scores = 0
    started = time.monotonic()
    with transaction(con):
        if everyone:
            delete_scope(con, model_version, scope)
        for start in range(0, len(wanted), chunk_users):
            chunk = wanted[start : start + chunk_users]
            users, matrix = encode_users(user_histories(con, relation, chunk))
            if not users:
                matrix = np.zeros((0, item_matrix.shape[1]), dtype=np.float32)
            last = _last_ts(con, relation, users)
            top = top_n(
                users,
                matrix,
                item_ids,
                item_matrix,
                _engaged(con, relation, users),
                settings.ranker.num_candidates,
            )
            insert_user_rows(
                con,
                model_version,
                scope,
                users,
                [last.get(u) for u in users],
                matrix,
                top,
                replace=not everyone,
            )
            n_users += len(users)
            n_scores += len(top)
            done = start + len(chunk)
            if done < len(wanted):
                elapsed = time.monotonic() - started
                log.info(
                    "scope %s: %d of %d users in %.0f s, about %.0f s left",
                    scope,
                    done,
                    len(wanted),
                    elapsed,
                    elapsed / done * (len(wanted) - done),
                )
    log.info(
        "scope %s: wrote %d user embeddings and %d text scores (model %s) in %.0f s",
        scope,
        n_users,
        n_scores,
        model_version,
        time.monotonic() - started,
    )
    return n_users, n_scores


def score_store(
    settings: Settings,
    con: duckdb.DuckDBPyConnection,
    model_dir: Path,
    model_version: str,
    scopes: Sequence[str] = tuple(SCOPES),
    *,
    batch_size: int | None = None,
    progress: bool = True,
) -> ScoreSummary:
    """Embed the whole catalog and every user of each scope with the model in ``model_dir``."""

    scopes = check_scopes(scopes)
    device = tm.resolve_device(settings.device)
    encoder = load_scoring_encoder(model_dir, device)
    meta = tm.read_meta(model_dir, settings)
    batch = batch_size or settings.text.score_batch_size
    apply_task(con, settings.task)
    if any(s != LIVE_SCOPE.name for s in scopes):
        ensure_split(con, settings.split)
    texts = item_texts(con)
    item_ids = sorted(texts)
    log.info("embedding %d items with model %s on %s", len(item_ids), model_version, device)
    ordered = [texts[i] for i in item_ids]
    quantize = settings.text.quantize_scoring
    with cluster.connect(settings) as client:
        encode: Callable[[list[str]], np.ndarray]
        if client is None:
            encode = functools.partial(
                encode_catalog,
                encoder,
                meta,
                batch_size=batch,
                progress=progress,
                quantize=quantize,
            )
        else:
            encode = functools.partial(
                encode_on_cluster,
                client,
                model_dir,
                model_version,
                settings.device,
                meta,
                batch_size=batch,
                quantize=quantize,
                chunk_items=settings.distributed.score_chunk_items,
            )
        reuse = settings.text.reuse_item_vectors
        item_matrix = catalog_vectors(encode, model_dir, item_ids, ordered, reuse=reuse)
    write_item_embeddings(con, model_version, item_ids, item_matrix)
    users, scores = {}, {}
    for scope in scopes:
        users[scope], scores[scope] = score_users(
            con,
            settings,
            encoder,
            meta,
            model_version,
            scope,
            item_ids,
            item_matrix,
            batch_size=batch,
            progress=progress,
        )
    return ScoreSummary(model_version, len(item_ids), users, scores)


def refresh_user_embeddings(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    model_dir: Path,
    model_version: str,
    user_ids: Sequence[str],
    scope: str = LIVE_SCOPE.name,
) -> int:
    """Re-encode only ``user_ids`` (after new events) and rewrite their embeddings and top-N
    scores against the stored item embeddings of ``model_version``.  Returns users updated."""
    if not user_ids:
        return 0
    index = TextIndex.load(con, model_version, scope=scope, users=False)
    device = str(tm.resolve_device(settings.device))
    encoder = cached_encoder(str(model_dir), model_version, device)
    meta = tm.read_meta(model_dir, settings)
    updated, _ = score_users(
        con,
        settings,
        encoder,
        meta,
        model_version,
        scope,
        index.item_ids,
        index.item_matrix,
        user_ids=user_ids,
    )
    return updated
