"""TextIndex: numpy-only scoring over stored embeddings, and the evaluation metrics."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest

from feature_store.db import transaction
from feature_store.interactions import Interactions
from recsys.algorithms.ranking import TextFeatures
from recsys.algorithms.text_index import TextIndex, user_text_vector
from recsys.core.errors import ModelNotReadyError
from tests.conftest import REPO_ROOT
from tests.factories import T0
from training.text.evaluate import user_auc, user_ndcg
from training.text.scoring import delete_scope, insert_user_rows, top_n, write_item_embeddings

ITEMS = ["a", "b", "c", "d"]
ITEM_VECS = np.array([[1, 0], [0, 1], [0.6, 0.8], [-1, 0]], dtype=np.float32)


def _write(store, version: str = "1") -> None:
    write_item_embeddings(store, version, ITEMS, ITEM_VECS)
    users = np.array([[1, 0], [0, 1]], dtype=np.float32)
    top = top_n(["u1", "u2"], users, ITEMS, ITEM_VECS, {"u1": {"a"}}, n=2)
    with transaction(store):
        delete_scope(store, version, "live")
        insert_user_rows(
            store,
            version,
            "live",
            ["u1", "u2"],
            [datetime(2020, 1, 1)] * 2,
            users,
            top,
            replace=False,
        )


def test_index_scores_nearest_and_fallbacks(store) -> None:
    _write(store)
    index = TextIndex.load(store)
    assert (index.model_version, index.dim, index.user_ids) == ("1", 2, ["u1", "u2"])
    np.testing.assert_allclose(index.user_vector("u1"), [1, 0])
    assert index.user_vector("nobody") is None
    scores = index.scores(np.array([1, 0], dtype=np.float32), ["c", "zzz", "d"])
    np.testing.assert_allclose(scores[[0, 2]], [0.6, -1.0], rtol=1e-6)
    assert np.isnan(scores[1])
    ids, best = index.nearest(np.array([1, 0], dtype=np.float32), 2, exclude={"a"})
    assert list(ids) == ["c", "b"] and best[0] == pytest.approx(0.6)
    vecs, mask = index.item_vectors(["b", "x"])
    assert mask.tolist() == [True, False] and vecs[1].tolist() == [0, 0]
    hist = index.vector_from_history(["a", "b", "unknown"])
    np.testing.assert_allclose(hist, np.array([1, 1]) / np.sqrt(2), rtol=1e-6)
    assert index.vector_from_history(["unknown"]) is None


def test_top_n_written_excludes_engaged_items_and_replaces_rows(store) -> None:
    _write(store)
    _write(store)  # same version and scope: replaced, not duplicated
    rows = store.execute(
        "SELECT user_id, item_id, score FROM text_scores ORDER BY user_id, score DESC"
    ).fetchall()
    assert [(u, i) for u, i, _ in rows] == [("u1", "c"), ("u1", "b"), ("u2", "b"), ("u2", "c")]
    assert store.execute("SELECT count(*) FROM item_embeddings").fetchone() == (4,)


def test_top_n_skips_engaged_items_and_returns_fewer_when_few_are_left() -> None:
    users = np.array([[1, 0], [0, 1]], dtype=np.float32)
    top = top_n(["u1", "u2"], users, ITEMS, ITEM_VECS, {"u1": {"a", "b", "c"}, "u2": {"d"}}, 3)
    table = top.table().to_pydict()
    assert list(zip(table["user_id"], table["item_id"], strict=True)) == [
        ("u1", "d"),
        ("u2", "b"),
        ("u2", "c"),
        ("u2", "a"),
    ]
    np.testing.assert_allclose(table["score"], [-1.0, 1.0, 0.8, 0.0], atol=1e-6)
    assert len(top_n([], users[:0], ITEMS, ITEM_VECS, {}, 3)) == 0


def test_newest_version_is_loaded_and_missing_embeddings_are_clear(store) -> None:
    with pytest.raises(ModelNotReadyError, match="recsys score"):
        TextIndex.load(store)
    _write(store, "2")
    _write(store, "10")
    assert TextIndex.load(store).model_version == "10"
    with pytest.raises(ModelNotReadyError, match="version '3'"):
        TextIndex.load(store, "3")


def test_index_module_does_not_import_torch() -> None:
    code = "import sys, recsys.algorithms.text_index; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=False).returncode == 0


def test_auc_and_ndcg_on_known_rankings() -> None:
    labels = np.array([1, 0, 0, 1], dtype=np.float32)
    assert user_auc(np.array([0.9, 0.1, 0.2, 0.8]), labels) == 1.0
    assert user_auc(np.array([0.1, 0.9, 0.8, 0.2]), labels) == 0.0
    assert user_auc(np.array([0.5, 0.5, 0.5, 0.5]), labels) == 0.5
    assert user_auc(np.array([0.5, 0.5]), np.array([1, 1], dtype=np.float32)) is None
    assert user_ndcg(np.array([0.9, 0.1, 0.2, 0.8]), labels) == pytest.approx(1.0)
    # positives ranked 2nd and 3rd: (1/log2(3) + 1/log2(4)) / (1 + 1/log2(3))
    got = user_ndcg(np.array([0.8, 0.9, 0.1, 0.2]), labels)
    assert got == pytest.approx((1 / np.log2(3) + 1 / np.log2(4)) / (1 + 1 / np.log2(3)))


def test_user_text_vector_prefers_history_then_stored_then_positives(store) -> None:
    _write(store)
    store.execute(
        "INSERT INTO events VALUES "
        "('e1', 'u3', 'b', 'rate', 5.0, NULL, ?, NULL, NULL, 't', 't', NULL)",
        [T0],
    )
    index = TextIndex.load(store)
    data = Interactions.from_store(store)
    # a given history wins: its latest `recent` items, normalized mean
    np.testing.assert_allclose(
        user_text_vector(index, "u1", data, history=["d", "a", "b"], recent=2),
        [np.sqrt(0.5), np.sqrt(0.5)],
        rtol=1e-6,
    )
    # no history: the stored vector
    np.testing.assert_allclose(user_text_vector(index, "u2", data), [0.0, 1.0])
    # nothing stored: the user's positive items in the data
    np.testing.assert_allclose(user_text_vector(index, "u3", data), [0.0, 1.0])
    assert user_text_vector(index, "u3") is None  # and without data, nothing
    assert user_text_vector(index, None, data) is None


def test_recent_positives_are_time_ordered_and_feed_the_similarity_features(store) -> None:
    _write(store)
    # u3 likes a, b, c, then a again; the 2.0 rating of d is not a positive
    rows = [("e1", "a", 5.0, 0), ("e2", "b", 4.0, 1), ("e3", "c", 4.5, 2), ("e4", "d", 2.0, 3)]
    rows.append(("e5", "a", 4.0, 4))
    for event_id, item, value, day in rows:
        store.execute(
            "INSERT INTO events VALUES "
            "(?, 'u3', ?, 'rate', ?, NULL, ?, NULL, NULL, 't', 't', NULL)",
            [event_id, item, value, T0 + timedelta(days=day)],
        )
    data = Interactions.from_store(store)
    latest = data.recent_positive_items("u3", 2)
    # distinct items at their latest time, oldest first: c (day 2), a (day 4)
    assert list(data.item_ids[latest]) == ["c", "a"]
    assert list(data.item_ids[data.recent_positive_items("u3", 10)]) == ["b", "c", "a"]
    assert len(data.recent_positive_items("nobody", 5)) == 0

    text = TextFeatures(TextIndex.load(store), data, recent=2)
    frame = pl.DataFrame({"user_id": ["u3", "u3", "u3", "u9"], "item_id": ["b", "d", "zz", "b"]})
    sims = text.similarities(frame)
    # history c = (0.6, 0.8), a = (1, 0): b -> max(0.8, 0) = 0.8, last (a) 0; d -> max(-0.6, -1)
    np.testing.assert_allclose(sims["text_sim_max"][:2], [0.8, -0.6], rtol=1e-6)
    np.testing.assert_allclose(sims["text_sim_last"][:2], [0.0, -1.0], atol=1e-6)
    # an unknown item and a user without history have no similarity
    assert np.isnan(sims["text_sim_max"][2:]).all() and np.isnan(sims["text_sim_last"][2:]).all()
    # a request's own history overrides the store's
    given = text.similarities(frame.head(2), {"u3": ["b"]})
    np.testing.assert_allclose(given["text_sim_max"], [1.0, 0.0], atol=1e-6)
