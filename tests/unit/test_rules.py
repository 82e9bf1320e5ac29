"""The product rules and their SQL form agree on every kind of event (known answers)."""

from __future__ import annotations

import duckdb
import pytest

from feature_store.rules_sql import label_sql, macro_statements, positive_sql
from recsys.core import rules

# (event_type, value, positive?, label grade)
CASES = [
    ("rate", 5.0, True, 3),
    ("rate", 4.5, True, 3),
    ("rate", 4.0, True, 2),
    ("rate", 3.5, False, 0),
    ("rate", None, False, 0),
    ("click", None, True, 1),
    ("like", None, True, 1),
    ("share", 1.0, True, 1),
    ("purchase", 9.0, True, 1),
    ("impression", None, False, 0),
    ("view", 5.0, False, 0),
    ("comment", None, False, 0),
]


@pytest.mark.parametrize(("event_type", "value", "positive", "grade"), CASES)
def test_python_rules(event_type: str, value: float | None, positive: bool, grade: int) -> None:
    assert rules.is_positive(event_type, value) is positive
    assert rules.label_grade(event_type, value) == grade


def test_sql_rules_match_python_rules() -> None:
    con = duckdb.connect()
    for statement in macro_statements(rules.DEFAULT_TASK):
        con.execute(statement)
    con.execute("CREATE TABLE ev (event_type VARCHAR, value DOUBLE, k INTEGER)")
    con.executemany(
        "INSERT INTO ev VALUES (?, ?, ?)", [(t, v, k) for k, (t, v, _, _) in enumerate(CASES)]
    )
    rows = con.execute(
        f"SELECT k, {positive_sql('e')}, {label_sql('e')} FROM ev e ORDER BY k"
    ).fetchall()
    assert [(bool(p), int(g)) for _, p, g in rows] == [(p, g) for _, _, p, g in CASES]
    unaliased = con.execute(f"SELECT count(*) FROM ev WHERE {positive_sql()}").fetchone()
    assert unaliased == (sum(p for _, _, p, _ in CASES),)


def test_metric_names_have_one_spelling() -> None:
    assert rules.metric_name("ndcg", 10, prefix="val_") == "val_ndcg@10"
    assert rules.mlflow_key("val_ndcg@10") == "val_ndcg_at_10"
    assert rules.mlflow_metrics({"val_auc": 1, "cold_ndcg@10": 0.5}) == {
        "val_auc": 1.0,
        "cold_ndcg_at_10": 0.5,
    }


def test_scopes_name_their_events_relation() -> None:
    assert rules.SCOPES["fit_v1"].events == "events_fit_v1"
    assert rules.SCOPES["train_v1"].events == "events_train_v1"
    assert rules.SCOPES["live"].events == "events"
