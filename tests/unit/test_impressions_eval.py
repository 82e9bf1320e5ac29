"""Per-impression evaluation on held-out served lists (recsys.evaluation.impressions)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest

from feature_store.adapters.mind import ingest_mind
from feature_store.db import connect
from feature_store.splits import ensure_split
from feature_store.task import apply_task
from recsys.core.config import Settings, load_settings
from recsys.core.errors import EvaluationError
from recsys.evaluation.impressions import (
    dense_scores,
    evaluate_impressions,
    has_served_lists,
    heldout_lists,
    scorable_lists,
)
from recsys.evaluation.replay import score_lists
from tests.log_factories import write_mind


@pytest.fixture(scope="module")
def mind(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, duckdb.DuckDBPyConnection]:
    root = tmp_path_factory.mktemp("impressions")
    settings = load_settings(
        environ={},
        overrides={
            "home": str(root / "home"),
            "split.kind": "global_time",
            "ranker.num_candidates": 10,
        },
    )
    con = connect(settings.db_path)
    ingest_mind(con, write_mind(root / "mind", n_users=8, n_items=24), progress=False)
    apply_task(con, settings.task)
    ensure_split(con, settings.split)
    return settings, con


def test_only_lists_after_the_test_cut_are_held_out(
    mind: tuple[Settings, duckdb.DuckDBPyConnection],
) -> None:
    _, con = mind
    lists = heldout_lists(con)
    row = con.execute("SELECT test_start FROM split_v1_spec").fetchone()
    assert row is not None
    cut = row[0]
    shown = con.execute(
        "SELECT request_id, min(ts) >= ? AS held FROM events WHERE event_type = 'impression' "
        "GROUP BY request_id",
        [cut],
    ).pl()
    held = set(shown.filter(pl.col("held"))["request_id"].to_list())
    assert held and set(lists["request_id"].unique().to_list()) == held
    assert lists["as_of"].unique().to_list() == [cut]
    # six items per list, clicks labelled 1
    assert lists.group_by("request_id").len()["len"].unique().to_list() == [6]
    assert scorable_lists(lists) > 0 and lists["label"].sum() > 0
    assert has_served_lists(con)


def test_known_answers_baselines_and_skips(
    mind: tuple[Settings, duckdb.DuckDBPyConnection],
) -> None:
    settings, con = mind
    result = evaluate_impressions(settings, con)
    systems = result["systems"]
    assert set(systems) == {"popularity", "tfidf"}
    # users click their topic; item texts name it: the content profile ranks clicks high
    assert systems["tfidf"]["auc"] > 0.75 > systems["popularity"]["auc"]
    assert systems["tfidf"]["impressions"] == scorable_lists(heldout_lists(con))
    assert "recsys train ranker" in result["skipped"]["ranker"]
    assert "recsys score" in result["skipped"]["text_only"]


def test_dense_scores_and_list_metrics_known_answer() -> None:
    class Fixed:
        data = type("D", (), {"user_index": {"u": 0}, "item_index": {"a": 0, "b": 1}})()

        def user_scores(self, u: int | None, as_of: object) -> np.ndarray | None:
            return np.array([1.0, 2.0]) if u == 0 else None

    frame = pl.DataFrame(
        {
            "request_id": ["r1", "r1", "r1", "r2", "r2"],
            "user_id": ["u", "u", "u", "x", "x"],
            "item_id": ["a", "b", "zz", "a", "b"],
            "as_of": [None] * 5,
            "label": [0, 1, 0, 1, 0],
        }
    )
    scores = dense_scores(Fixed(), frame)  # type: ignore[arg-type]
    assert scores.tolist() == [1.0, 2.0, -np.inf, -np.inf, -np.inf]
    m = score_lists(frame, scores)
    assert m["impressions"] == 2
    # r1: the click ranks first (AUC 1); r2: all tied at -inf (AUC 0.5)
    assert m["auc"] == pytest.approx(0.75)


def test_nothing_held_out_is_an_error(tmp_path: Path) -> None:
    root = tmp_path
    settings = load_settings(
        environ={},
        overrides={
            "home": str(root / "home"),
            "split.kind": "global_time",
            "split.test_start": "2030-01-01",
        },
    )
    con = connect(settings.db_path)
    ingest_mind(con, write_mind(root / "mind", n_users=3, n_items=8), progress=False)
    with pytest.raises(EvaluationError, match="no held-out impression list"):
        evaluate_impressions(settings, con)
    con.close()
