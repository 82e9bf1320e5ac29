"""LightGBM LambdaRank training on the protocol v1 fit/val frame, logged to MLflow.

Recipe (``recsys train ranker``):
1. build the fit frame (candidates and features before each user's ``val_start``, graded
   labels from the val part) -- ``training.ranker.dataset``;
2. hold out ``early_stopping_holdout`` of the users; train with early stopping on their
   NDCG@10; refit on every group for the best number of rounds;
3. train the same recipe without text features (the ``ranker_no_text`` ablation);
4. ``training.ranker.run``: the candidate is the ranker with text features only when they beat
   the ablation on the holdout users (otherwise the ablation: text has to earn its place); log
   parameters, metrics, gain importance (table + plot) and the models as LightGBM text files;
   register the candidate as ``ranker``; promote it through the gates of
   ``training.promotion`` (the best baseline on the same holdout, the current champion).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import polars as pl

from recsys.algorithms.candidates import candidate_limits, candidate_weights
from recsys.algorithms.metrics import ndcg_at_k
from recsys.algorithms.ranking import feature_matrix, feature_names
from recsys.core import compat, rules
from recsys.core.config import Settings
from recsys.core.errors import TrainingError
from training.ranker.model import RankerModel
from training.ranker.served import SERVED, group_columns

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    """One trained ranker and how it did on the held-out users."""

    model: RankerModel
    metrics: dict[str, float]
    importance: pl.DataFrame = field(default_factory=pl.DataFrame)
    holdout_users: list[str] = field(default_factory=list)  # the early-stopping users
    # per boosting iteration of the early-stopping fit: {"holdout_ndcg@10": [...]}
    curves: dict[str, list[float]] = field(default_factory=dict)


def lgb_params(settings: Settings) -> dict[str, Any]:
    r = settings.ranker
    return {
        "objective": "lambdarank",
        "metric": "ndcg",
        "eval_at": [10],
        "num_leaves": r.num_leaves,
        "learning_rate": r.learning_rate,
        "min_data_in_leaf": r.min_data_in_leaf,
        "feature_fraction": r.feature_fraction,
        "bagging_fraction": r.bagging_fraction,
        "bagging_freq": 1,
        "lambdarank_truncation_level": r.lambdarank_truncation_level,
        "seed": settings.seed,
        "deterministic": True,
        "num_threads": 2,
        "verbose": -1,
    }


def split_users(users: list[str], holdout: float, seed: int) -> set[str]:
    """The users (whole groups) held out for early stopping, seeded."""
    ordered = np.array(sorted(users), dtype=object)
    if len(ordered) < 2:
        raise TrainingError("need at least 2 users with positive labels to train the ranker")
    rng = np.random.default_rng(seed)
    n_hold = max(1, int(round(len(ordered) * holdout)))
    return set(rng.choice(ordered, size=min(n_hold, len(ordered) - 1), replace=False).tolist())


def _dataset(x: np.ndarray, frame: pl.DataFrame, names: list[str]) -> Any:
    """A LightGBM Dataset of ``x`` (rows of ``frame``, grouped by user); LightGBM bins it and
    drops its reference to the raw matrix (``free_raw_data``)."""
    lgb = compat.lightgbm()
    groups = frame.group_by(group_columns(frame), maintain_order=True).len()["len"].to_numpy()
    return lgb.Dataset(
        x, label=frame["label"].to_numpy(), group=groups, feature_name=names, free_raw_data=True
    )


@dataclass(frozen=True)
class Part:
    """Rows of the training frame and their feature matrix (groups contiguous)."""

    x: np.ndarray
    frame: pl.DataFrame
    names: list[str]

    def groups(self) -> np.ndarray:
        """Rows per query group, in frame order."""
        cols = group_columns(self.frame)
        return (
            self.frame.group_by(cols, maintain_order=True).len()["len"].to_numpy().astype(np.int64)
        )


@dataclass
class EarlyStopped:
    """The early-stopping fit: its booster, best round, holdout NDCG@10 there, curves."""

    booster: Any
    best_iteration: int
    best_score: float
    curves: dict[str, list[float]]


class Boosting(Protocol):
    """Where LambdaRank boosting runs: this process, or a cluster."""

    def early_stopped(
        self, params: dict[str, Any], train: Part, valid: Part, rounds: int, patience: int
    ) -> EarlyStopped: ...

    def refit(self, params: dict[str, Any], full: Part, rounds: int) -> Any: ...


class EmbeddedBoosting:
    """``lightgbm.train`` in this process (the default)."""

    def early_stopped(
        self, params: dict[str, Any], train: Part, valid: Part, rounds: int, patience: int
    ) -> EarlyStopped:
        lgb = compat.lightgbm()
        evals: dict[str, Any] = {}
        booster = lgb.train(
            params,
            _dataset(train.x, train.frame, train.names),
            num_boost_round=rounds,
            valid_sets=[_dataset(valid.x, valid.frame, valid.names)],
            valid_names=["holdout"],
            callbacks=[
                lgb.early_stopping(patience, verbose=False),
                lgb.record_evaluation(evals),
            ],
        )
        curves = {
            f"{name}_{metric}": [float(v) for v in values]
            for name, by_metric in evals.items()
            for metric, values in by_metric.items()
        }
        best = int(booster.best_iteration or booster.current_iteration())
        return EarlyStopped(booster, best, float(booster.best_score["holdout"]["ndcg@10"]), curves)

    def refit(self, params: dict[str, Any], full: Part, rounds: int) -> Any:
        lgb = compat.lightgbm()
        return lgb.train(params, _dataset(full.x, full.frame, full.names), num_boost_round=rounds)


def protocol_ndcg(
    frame: pl.DataFrame, scores: np.ndarray, truth: pl.DataFrame, k: int = 10
) -> float:
    """Binary NDCG@k of the candidates ranked by ``scores`` against ``truth`` positives, over
    the frame's users with >= 1 positive (positives outside the candidates count as misses)."""
    ranked = (
        frame.select("user_id", "item_id")
        .with_columns(pl.Series("s", scores))
        .sort(["user_id", "s"], descending=[False, True])
        .group_by("user_id", maintain_order=True)
        .agg(pl.col("item_id").head(k))
    )
    rel = truth.group_by("user_id").agg("item_id")
    rel_map = {u: set(items) for u, items in rel.iter_rows()}
    vals = [ndcg_at_k(items, rel_map[u], k) for u, items in ranked.iter_rows() if u in rel_map]
    return float(np.mean(vals)) if vals else 0.0


