"""The request path on parts assembled by hand: no registry, no MLflow, no trained champion.

Six items, four users, every rating 5 except u3's 3.0 (not positive): positives per item are
i0: 3, i2: 2, i1: 1, i3: 1, i4: 0, i5: 0.  The ranker is a real LightGBM model on the single
feature ``item_positives_all`` whose score grows with it, so every right answer is known.
"""

from __future__ import annotations

from datetime import timedelta

import duckdb
import lightgbm as lgb
import numpy as np
import polars as pl
import pytest

from feature_store.interactions import Interactions, item_titles
from recsys.algorithms.candidates import Blender, Popularity
from recsys.core.config import Settings
from recsys.pipeline.recommender import Recommender
from tests.factories import T0, load_into_store, make_catalog
from training.ranker.model import RankerModel

RATINGS = [
    ("u0", "i0", 5.0),
    ("u0", "i1", 5.0),
    ("u1", "i0", 5.0),
    ("u1", "i2", 5.0),
    ("u2", "i0", 5.0),
    ("u2", "i2", 5.0),
    ("u2", "i3", 5.0),
    ("u3", "i4", 3.0),
]


def _events() -> pl.DataFrame:
    rows = [
        {
            "event_id": f"e{k}",
            "user_id": user,
            "item_id": item,
            "event_type": "rate",
            "value": value,
            "text": None,
            "ts": T0 + timedelta(hours=k),
            "request_id": None,
            "position": None,
            "source": "test",
            "batch_id": "test",
        }
        for k, (user, item, value) in enumerate(RATINGS)
    ]
    return pl.DataFrame(rows, schema_overrides={"position": pl.Int32})


def _popularity_ranker() -> RankerModel:
    """LightGBM on one feature with label = the feature: more positives, higher score."""
    x = np.tile(np.arange(4, dtype=np.float64), 5).reshape(-1, 1)
    params = {
        "objective": "regression",
        "min_data_in_leaf": 1,
        "min_data_in_bin": 1,
        "num_leaves": 4,
        "learning_rate": 0.5,
        "verbose": -1,
        "num_threads": 1,
        "seed": 0,
    }
    names = ["item_positives_all"]
    booster = lgb.train(params, lgb.Dataset(x, x.ravel(), feature_name=names), 20)
    return RankerModel(booster, names, {"generators": ["popularity"]})


@pytest.fixture
def recommender(settings: Settings, store: duckdb.DuckDBPyConnection) -> Recommender:
    load_into_store(store, make_catalog(6), _events())
    data = Interactions.from_store(store, "events")
    blender = Blender([Popularity()], n=10).fit(data)
    return Recommender(
        settings,
        _popularity_ranker(),
        data,
        blender,
        None,
        {"ranker": "test"},
        T0 + timedelta(days=1),
        titles=item_titles(store),
    )


def test_known_user_gets_unseen_items_by_model_score(recommender: Recommender) -> None:
    result = recommender.recommend("u0", 4, explain=True)
    assert [r.item_id for r in result.items] == ["i2", "i3", "i4", "i5"]
    assert [r.rank for r in result.items] == [1, 2, 3, 4]
    assert not result.cold_start and result.model_versions == {"ranker": "test"}
    assert result.items[0].title == "Drama Story 2"
    assert all(set(r.contributions or {}) == {"item_positives_all"} for r in result.items)
    with_seen = recommender.recommend("u0", 2, exclude_seen=False)
    assert [r.item_id for r in with_seen.items] == ["i0", "i2"]


def test_unknown_user_gets_the_popularity_list(recommender: Recommender) -> None:
    result = recommender.recommend("nobody", 3)
    assert result.cold_start
    assert [r.item_id for r in result.items] == ["i0", "i2", "i1"]


def test_rank_reorders_known_candidates_and_reports_unknown(recommender: Recommender) -> None:
    result = recommender.rank(["i5", "zzz", "i2", "i3"], 3, user_id="u0")
    assert [r.item_id for r in result.items] == ["i2", "i3", "i5"]
    assert result.unknown_items == ("zzz",)
    assert recommender.known_items(["i1", "x"]) == (["i1"], ["x"])
    assert recommender.known_user("u3") and not recommender.known_user("u9")


def test_rank_scores_items_outside_the_candidates_like_training(
    recommender: Recommender,
) -> None:
    """Supplied items the blender did not propose get the dense generators' scores and no
    ranks (``Blender.item_frame``), as served items had in ranker training."""
    cands = recommender.candidates("u0")
    outside = [i for i in ["i0", "i1", "i2", "i3", "i4", "i5"] if i not in cands["item_id"]]
    inside = cands["item_id"].to_list()[:1]
    frame = pl.DataFrame({"user_id": ["u0"] * 2, "item_id": [*inside, *outside[:1]]})
    assert outside, "the fixture's candidates must leave an item out"
    rows = recommender._rank_rows("u0", frame)
    by_item = {r["item_id"]: r for r in rows.iter_rows(named=True)}
    assert by_item[inside[0]]["blend_rank"] is not None
    assert by_item[outside[0]]["blend_rank"] is None
    assert by_item[outside[0]]["gen_popularity_rank"] is None
    assert by_item[outside[0]]["gen_popularity_score"] is not None
