"""Ranker dataset building, LambdaRank training, the model file format, and protocol scoring."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest

from feature_store.db import connect
from feature_store.splits import materialize_protocol_split
from recsys.algorithms.ranking import (
    TEXT_FEATURES,
    add_text_features,
    feature_matrix,
    feature_names,
)
from recsys.algorithms.text_index import TextIndex
from recsys.core.config import Settings, load_settings
from recsys.core.errors import ConfigError, ModelNotReadyError
from tests.factories import GENRES, load_into_store, make_catalog, make_events
from training.ranker import dataset
from training.ranker.model import RankerModel
from training.ranker.train import fit, protocol_ndcg, train_both

N_ITEMS = 36


def small_settings(home: Path) -> Settings:
    return load_settings(
        environ={},
        overrides={
            "home": str(home),
            "ranker.num_candidates": 20,
            "ranker.min_data_in_leaf": 2,
            "ranker.num_boost_round": 30,
            "ranker.early_stopping_rounds": 5,
            "ranker.num_leaves": 7,
            "ranker.early_stopping_holdout": 0.25,
        },
    )


def genre_index(scope: str) -> TextIndex:
    matrix = np.zeros((N_ITEMS, len(GENRES)), dtype=np.float32)
    matrix[np.arange(N_ITEMS), np.arange(N_ITEMS) % len(GENRES)] = 1.0
    return TextIndex("7", [f"i{k}" for k in range(N_ITEMS)], matrix, scope=scope)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, duckdb.DuckDBPyConnection]:
    settings = small_settings(tmp_path_factory.mktemp("ranker") / "home")
    con = connect(settings.db_path)
    load_into_store(
        con, make_catalog(N_ITEMS), make_events(n_users=30, n_items=N_ITEMS, events_per_user=24)
    )
    materialize_protocol_split(con)
    return settings, con


def test_fit_frame_groups_features_and_labels(
    env: tuple[Settings, duckdb.DuckDBPyConnection],
) -> None:
    settings, con = env
    frame, gens = dataset.build_frame(con, settings, dataset.FIT, text_index=genre_index("fit_v1"))
    assert "text" in gens
    assert frame.group_by("user_id").len()["len"].max() <= 20
    assert frame.select("user_id", "item_id").is_unique().all()
    # no candidate was already seen in the fit part
    seen = con.execute("SELECT user_id, item_id FROM split_v1 WHERE part = 'fit'").pl()
    assert frame.join(seen, on=["user_id", "item_id"], how="inner").height == 0
    # labels: graded from the val part only (factory ratings >= 4 are 4.0/4.5/5.0)
    val = con.execute("SELECT user_id, item_id, rating FROM split_v1 WHERE part = 'val'").pl()
    joined = frame.join(val, on=["user_id", "item_id"], how="left")
    expected = (
        pl.when(pl.col("rating") >= 4.5).then(3).when(pl.col("rating") >= 4.0).then(2).otherwise(0)
    )
    assert (joined["label"] == joined.select(expected.alias("e"))["e"]).all()
    assert frame["label"].max() == 3
    # text score: the user's text vector is their liked genre, so liked-genre items score 1
    assert frame["text_score"].drop_nulls().is_in([0.0, 1.0]).all()
    x = feature_matrix(frame, feature_names(gens, with_text=True))
    assert x.dtype == np.float32 and x.shape == (
        frame.height,
        len(feature_names(gens, with_text=True)),
    )


def test_feature_names_without_text_drop_every_text_column() -> None:
    names = feature_names(["covisit", "text", "text_cold"], with_text=False)
    assert not set(names) & set(TEXT_FEATURES)
    assert not [n for n in names if "text" in n]
    assert "gen_text_cold_rank" in feature_names(["covisit", "text_cold"], with_text=True)
    assert {"gen_covisit_rank", "blend_rank", "item_events_7d"} <= set(names)


def test_text_score_features_rank_within_each_user() -> None:
    frame = pl.DataFrame({"user_id": ["a", "a", "a", "b", "b"], "item_id": list("xyzxy")})
    out = add_text_features(frame, np.array([0.1, 0.3, np.nan, 0.9, 0.2]))
    assert out["text_score_pct"].to_list() == [0.5, 1.0, None, 1.0, 0.5]
    assert out["text_score_rel"].to_list()[:2] == pytest.approx([-0.1, 0.1])
    names = feature_names(["text"], with_text=True, text_columns=("text_score_pct",))
    assert "text_score_pct" in names and "text_score_rel" not in names
    with pytest.raises(ConfigError, match="text_score_pct"):
        feature_names(["text"], with_text=True, text_columns=("text_rank",))


def test_train_ranks_liked_items_first_and_round_trips(
    env: tuple[Settings, duckdb.DuckDBPyConnection], tmp_path: Path
) -> None:
    settings, con = env
    frame, gens = dataset.build_frame(con, settings, dataset.FIT, text_index=genre_index("fit_v1"))
    truth = dataset.positives(con, "val")
    product, ablation = train_both(frame, gens, settings, truth, text_version="7")
    assert product.model.uses_text and not ablation.model.uses_text
    assert "text_score" in product.model.feature_names
    assert "text_score" not in ablation.model.feature_names
    assert set(product.importance["feature"]) == set(product.model.feature_names)
    x = feature_matrix(frame, product.model.feature_names)
    scores = product.model.predict(x)
    saved = product.model.save(tmp_path / "m")
    loaded = RankerModel.load(saved)
    assert loaded.feature_names == product.model.feature_names
    assert loaded.text_model_version == "7"
    np.testing.assert_allclose(loaded.predict(x), scores, rtol=1e-6)
    contrib = loaded.contributions(x[:3])
    np.testing.assert_allclose(contrib.sum(axis=1), scores[:3], rtol=1e-5, atol=1e-6)
    top = loaded.top_contributions(x[:2], top=5)
    assert all(len(t) == 5 for t in top)


def test_protocol_ndcg_counts_missing_positives_as_misses() -> None:
    frame = pl.DataFrame({"user_id": ["u", "u"], "item_id": ["a", "b"]})
    truth = pl.DataFrame({"user_id": ["u", "u"], "item_id": ["b", "zz"]})
    # b ranked first; zz never proposed -> ideal has 2 hits
    expected = 1.0 / (1.0 + 1.0 / np.log2(3))
    assert protocol_ndcg(frame, np.array([0.1, 0.9]), truth) == pytest.approx(expected)


def test_model_dir_without_files_is_not_ready(tmp_path: Path) -> None:
    with pytest.raises(ModelNotReadyError, match="recsys train ranker"):
        RankerModel.load(tmp_path)


def _make_ranking(n_users: int, seed: int) -> pl.DataFrame:
    """LightGBM ``make_ranking`` style: 8 candidates per user, one relevant feature.

    ``text_score`` decides the grade (3 above 0.8, 1 in (0.4, 0.8], else 0) and exactly one
    candidate per user is above 0.8; ``item_events_7d`` is noise.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        text = np.concatenate([[rng.uniform(0.85, 1.0)], rng.uniform(0.0, 0.75, size=7)])
        rng.shuffle(text)
        for k, t in enumerate(text):
            label = 3 if t > 0.8 else (1 if t > 0.4 else 0)
            rows.append(
                {
                    "user_id": f"u{u:03d}",
                    "item_id": f"u{u}-i{k}",
                    "text_score": float(t),
                    "item_events_7d": float(rng.integers(0, 50)),
                    "label": label,
                }
            )
    return pl.DataFrame(rows)


def test_lambdarank_puts_the_known_winner_first(tmp_path: Path) -> None:
    settings = small_settings(tmp_path / "home")
    train = _make_ranking(60, seed=1)
    truth = train.filter(pl.col("label") == 3).select("user_id", "item_id")
    names = ["text_score", "item_events_7d"]
    result = fit(train, names, settings, truth, {"uses_text": True})
    test = _make_ranking(20, seed=2)
    scores = result.model.predict(feature_matrix(test, names))
    ranked = (
        test.with_columns(pl.Series("score", scores))
        .sort(["user_id", "score"], descending=[False, True])
        .group_by("user_id", maintain_order=True)
        .first()
    )
    winners = test.filter(pl.col("label") == 3).select("user_id", "item_id").sort("user_id")
    assert ranked.select("user_id", "item_id").equals(winners)
    assert result.metrics["val_ndcg@10"] == pytest.approx(1.0)
    assert result.importance["feature"][0] == "text_score"
