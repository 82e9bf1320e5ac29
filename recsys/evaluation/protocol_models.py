"""Protocol v1 rankings of the text and learned systems: tfidf, text_only, ranker_no_text, ranker.

Each returns ``(rankings, reason)``: ``rankings`` is None (and ``reason`` says what to run)
when the model it needs does not exist, so evaluation still produces the baselines.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from recsys.algorithms.candidates import TextNeighbours
from recsys.algorithms.ranking import feature_matrix
from recsys.algorithms.tfidf import TfidfProfile
from recsys.core import rules
from recsys.core.config import Settings
from recsys.core.errors import ModelNotReadyError
from recsys.evaluation.protocol_data import TOP, ProtocolData, generator_rankings
from training import registry
from training.ranker import dataset
from training.ranker.model import RankerModel
from training.ranker.run import ABLATION_DIR
from training.registry import load_text_index
from training.text.texts import item_texts

log = logging.getLogger(__name__)


def text_only_rankings(
    settings: Settings, con: duckdb.DuckDBPyConnection, data: ProtocolData
) -> tuple[dict[str, list[str]] | None, str]:
    """Rank the catalog by the champion text model's score (user vectors of scope train_v1)."""

    index = load_text_index(settings, con, scope=rules.TRAIN_SCOPE.name)
    if index is None:
        return None, (
            "no text model embeddings for scope train_v1: run `recsys train text` "
            "and `recsys score`"
        )
    return generator_rankings(TextNeighbours(index), data), ""


def tfidf_rankings(
    con: duckdb.DuckDBPyConnection, data: ProtocolData
) -> tuple[dict[str, list[str]] | None, str]:
    """Rank the catalog by the TF-IDF content profile of each user's train positives."""

    texts = item_texts(con)
    if not any(t.strip() for t in texts.values()):
        return None, "no item has any text: ingest items with a title or description"
    return generator_rankings(TfidfProfile(texts), data), ""


def _load_rankers(settings: Settings, state: dict[str, Any]) -> str:
    """Download the champion ranker (and its ablation) into ``state``; '' or why not."""

    if "models" in state:
        return state["models_reason"]
    state["models"] = {}
    try:
        ref, path = registry.download(settings, rules.RANKER_MODEL_NAME)
    except ModelNotReadyError as exc:
        state["models_reason"] = f"{exc}; run `recsys train ranker`"
        return state["models_reason"]
    state["models"]["ranker"] = RankerModel.load(path)
    if (Path(path) / ABLATION_DIR).is_dir():
        state["models"]["ranker_no_text"] = RankerModel.load(Path(path) / ABLATION_DIR)
    state["ranker_version"] = ref.version
    n = state["models"]["ranker"].spec.get("num_candidates", settings.ranker.num_candidates)
    key = rules.metric_name("candidate_recall", n, prefix="val_")
    val_recall = registry.run_metric(settings, ref.run_id, rules.mlflow_key(key))
    if val_recall is not None:
        state["val_candidate_recall"] = (key, val_recall)
    state["models_reason"] = ""
    return ""


def _test_frame(
    settings: Settings, con: duckdb.DuckDBPyConnection, data: ProtocolData, state: dict[str, Any]
) -> pl.DataFrame | str:
    """Candidates + features of every user at ``test_start`` (train events), built once."""

    if "frame" in state:
        return state["frame"]
    model = state["models"]["ranker"]
    index = None
    if model.uses_text:
        index = load_text_index(
            settings, con, scope=dataset.TEST.text_scope, version=model.text_model_version
        )
        if index is None:
            return (
                f"the champion ranker uses text model {model.text_model_version}, whose "
                "train_v1 embeddings are missing: run `recsys score`"
            )
    spec = model.spec
    run_settings = dataset.spec_settings(settings, spec)
    frame, _ = dataset.build_frame(
        con, run_settings, dataset.TEST, text_index=index, with_labels=False, users=data.users
    )
    truth = pl.DataFrame(
        [(u, i) for u in data.users for i in data.truth[u]],
        schema=["user_id", "item_id"],
        orient="row",
    )
    key = f"candidate_recall@{run_settings.ranker.num_candidates}"
    data.extra[key] = dataset.candidate_recall(frame, truth)
    log.info("test %s: %.4f", key, data.extra[key])
    state["frame"] = frame
    return frame


def ranker_rankings(
    settings: Settings,
    con: duckdb.DuckDBPyConnection,
    data: ProtocolData,
    state: dict[str, Any],
    *,
    ablation: bool,
) -> tuple[dict[str, list[str]] | None, str]:
    """Top 50 of the champion ranker (or its no-text ablation) over its candidates."""

    reason = _load_rankers(settings, state)
    if reason:
        return None, reason
    name = "ranker_no_text" if ablation else "ranker"
    model = state["models"].get(name)
    if model is None:
        return None, "the champion ranker's run has no no-text ablation; retrain the ranker"
    frame = _test_frame(settings, con, data, state)
    if isinstance(frame, str):
        return None, frame
    scores = model.predict(feature_matrix(frame, model.feature_names))
    top = (
        frame.select("user_id", "item_id", "blend_rank")
        .with_columns(pl.Series("s", scores))
        .sort(["user_id", "s", "blend_rank"], descending=[False, True, False])
        .group_by("user_id", maintain_order=True)
        .agg(pl.col("item_id").head(TOP))
    )
    data.extra.setdefault("ranker_version", state.get("ranker_version"))
    if "val_candidate_recall" in state:
        key, value = state["val_candidate_recall"]
        data.extra.setdefault(key, value)
    data.extra.setdefault("text_model_version", state["models"]["ranker"].text_model_version)
    return {u: list(items) for u, items in top.iter_rows()}, ""
