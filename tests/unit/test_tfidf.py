"""TF-IDF content profile (recsys.algorithms.tfidf): known answers on a hand-made catalog."""

from __future__ import annotations

from datetime import timedelta

import duckdb
import numpy as np
import polars as pl
import pytest

from feature_store.interactions import Interactions
from recsys.algorithms.tfidf import TfidfProfile, fit_item_vectors, profiles, recency_weights
from tests.factories import T0, load_into_store, make_catalog

TEXTS = {
    "1": "space robot adventure on a distant planet",
    "2": "space robot war between planets",
    "3": "cooking pasta in an italian kitchen",
    "4": "italian pasta cooking competition show",
    "5": "a lonely space robot finds love on a planet",
    "6": "documentary about bees",
}


def _store(store: duckdb.DuckDBPyConnection, liked: dict[str, list[str]]) -> Interactions:
    catalog = make_catalog(len(TEXTS)).with_columns(
        pl.Series("item_id", list(TEXTS)), pl.Series("title", list(TEXTS.values()))
    )
    rows = [
        {
            "event_id": f"{u}-{k}",
            "user_id": u,
            "item_id": item,
            "event_type": "rate",
            "value": 5.0,
            "text": None,
            "ts": T0 + timedelta(hours=k),
            "request_id": None,
            "position": None,
            "source": "t",
            "batch_id": "t",
        }
        for u, items in liked.items()
        for k, item in enumerate(items)
    ]
    load_into_store(store, catalog, pl.DataFrame(rows, schema_overrides={"position": pl.Int32}))
    return Interactions.from_store(store, "events")


def test_profile_picks_the_item_matching_what_the_user_liked(
    store: duckdb.DuckDBPyConnection,
) -> None:
    liked = {"space": ["1", "2"], "cook": ["3"], "cook_then_space": ["3", "1"]}
    data = _store(store, {**liked, "space_then_cook": ["1", "3"]})
    gen = TfidfProfile(TEXTS).fit(data)
    (space, _), (cook, _), (nobody, _) = gen.generate(["space", "cook", "nobody"], 3)
    assert space[0] == "5" and "1" not in space and "2" not in space  # seen items excluded
    assert cook[0] == "4"
    # with a steep decay the newer like decides
    recent = TfidfProfile(TEXTS, decay=0.5).fit(data)
    (a, _), (b, _) = recent.generate(["cook_then_space", "space_then_cook"], 1)
    assert list(a) == ["5"] and list(b) == ["4"]
    assert len(nobody) == 0  # no history, no profile: nothing proposed
    # the bee documentary shares no word with any profile: it scores 0 for everyone
    scores = gen.user_scores(data.user_index["space"], None)
    assert scores is not None and scores[data.item_index["6"]] == 0.0


def test_damping_one_is_plain_cosine_and_profile_is_weighted_mean() -> None:
    items = fit_item_vectors(list(TEXTS.values()))
    unit = items.unit.toarray()
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-6)
    prof = profiles(items.unit, [[0, 2], [], [3]]).toarray()
    w = recency_weights(2)
    assert w.tolist() == pytest.approx([0.98, 1.0])
    expected = w[0] * unit[0] + w[1] * unit[2]
    np.testing.assert_allclose(prof[0], expected / np.linalg.norm(expected), rtol=1e-5)
    assert not prof[1].any()  # empty history: a zero profile
    cosine = items.scoring_matrix(damping=1.0).toarray() @ prof[2]
    np.testing.assert_allclose(cosine, unit @ unit[3], rtol=1e-5)
    # damping < 1 multiplies each cosine by |item| ** (1 - damping): longer texts gain
    damped = items.scoring_matrix(damping=0.5).toarray() @ prof[2]
    np.testing.assert_allclose(damped, cosine * np.sqrt(items.norms), rtol=1e-5)


def test_catalog_without_text_is_refused(store: duckdb.DuckDBPyConnection) -> None:
    data = _store(store, {"space": ["1"]})
    with pytest.raises(ValueError, match="no item of the catalog has any text"):
        TfidfProfile({}).fit(data)
