"""LambdaRank boosting on a Dask cluster (``lightgbm.dask.DaskLGBMRanker``, data-parallel).

The training frame is cut into one partition per worker at user boundaries (every row of a
user, all their query groups, in one partition: LambdaRank's gradients are per group).  The
parameters are the embedded path's (``training.ranker.train.lgb_params``); the result is a
plain LightGBM ``Booster``, saved and registered exactly as the embedded model.

``DaskLGBMRanker`` has no early stopping, so the early-stopping fit boosts all
``ranker.num_boost_round`` rounds on the fit users, computes the holdout users' NDCG@10 after
every round here (one tree at a time) and applies LightGBM's own rule to that curve
(``ranker.early_stopping_rounds`` rounds without improvement); the refit on every user then
runs the chosen number of rounds on the cluster.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np

from training import cluster
from training.ranker.train import EarlyStopped, Part

log = logging.getLogger(__name__)

# lgb_params keys the scikit-learn interface names differently; num_threads is set per worker
# by lightgbm.dask (from the worker's threads); eval_at is a fit argument there
_SKLEARN_NAMES = {
    "min_data_in_leaf": "min_child_samples",
    "feature_fraction": "colsample_bytree",
    "bagging_fraction": "subsample",
    "bagging_freq": "subsample_freq",
    "seed": "random_state",
}
_DROPPED = {"num_threads", "eval_at"}


class DaskBoosting:
    """``training.ranker.train.Boosting`` on the workers of ``client``, the frame cut into
    ``partitions`` blocks (None: one per worker; 1 trains on one worker, tree for tree what
    ``lightgbm.train`` builds)."""

    def __init__(self, client: Any, partitions: int | None = None) -> None:
        self.client = client
        self.partitions = partitions

    def early_stopped(
        self, params: dict[str, Any], train: Part, valid: Part, rounds: int, patience: int
    ) -> EarlyStopped:
        booster = self._boost(params, train, rounds)
        k = int(params.get("eval_at", [10])[0])
        curve = ndcg_curve(booster, valid.x, valid.frame["label"].to_numpy(), valid.groups(), k)
        best, score = early_stopping_best(curve, patience)
        # recorded up to where lightgbm.early_stopping would have stopped, like the embedded run
        seen = curve[: best + patience] if patience else curve
        return EarlyStopped(booster, best, score, {f"holdout_ndcg@{k}": seen.tolist()})

    def refit(self, params: dict[str, Any], full: Part, rounds: int) -> Any:
        return self._boost(params, full, rounds)

    def _boost(self, params: dict[str, Any], part: Part, rounds: int) -> Any:
        lgb_dask = cluster.lightgbm_dask()
        n_parts = self.partitions or cluster.worker_count(self.client)
        x, y, group = partitioned(self.client, part, n_parts)
        model = lgb_dask.DaskLGBMRanker(
            client=self.client, n_estimators=rounds, **sklearn_params(params)
        )
        with warnings.catch_warnings():
            # the scikit-learn interface always carries n_jobs; lightgbm.dask sets the threads
            # per worker itself and warns that it drops it, whatever the caller passed
            warnings.filterwarnings("ignore", "Parameter n_jobs will be ignored", UserWarning)
            model.fit(
                x, y, group=group, feature_name=part.names, eval_at=params.get("eval_at", [10])
            )
        booster = model.to_local().booster_
        log.info(
            "boosted %d rounds on %d Dask partitions (%d rows)",
            booster.current_iteration(),
            x.numblocks[0],
            part.x.shape[0],
        )
        return booster


def sklearn_params(params: dict[str, Any]) -> dict[str, Any]:
    """``lgb_params`` as ``DaskLGBMRanker`` keyword arguments (same values, sklearn names)."""
    return {
        _SKLEARN_NAMES.get(key, key): value for key, value in params.items() if key not in _DROPPED
    }


def partitioned(client: Any, part: Part, n_parts: int) -> tuple[Any, Any, Any]:
    """Dask arrays (features, labels, group sizes) in about ``n_parts`` row blocks of similar
    size, cut only where the user changes, so each user's groups stay in one block.  Block k
    is scattered to worker k (round robin): left to the scheduler, small blocks may all land on
    one worker, and LightGBM then trains on one machine."""
    da = cluster.dask_array()
    sizes = part.groups()
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    users = part.frame["user_id"].to_numpy()[starts]
    bounds = np.concatenate([[0], user_cuts(sizes, users, n_parts), [len(sizes)]])
    rows = np.concatenate([[0], np.cumsum(sizes)])[bounds]
    labels = part.frame["label"].to_numpy()
    workers = sorted(client.scheduler_info()["workers"])
    xs, ys, gs = [], [], []
    for k in range(len(bounds) - 1):
        lo, hi, g_lo, g_hi = int(rows[k]), int(rows[k + 1]), int(bounds[k]), int(bounds[k + 1])
        where = [workers[k % len(workers)]]
        x_k, y_k, g_k = client.scatter(
            [part.x[lo:hi], labels[lo:hi], sizes[g_lo:g_hi]], workers=where
        )
        xs.append(da.from_delayed(x_k, shape=(hi - lo, part.x.shape[1]), dtype=part.x.dtype))
        ys.append(da.from_delayed(y_k, shape=(hi - lo,), dtype=labels.dtype))
        gs.append(da.from_delayed(g_k, shape=(g_hi - g_lo,), dtype=sizes.dtype))
    return da.concatenate(xs), da.concatenate(ys), da.concatenate(gs)


def user_cuts(sizes: np.ndarray, users: np.ndarray, n_parts: int) -> np.ndarray:
    """Group indices where a new block starts: near equal row counts, never inside a user."""
    if n_parts <= 1 or len(sizes) < 2:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(sizes)
    new_user = np.flatnonzero(users[1:] != users[:-1]) + 1  # group indices that start a user
    targets = ends[-1] * np.arange(1, n_parts) / n_parts
    # the first user start whose rows before it reach each target
    at = np.searchsorted(ends[new_user - 1], targets)
    picked = new_user[np.clip(at, 0, len(new_user) - 1)] if len(new_user) else np.zeros(0)
    return np.unique(picked.astype(np.int64))


def ndcg_curve(
    booster: Any, x: np.ndarray, labels: np.ndarray, groups: np.ndarray, k: int
) -> np.ndarray:
    """LightGBM's ``ndcg@k`` (gain 2^label - 1; a group without positives counts 1) of the
    groups after each boosting round, adding one tree's scores at a time."""
    width = int(groups.max())
    # groups as rows of a padded matrix: padding scores -inf and gains 0
    row = np.repeat(np.arange(len(groups)), groups)
    col = np.arange(len(labels)) - np.repeat(np.cumsum(groups) - groups, groups)
    gains = np.zeros((len(groups), width))
    gains[row, col] = np.power(2.0, labels.astype(np.float64)) - 1.0
    top = min(k, width)
    discount = 1.0 / np.log2(np.arange(2, top + 2))
    ideal = -np.sort(-gains, axis=1)[:, :top] @ discount
    has_positive = ideal > 0
    scores = np.full((len(groups), width), -np.inf)
    scores[row, col] = 0.0
    curve = np.zeros(booster.current_iteration())
    for r in range(len(curve)):
        scores[row, col] += booster.predict(x, start_iteration=r, num_iteration=1, raw_score=True)
        best = np.argsort(-scores, axis=1, kind="stable")[:, :top]
        dcg = np.take_along_axis(gains, best, axis=1) @ discount
        per_group = np.where(has_positive, dcg / np.where(has_positive, ideal, 1.0), 1.0)
        curve[r] = float(per_group.mean())
    return curve


def early_stopping_best(curve: np.ndarray, patience: int) -> tuple[int, float]:
    """(best round, 1-based; its score) by ``lightgbm.early_stopping``'s rule: stop after
    ``patience`` rounds without a strictly better score (0: no stopping, the best of all)."""
    best, best_at = -np.inf, 0
    for i, value in enumerate(curve):
        if value > best:
            best, best_at = float(value), i
        elif patience and i - best_at >= patience:
            break
    return best_at + 1, best
