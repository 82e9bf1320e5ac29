"""The task definition: presets, overrides from settings, auto detection, SQL = Python."""

from __future__ import annotations

import duckdb
import pytest

from feature_store.db import init_schema
from feature_store.rules_sql import label_sql, low_rating_sql, positive_sql
from feature_store.task import apply_task, detect_preset, stored_task
from recsys.core import rules
from recsys.core.config import TaskSettings
from recsys.core.errors import ConfigError
from training.text.tower_train import build_examples

EVENTS = [
    ("rate", 7.5),
    ("rate", 4.0),
    ("rate", 2.0),
    ("click", None),
    ("purchase", 3.0),
    ("like", None),
    ("impression", None),
    ("view", None),
]


def _store(events: list[tuple[str, str | None]]) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    init_schema(con)
    for k, (etype, request) in enumerate(events):
        con.execute(
            "INSERT INTO events (event_id, user_id, item_id, event_type, ts, value, request_id, "
            "source, batch_id) VALUES (?, 'u', 'i', ?, TIMESTAMP '2020-01-01' + to_seconds(?), "
            "CASE WHEN ? = 'rate' THEN 4 END, ?, 'test', 'b')",
            [f"e{k}", etype, k, etype, request],
        )
    return con


def _sql(con: duckdb.DuckDBPyConnection) -> list[tuple[bool, int, bool]]:
    con.execute("CREATE OR REPLACE TEMP TABLE ev (event_type VARCHAR, value DOUBLE, k INT)")
    con.executemany(
        "INSERT INTO ev VALUES (?, ?, ?)", [(t, v, k) for k, (t, v) in enumerate(EVENTS)]
    )
    return [
        (bool(p), int(g), bool(n))
        for p, g, n in con.execute(
            f"SELECT {positive_sql()}, {label_sql()}, {low_rating_sql()} FROM ev ORDER BY k"
        ).fetchall()
    ]


def test_auto_detects_each_shape() -> None:
    assert detect_preset(_store([("rate", None), ("impression", "r1")])) == "ratings"
    assert detect_preset(_store([("impression", "r1"), ("click", "r1")])) == "impressions"
    assert detect_preset(_store([("impression", None), ("purchase", None)])) == "events"
    assert detect_preset(_store([])) == "events"


def test_ratings_preset_is_protocol_v1() -> None:
    task = rules.make_task("ratings")
    assert task == rules.DEFAULT_TASK
    assert [task.is_positive(t, v) for t, v in EVENTS] == [1, 1, 0, 1, 1, 1, 0, 0]
    assert [task.label_grade(t, v) for t, v in EVENTS] == [3, 2, 0, 1, 1, 1, 0, 0]


def test_events_preset_grades_purchase_above_click_and_sql_agrees() -> None:
    con = _store([("purchase", None)])
    task = apply_task(con, TaskSettings())
    assert task.preset == "events"
    assert [task.label_grade(t, v) for t, v in EVENTS] == [2, 2, 0, 1, 2, 1, 0, 0]
    expected = [
        (task.is_positive(t, v), task.label_grade(t, v), task.is_explicit_negative(t, v))
        for t, v in EVENTS
    ]
    assert _sql(con) == expected
    assert stored_task(con) == task


def test_settings_override_the_preset_and_the_store_follows() -> None:
    con = _store([("rate", None)])
    task = apply_task(
        con,
        TaskSettings(
            preset="ratings",
            positive_event_types=("purchase",),
            positive_rating=7.0,
            negative_rating=4.0,
            grades=("purchase:5", "rate>=7:4"),
        ),
    )
    assert [task.is_positive(t, v) for t, v in EVENTS] == [1, 0, 0, 0, 1, 0, 0, 0]
    assert [task.label_grade(t, v) for t, v in EVENTS] == [4, 0, 0, 0, 5, 0, 0, 0]
    assert _sql(con) == [
        (p, g, n)
        for p, g, n in zip(
            [True, False, False, False, True, False, False, False],
            [4, 0, 0, 0, 5, 0, 0, 0],
            [False, True, True, False, False, False, False, False],
            strict=True,
        )
    ]
    assert stored_task(con) == task
    # back to the default: the macros follow
    apply_task(con, TaskSettings())
    assert _sql(con)[1] == (True, 2, False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"preset": "clicks"}, "task.preset must be one of auto, ratings"),
        ({"grades": ("purchase",)}, "EVENT_TYPE[>=VALUE]:GRADE"),
        ({"grades": ("rate>=x:2",)}, "VALUE a number"),
    ],
)
def test_bad_task_settings_say_what_to_fix(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        TaskSettings(**kwargs)  # type: ignore[arg-type]


def test_text_examples_leave_out_events_on_an_item_already_liked() -> None:
    # click a, click b, purchase b (after its click), click c, click a again
    con = duckdb.connect()
    init_schema(con)
    for k, (etype, item) in enumerate(
        [("click", "a"), ("click", "b"), ("purchase", "b"), ("click", "c"), ("click", "a")]
    ):
        con.execute(
            "INSERT INTO events (event_id, user_id, item_id, event_type, ts, source, batch_id) "
            "VALUES (?, 'u', ?, ?, TIMESTAMP '2020-01-01' + to_seconds(?), 'test', 'b')",
            [f"e{k}", item, etype, k],
        )
    apply_task(con, TaskSettings())
    rows = {"a": 0, "b": 1, "c": 2}
    ex = build_examples(con, rows, max_history=5, relation="events")
    # b after [a], c after [a, b, b]; the purchase of b and the second click of a are repeats
    assert ex.target.tolist() == [1, 2]
    assert ex.history.tolist() == [[0, -1, -1, -1, -1], [0, 1, 1, -1, -1]]
    assert ex.kinds["positive"] == 2
