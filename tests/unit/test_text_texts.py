"""Text building: item texts fall back to what exists; user texts are newest-first and point in
time; training pairs never see validation or test events."""

from __future__ import annotations

from datetime import datetime

import polars as pl
import pytest

from feature_store.splits import materialize_protocol_split
from recsys.core.errors import TrainingError
from tests.factories import load_into_store, make_catalog, make_events
from training.text.pairs import build_training_pairs
from training.text.texts import (
    ItemSummaries,
    UserHistory,
    compose_item_text,
    compose_user_text,
    item_summaries,
    item_texts,
    user_texts,
)


def test_item_text_uses_every_field_in_order() -> None:
    row = {
        "title": "Alien",
        "year": 1979,
        "genres": ["Horror", "Sci-Fi"],
        "description": "A crew meets a creature.",
        "tagline": "In space no one can hear you scream.",
        "keywords": ["space"],
        "tags": ["scary"],
        "director": "Ridley Scott",
    }
    text = compose_item_text(row)
    assert text == (
        "Alien (1979) Genres: Horror, Sci-Fi. A crew meets a creature. In space no one "
        "can hear you scream. Keywords: space. Tags: scary. Director: Ridley Scott."
    )


def test_item_text_of_a_product_or_news_item_uses_its_own_fields() -> None:
    row = {
        "title": "Trail shoe",
        "category": "Footwear",
        "genres": None,
        "description": "Light and waterproof.",
        "tags": ["running", "outdoor"],
    }
    assert compose_item_text(row) == (
        "Trail shoe Category: Footwear. Light and waterproof. Tags: running, outdoor."
    )
    # a film keeps its genres (its category is its first genre): MovieLens text is unchanged
    assert "Category" not in compose_item_text({"title": "A", "genres": ["X"], "category": "X"})


@pytest.mark.parametrize(
    "row",
    [
        {"title": "Only Title"},
        {
            "title": "Only Title",
            "year": None,
            "genres": None,
            "description": None,
            "keywords": [],
            "tags": None,
            "director": "N/A",
            "tagline": "",
        },
    ],
)
def test_item_text_with_missing_fields_falls_back_to_the_title(row: dict) -> None:
    assert compose_item_text(row) == "Only Title"


def test_item_texts_from_store_cover_every_item(store) -> None:
    load_into_store(store, make_catalog(12), make_events(3, 12, 5))
    texts = item_texts(store)
    assert len(texts) == 12
    assert texts["i5"].startswith("Sci-Fi Story 5")  # item 5 has no description
    assert "A comedy film about thing 1." in texts["i1"]
    assert set(item_texts(store, ["i1", "i2"])) == {"i1", "i2"}


def test_user_text_is_newest_first_with_notes_and_a_cap() -> None:
    summaries = ItemSummaries(
        short={"a": "A", "b": "B", "c": "C"},
        with_overview={"a": "A: about a", "b": "B: about b", "c": "C: about c"},
    )
    text = compose_user_text(["c", "b", "a"], summaries, ["funny", "funny", "dark"], max_items=2)
    assert text == "My tags: funny, dark. Liked: C: about c; B: about b."
    assert compose_user_text([], summaries) == ""


def test_history_text_before_is_point_in_time() -> None:
    summaries = ItemSummaries(short={"a": "A", "b": "B"}, with_overview={"a": "A", "b": "B"})
    hist = UserHistory(
        liked=[(datetime(2020, 1, 1), "a"), (datetime(2020, 1, 3), "b")],
        notes=[(datetime(2020, 1, 2), "tense")],
    )
    assert hist.text_before(datetime(2020, 1, 1), summaries, 5) == ""
    assert hist.text_before(datetime(2020, 1, 3), summaries, 5) == "My tags: tense. Liked: A."
    assert hist.text_before(None, summaries, 5) == "My tags: tense. Liked: B; A."


def test_user_texts_only_count_positive_engagement(store) -> None:
    load_into_store(store, make_catalog(12), make_events(2, 12, 8))
    texts = user_texts(store, ["u0", "u1"], "events", max_items=50)
    summaries = item_summaries(store)
    liked = store.execute(
        "SELECT item_id FROM events WHERE user_id = 'u0' AND value >= 4 ORDER BY ts DESC"
    ).fetchall()
    disliked = store.execute(
        "SELECT item_id FROM events WHERE user_id = 'u0' AND value < 4"
    ).fetchall()
    for (item,) in liked:
        assert summaries.short[item] in texts["u0"]
    for (item,) in disliked:
        assert summaries.short[item] + " " not in texts["u0"] + " "


def test_training_pairs_never_see_validation_or_test_events(store, settings) -> None:
    load_into_store(store, make_catalog(30), make_events(12, 30, 15))
    materialize_protocol_split(store)
    pairs = build_training_pairs(store, settings)
    counts = pairs.counts()
    assert counts["positive"] > 0 and counts["sampled"] > 0 and counts["low_rating"] > 0
    summaries = item_summaries(store)
    held_out = store.execute("SELECT user_id, item_id FROM split_v1 WHERE part <> 'fit'").fetchall()
    by_user: dict[str, set[str]] = {}
    for u, i in held_out:
        by_user.setdefault(u, set()).add(i)
    for user, text, item, label in zip(
        pairs.user_ids, pairs.user_texts, pairs.item_ids, pairs.labels, strict=True
    ):
        assert not (label > 0 and item in by_user.get(user, set()))
        for other in by_user.get(user, set()):
            assert summaries.short[other] not in text
    capped = build_training_pairs(store, settings, max_pairs=20)
    assert len(capped) == 20


def test_one_class_and_empty_training_sets_are_clear_errors(store, settings) -> None:
    with pytest.raises(TrainingError, match="no positive"):
        build_training_pairs(store, settings, relation="events")
    # One user who loved every item of a 3-item catalog: no negative of any kind exists.
    events = make_events(1, 3, 3).with_columns(pl.lit(5.0).alias("value"))
    load_into_store(store, make_catalog(3), events)
    with pytest.raises(TrainingError, match="one-class"):
        build_training_pairs(store, settings, relation="events")
