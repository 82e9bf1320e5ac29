"""The text model's validation set on a log with repeats (clicks and purchases of one item)."""

from __future__ import annotations

import duckdb

from feature_store.ingest import ingest_event_records
from feature_store.splits import ensure_split
from feature_store.task import apply_task
from recsys.core.config import Settings
from tests.factories import click_record, make_catalog
from training.text.evaluate import build_eval_set

# (user, item, event type, day of January 2021): days 1-8 fit, day 9 validation, day 10 test
LOG = [
    ("u1", "i1", "click", 1),
    ("u1", "i2", "click", 2),
    ("u1", "i3", "click", 3),
    ("u1", "i3", "purchase", 3),
    ("u1", "i2", "click", 9),  # already in u1's fit history: never a candidate, not a positive
    ("u1", "i4", "click", 9),
    ("u1", "i4", "purchase", 9),  # the same item bought: one positive, not two
    ("u1", "i5", "click", 9),
    ("u1", "i6", "click", 10),  # test: never looked at
    ("u2", "i1", "click", 2),
    ("u2", "i1", "purchase", 9),  # u2's only validation positive repeats its history: no user
    ("u3", "i7", "click", 9),  # no fit history: no user
]


def test_positives_are_distinct_items_new_to_the_user(
    store: duckdb.DuckDBPyConnection, settings: Settings
) -> None:
    store.register("_items", make_catalog(12).to_arrow())
    store.execute("INSERT INTO items BY NAME SELECT * FROM _items")
    records = [
        click_record(f"e{k}", user, item, event_type=kind, ts=f"2021-01-{day:02d}T12:00:00Z")
        for k, (user, item, kind, day) in enumerate(LOG)
    ]
    result = ingest_event_records(store, records, source="test")
    assert result.rows_written == len(LOG)
    settings = settings.replace(
        **{
            "split.kind": "global_time",
            "split.test_start": "2021-01-10",
            "split.val_days": 1.0,
            "text.eval_negatives": 3,
        }
    )
    apply_task(store, settings.task)
    ensure_split(store, settings.split)

    eval_set = build_eval_set(store, settings)

    assert eval_set.user_ids == ["u1"]
    positives = [c for c, y in zip(eval_set.candidates[0], eval_set.labels[0], strict=True) if y]
    assert sorted(positives) == ["i4", "i5"]
    negatives = {
        c for c, y in zip(eval_set.candidates[0], eval_set.labels[0], strict=True) if not y
    }
    assert len(negatives) == 3 and not negatives & {"i1", "i2", "i3", "i4", "i5"}
    # the history tower's input keeps every liked event (a purchase after its click weighs it
    # twice, in training as here)
    assert eval_set.histories[0] == ["i1", "i2", "i3", "i3"]
    assert len(set(eval_set.candidates[0])) == len(eval_set.candidates[0])
