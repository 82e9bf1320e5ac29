"""``Interactions.latest_positives`` (memory) gives what ``recent_positives`` (SQL) gives."""

from __future__ import annotations

from datetime import datetime

import duckdb
import numpy as np
import pytest

from feature_store.ingest import ingest_event_records
from feature_store.interactions import Interactions, recent_positives
from feature_store.task import apply_task
from recsys.core.config import Settings
from tests.factories import click_record, make_catalog

# (user, item, event type, minute): ties in time, an item clicked twice, ids whose string
# order ("i10" < "i9") is not the catalog's numeric order, a user with no positive at all
LOG = [
    ("a", "i9", "click", 1),
    ("a", "i10", "click", 1),
    ("a", "i2", "click", 1),
    ("a", "i3", "click", 2),
    ("a", "i9", "click", 3),
    ("a", "i11", "impression", 4),
    ("b", "i1", "click", 5),
    ("c", "i4", "impression", 6),
]


@pytest.fixture
def data(store: duckdb.DuckDBPyConnection, settings: Settings) -> Interactions:
    store.register("_items", make_catalog(12).to_arrow())
    store.execute("INSERT INTO items BY NAME SELECT * FROM _items")
    records = [
        click_record(f"e{k}", user, item, event_type=kind, ts=f"2021-01-01T00:{minute:02d}:00Z")
        for k, (user, item, kind, minute) in enumerate(LOG)
    ]
    assert ingest_event_records(store, records, source="test").rows_written == len(LOG)
    apply_task(store, settings.task)
    return Interactions.from_store(store, "events")


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 20])
def test_every_user_and_length_matches_the_sql(data: Interactions, n: int) -> None:
    for user in ["a", "b", "c", "nobody"]:
        want = recent_positives(data.con, "events", n, user).get(user)
        assert data.latest_positives(user, n) == want


def test_known_answer(data: Interactions) -> None:
    # newest first: i9 (minute 3), i3 (2), then the minute-1 tie by id descending: i9, i2, i10
    assert data.latest_positives("a", 4) == (["i2", "i9", "i3", "i9"], datetime(2021, 1, 1, 0, 3))
    assert data.latest_positives("b", 20) == (["i1"], datetime(2021, 1, 1, 0, 5))
    assert data.latest_positives("c", 20) is None  # an impression is not a positive
    assert data.latest_positives("nobody", 20) is None
    assert data.latest_positives("a", 0) is None


def _dict_history(data: Interactions, n: int) -> dict[int, list[int]]:
    """The per-process table co-visitation built before (newest first, ties by item id)."""
    ev = data.positive_events
    rank = {i: r for r, i in enumerate(sorted(range(data.n_items), key=lambda k: data.item_ids[k]))}
    out: dict[int, list[int]] = {}
    for row in sorted(
        range(len(ev.user)), key=lambda r: (-int(ev.ts[r].astype(np.int64)), rank[int(ev.item[r])])
    ):
        out.setdefault(int(ev.user[row]), []).append(int(ev.item[row]))
    return {u: items[:n] for u, items in out.items()}


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 20])
def test_newest_positive_items_match_the_old_per_process_table(data: Interactions, n: int) -> None:
    want = _dict_history(data, n)
    for u in range(len(data.user_ids)):
        assert data.newest_positive_items(u, n).tolist() == want.get(u, [])


def test_newest_positive_items_known_answer(data: Interactions) -> None:
    a = int(data.user_index["a"])
    ids = [str(data.item_ids[i]) for i in data.newest_positive_items(a, 4)]
    # minute 3 (i9), minute 2 (i3), then the minute-1 tie by id ascending, cut at 4: i10, i2
    assert ids == ["i9", "i3", "i10", "i2"]
    assert data.newest_positive_items(a, 0).tolist() == []
    assert data.newest_positive_items(int(data.user_index["c"]), 5).tolist() == []
