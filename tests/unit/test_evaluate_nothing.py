"""`recsys evaluate` with nothing to score exits non-zero with the reason and logs no run."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from recsys.cli import main
from recsys.cli.evaluate import _check_replay
from recsys.core.config import Settings
from recsys.core.errors import EvaluationError
from tests.factories import load_into_store, make_catalog
from tests.unit.test_splits_any_log import click_log


def test_evaluate_without_test_positives_fails_and_logs_no_run(
    settings: Settings, store: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    # clicks only, and a task whose only positive is a purchase: nothing to score
    load_into_store(store, make_catalog(), click_log())
    store.execute("CHECKPOINT")
    store.close()
    out = tmp_path / "report"
    result = CliRunner().invoke(
        main,
        ["--home", str(settings.home), "evaluate", "--output", str(out), "--systems", "popularity"],
        env={"RECSYS_TASK__POSITIVE_EVENT_TYPES": "purchase"},
    )
    assert result.exit_code != 0
    assert "nothing to evaluate" in result.output
    assert "2 users with split events, 4 test events, 0 of them ratings" in result.output
    assert "positive = purchase or rate >= 4" in result.output
    assert not (out / "report.json").exists()
    assert not (settings.home / "mlflow.db").exists()
    assert not (settings.home / "mlruns").exists()


def test_replay_without_scorable_lists_is_refused() -> None:
    with pytest.raises(EvaluationError, match="no logged impression list"):
        _check_replay({"systems": {"popularity": {"impressions": 0}}, "requests": 3})
    _check_replay({"systems": {"popularity": {"impressions": 1}}})


def test_evaluate_on_an_empty_home_fails_and_creates_nothing(tmp_path: Path) -> None:
    home = tmp_path / "empty-home"
    result = CliRunner().invoke(main, ["--home", str(home), "evaluate"])
    assert result.exit_code != 0
    assert "nothing to evaluate: there is no store at" in result.output
    assert "recsys ingest" in result.output
    assert not home.exists() or not any(home.iterdir())


def test_evaluate_with_an_unknown_system_fails_naming_the_choices(
    settings: Settings, store: duckdb.DuckDBPyConnection
) -> None:
    load_into_store(store, make_catalog(), click_log())
    store.close()
    result = CliRunner().invoke(
        main, ["--home", str(settings.home), "evaluate", "--systems", "popularity,bm25"]
    )
    assert result.exit_code != 0
    assert "unknown system(s) 'bm25'; choose from popularity, item_knn, als, tfidf" in result.output
    assert not (settings.home / "mlflow.db").exists()
