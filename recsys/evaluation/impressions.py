"""Per-impression evaluation of impression logs on held-out served lists only.

A served list is the ``impression`` events sharing a request id; an item is clicked when a
``click`` event has the same request id and item.  Held out are the lists of the split's test
period (``test_start`` of ``split_v1_spec`` for a global cut, each user's own ``test_start``
for a per-user split), which neither model trained on: the text model fits before the
validation cut and the ranker learns from the validation window.

Every system scores each list's items as the user stood at the test cut, from the events
anything scoring a test user may see (``events_train_v1``):

- ``ranker`` / ``ranker_no_text``: the champion ranker (and its ablation) with its full
  features -- the blender's candidate columns where the item is a candidate, else the
  columns of an item no generator proposed (``Blender.item_frame``, as in training), the
  point-in-time behavioural features and the text features;
- ``text_only``: the text model's score alone (user vector of scope ``train_v1``);
- ``popularity``: train positives per item; ``tfidf``: the TF-IDF content profile of the
  user's train positives (``recsys.algorithms.tfidf``, the full-ranking report's system).

Metrics are the MIND competition's (AUC, MRR, nDCG@5, nDCG@10; ``replay.score_lists``) averaged
over lists with at least one click and one non-click.  See docs/ranking.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl

from feature_store.interactions import Interactions
from feature_store.splits import ensure_split
from feature_store.task import apply_task
from recsys.algorithms.candidates import (
    Blender,
    Popularity,
    candidate_limits,
    candidate_weights,
    default_generators,
)
from recsys.algorithms.ranking import TextFeatures, assemble, feature_matrix
from recsys.algorithms.tfidf import TfidfProfile
from recsys.algorithms.topk import DenseGenerator
from recsys.core import rules
from recsys.core.config import Settings
from recsys.core.errors import EvaluationError, ModelNotReadyError
from recsys.evaluation.replay import score_lists
from training import registry
from training.ranker import dataset
from training.ranker.model import RankerModel
from training.ranker.run import ABLATION_DIR
from training.registry import load_text_index
from training.text.texts import item_texts

log = logging.getLogger(__name__)

SYSTEMS: tuple[str, ...] = ("popularity", "tfidf", "text_only", "ranker_no_text", "ranker")
METRICS: tuple[str, ...] = ("auc", "mrr", "ndcg@5", "ndcg@10")


def has_served_lists(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the store holds impressions with a request id (an impression log)."""
    row = con.execute(
        f"SELECT count(*) FROM events WHERE event_type = '{rules.EXPOSURE_EVENT_TYPE}' "
        "AND request_id IS NOT NULL"
    ).fetchone()
    return bool(row and row[0])