def fit(
    frame: pl.DataFrame,
    names: list[str],
    settings: Settings,
    truth: pl.DataFrame,
    spec: dict[str, Any],
    boosting: Boosting | None = None,
) -> FitResult:
    """Early-stopped LambdaRank on ``frame`` (groups with >= 1 positive label), then refit;
    the boosting runs in this process unless ``boosting`` says otherwise (a Dask cluster:
    ``training.ranker.distributed``)."""
    started = time.perf_counter()
    r, seed = settings.ranker, settings.seed
    useful = frame.filter((pl.col("label").max().over(group_columns(frame))) > 0)
    if useful.height == 0:
        raise TrainingError("no candidate has a positive label; check the split and candidates")
    held = split_users(useful["user_id"].unique().to_list(), r.early_stopping_holdout, seed)
    mask = useful["user_id"].is_in(list(held)).to_numpy()
    x = feature_matrix(useful, names)  # float32, built once; row subsets below
    valid = useful.filter(pl.Series(mask))
    params = lgb_params(settings)
    engine = boosting or EmbeddedBoosting()
    stopped = engine.early_stopped(
        params,
        Part(x[~mask], useful.filter(pl.Series(~mask)), names),
        Part(x[mask], valid, names),
        r.num_boost_round,
        r.early_stopping_rounds,
    )
    booster, best, lgb_ndcg = stopped.booster, stopped.best_iteration, stopped.best_score
    # the protocol's view of the held-out users: every val positive counts, not only candidates
    held_scores = np.asarray(booster.predict(x[mask], num_iteration=best))
    # the candidate groups only (what the product ranks), of the users whose candidate group
    # has a positive, whether or not served groups were added
    if SERVED in valid.columns:
        proposed = ~valid[SERVED]
        valid, held_scores = valid.filter(proposed), held_scores[proposed.to_numpy()]
    held_users = valid["user_id"].unique().to_list()
    val_ndcg = protocol_ndcg(valid, held_scores, truth.filter(pl.col("user_id").is_in(held_users)))
    full = engine.refit(params, Part(x, useful, names), best)
    del x
    importance = pl.DataFrame(
        {
            "feature": names,
            "gain": full.feature_importance(importance_type="gain").astype(float),
            "split": full.feature_importance(importance_type="split").astype(float),
        }
    ).sort("gain", descending=True)
    metrics = {
        rules.metric_name("ndcg", 10, prefix="val_"): val_ndcg,
        rules.metric_name("lgb_ndcg", 10, prefix="val_"): lgb_ndcg,
        "best_iteration": float(best),
        "train_groups": float(useful["user_id"].n_unique()),
        "train_rows": float(useful.height),
        "fit_seconds": time.perf_counter() - started,
    }
    log.info(
        "ranker (%d features): best iteration %d, holdout NDCG@10 %.4f (LightGBM %.4f)",
        len(names),
        best,
        val_ndcg,
        lgb_ndcg,
    )
    return FitResult(
        RankerModel(full, names, dict(spec)),
        metrics,
        importance,
        sorted(map(str, held)),
        stopped.curves,
    )


def train_both(
    frame: pl.DataFrame,
    generators: list[str],
    settings: Settings,
    truth: pl.DataFrame,
    text_version: str | None,
    boosting: Boosting | None = None,
) -> tuple[FitResult, FitResult]:
    """The product ranker (text features when a text model is given) and the no-text ablation
    (both boosted by ``boosting``: this process when None)."""
    base = {
        "generators": generators,
        "num_candidates": settings.ranker.num_candidates,
        "candidate_limits": candidate_limits(settings),
        "candidate_weights": candidate_weights(settings),
        "covisit_window_days": settings.ranker.covisit_window_days,
    }
    with_text = text_version is not None
    product = fit(
        frame,
        feature_names(generators, with_text=with_text, text_columns=settings.ranker.text_features),
        settings,
        truth,
        {**base, "uses_text": with_text, "text_model_version": text_version},
        boosting,
    )
    ablation = fit(
        frame,
        feature_names(generators, with_text=False),
        settings,
        truth,
        {**base, "uses_text": False, "text_model_version": None},
        boosting,
    )
    return product, ablation