def heldout_lists(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """(request_id, user_id, item_id, position, as_of, label) of the test period's lists;
    ``as_of`` is the user's test cut, ``label`` 1 for a clicked item."""
    row = con.execute("SELECT kind, test_start FROM split_v1_spec").fetchone()
    if row is None:
        raise EvaluationError("the store has no split; run `recsys evaluate` after ingest")
    kind, test_cut = row
    cut = "CAST(? AS TIMESTAMP)" if kind == "global_time" else "u.test_start"
    params = [test_cut] if kind == "global_time" else []
    return (
        con.execute(
            f"""
            WITH clicks AS (SELECT DISTINCT request_id, item_id FROM events
                            WHERE event_type = 'click' AND request_id IS NOT NULL),
                 cuts AS (SELECT u.user_id, {cut} AS as_of FROM split_v1_users u)
            SELECT i.request_id, i.user_id, i.item_id, coalesce(i.position, 0) AS position,
                   c0.as_of, (c.item_id IS NOT NULL)::INTEGER AS label
            FROM events i
            JOIN cuts c0 ON c0.user_id = i.user_id
            LEFT JOIN clicks c USING (request_id, item_id)
            WHERE i.event_type = '{rules.EXPOSURE_EVENT_TYPE}' AND i.request_id IS NOT NULL
              AND c0.as_of IS NOT NULL AND i.ts >= c0.as_of
            ORDER BY i.request_id, position, i.item_id
            """,
            params,
        )
        .pl()
        .with_columns(pl.col("as_of").cast(pl.Datetime("us")))
    )


def dense_scores(gen: DenseGenerator, frame: pl.DataFrame) -> np.ndarray:
    """``gen``'s score of each (user_id, item_id, as_of) row; -inf where it has none."""
    out = np.full(frame.height, -np.inf)
    groups = frame.with_row_index("_row").group_by("user_id", maintain_order=True)
    agg = groups.agg("_row", "item_id", pl.col("as_of").first())
    for user_id, rows, items, when in agg.iter_rows():
        full = gen.user_scores(gen.data.user_index.get(str(user_id)), when)
        if full is None:
            continue
        idx = np.array([gen.data.item_index.get(str(i), -1) for i in items], dtype=np.int64)
        vals = np.where(idx >= 0, full[np.maximum(idx, 0)], -np.inf)
        out[np.asarray(rows)] = np.where(np.isfinite(vals), vals, -np.inf)
    return out


def list_frame(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    lists: pl.DataFrame,
    data: Interactions,
    text_index: Any | None,
) -> pl.DataFrame:
    """The lists' rows with the ranker's full features (candidate columns where the blender
    proposed the item, ``Blender.item_frame``'s otherwise), as of each user's test cut."""
    started = time.perf_counter()
    users = lists.select("user_id", "as_of").unique("user_id", keep="first", maintain_order=True)
    blender = Blender(
        default_generators(settings, text_index),
        n=settings.ranker.num_candidates,
        limits=candidate_limits(settings),
        weights=candidate_weights(settings),
    )
    blender.fit(data)
    pairs = lists.select("user_id", "item_id").unique(maintain_order=True)
    cands = blender.frame(users["user_id"].to_list(), as_of=users["as_of"].to_list()).join(
        pairs, on=["user_id", "item_id"], how="semi"
    )
    rest = (
        pairs.join(cands.select("user_id", "item_id"), on=["user_id", "item_id"], how="anti")
        .group_by("user_id", maintain_order=True)
        .agg("item_id")
        .join(users, on="user_id")
    )
    extra = blender.item_frame(
        rest["user_id"].to_list(), rest["item_id"].to_list(), as_of=rest["as_of"].to_list()
    )
    rows = pl.concat([cands, extra.cast(cands.schema)], how="vertical").join(users, on="user_id")
    text = TextFeatures(text_index, data) if text_index is not None else None
    feats = assemble(
        con,
        rows,
        events=rules.TRAIN_SCOPE.events,
        text=text,
        covisit_window_days=settings.ranker.covisit_window_days,
    ).drop("as_of")
    log.info(
        "held-out lists: %d rows, %d of their items among the candidates, in %.1fs",
        lists.height,
        cands.height,
        time.perf_counter() - started,
    )
    return lists.join(feats, on=["user_id", "item_id"], how="left", maintain_order="left")


def _champion(settings: Settings) -> tuple[dict[str, RankerModel], str, str | None]:
    """The champion ranker and its ablation, or why there is none; its version."""
    try:
        ref, path = registry.download(settings, rules.RANKER_MODEL_NAME)
    except ModelNotReadyError as exc:
        return {}, f"{exc}; run `recsys train ranker`", None
    models = {"ranker": RankerModel.load(path)}
    if (Path(path) / ABLATION_DIR).is_dir():
        models["ranker_no_text"] = RankerModel.load(Path(path) / ABLATION_DIR)
    return models, "", ref.version


def scorable_lists(lists: pl.DataFrame) -> int:
    """Lists with at least one click and one non-click (the ones the metrics average over)."""
    per = lists.group_by("request_id").agg(pl.col("label").sum().alias("c"), pl.len().alias("n"))
    return per.filter((pl.col("c") > 0) & (pl.col("c") < pl.col("n"))).height


def evaluate_impressions(
    settings: Settings, con: duckdb.DuckDBPyConnection, systems: Sequence[str] = SYSTEMS
) -> dict[str, Any]:
    """MIND metrics of ``systems`` on the held-out served lists; skipped systems say why."""
    started = time.perf_counter()
    apply_task(con, settings.task)
    ensure_split(con, settings.split)
    lists = heldout_lists(con)
    if scorable_lists(lists) == 0:
        raise EvaluationError(
            f"no held-out impression list has both a click and a non-click ({lists.height} "
            "impressions after the test cut): per-impression evaluation needs served lists "
            "in the split's test period (split.kind = 'global_time' puts the last "
            "split.test_days days there)"
        )
    out: dict[str, Any] = {
        "lists": int(lists["request_id"].n_unique()),
        "impressions": lists.height,
        "systems": {},
        "skipped": {},
    }
    models, reason, ranker_version = _champion(settings)
    ranker = models.get("ranker")
    version = ranker.text_model_version if ranker is not None else None
    text_index = load_text_index(settings, con, scope=rules.TRAIN_SCOPE.name, version=version)
    if ranker is not None and ranker.uses_text and text_index is None:
        reason = (
            f"the champion ranker uses text model {version}, whose train_v1 embeddings are "
            "missing: run `recsys score`"
        )
        models = {}
    # the candidates the champion was trained with (its number and per-generator caps)
    run_settings = dataset.spec_settings(settings, ranker.spec) if ranker is not None else settings
    data = Interactions.from_store(con, rules.TRAIN_SCOPE.events)
    frame = list_frame(con, run_settings, lists, data, text_index)
    for name in systems:
        scores = _system_scores(name, frame, data, con, models, text_index)
        if isinstance(scores, str):
            out["skipped"][name] = scores if scores else reason
            continue
        out["systems"][name] = score_lists(frame, scores)
        log.info("impressions %-15s %s", name, _rounded(out["systems"][name]))
    out["ranker_version"] = ranker_version
    out["text_model_version"] = text_index.model_version if text_index is not None else None
    out["seconds"] = round(time.perf_counter() - started, 2)
    return out


def _system_scores(
    name: str,
    frame: pl.DataFrame,
    data: Interactions,
    con: duckdb.DuckDBPyConnection,
    models: dict[str, RankerModel],
    text_index: Any | None,
) -> np.ndarray | str:
    """Scores of ``name`` for every row, or why it cannot run ('' : the champion's reason)."""
    if name == "popularity":
        return dense_scores(Popularity().fit(data), frame)
    if name == "tfidf":
        texts = item_texts(con)
        if not any(t.strip() for t in texts.values()):
            return "no item has any text: ingest items with a title or description"
        return dense_scores(TfidfProfile(texts).fit(data), frame)
    if name == "text_only":
        if text_index is None:
            return (
                "no text model embeddings for scope train_v1: run `recsys train text` "
                "and `recsys score`"
            )
        return frame["text_score"].fill_null(-np.inf).to_numpy()
    if name in ("ranker", "ranker_no_text"):
        model = models.get(name)
        if model is None:
            return "" if not models else "the champion ranker's run has no no-text ablation"
        return np.asarray(model.predict(feature_matrix(frame, model.feature_names)))
    return f"unknown system; choose from {', '.join(SYSTEMS)}"


def _rounded(m: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()}
