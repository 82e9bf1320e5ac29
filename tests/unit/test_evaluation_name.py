"""The report and its MLflow run name the task and the split actually used (issue 11)."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
from click.testing import CliRunner

from feature_store.db import connect
from recsys.core.config import Settings, load_settings
from recsys.evaluation.protocol_data import load_protocol
from tests.factories import load_into_store, make_catalog, make_events
from tests.unit.test_splits_any_log import click_log


def _name(tmp_path: Path, events: object, **split: object) -> str:
    overrides = {"home": str(tmp_path / "home"), **{f"split.{k}": v for k, v in split.items()}}
    settings = load_settings(environ={}, overrides=overrides)
    con = connect(settings.db_path)
    try:
        load_into_store(con, make_catalog(), events)  # type: ignore[arg-type]
        return str(load_protocol(con, settings).extra["protocol"])
    finally:
        con.close()


def test_ratings_on_the_per_user_split_are_protocol_v1(tmp_path: Path) -> None:
    name = _name(tmp_path, make_events())
    assert name == (
        "task ratings, per-user time split (each user's last 20% of events are test) = protocol v1"
    )


def test_other_splits_and_tasks_are_not_called_protocol_v1(tmp_path: Path) -> None:
    assert _name(tmp_path / "a", make_events(), test_percent=30) == (
        "task ratings, per-user time split (each user's last 30% of events are test)"
    )
    # click_log: user c0 on 2020-01-01 from 00:00, c1 a day later, 10 hourly lists each
    assert _name(tmp_path / "b", click_log(), kind="global_time", test_days=0.25) == (
        "task impressions, global cut-off 2020-01-02 03:00 (test from it, validation from "
        "2020-01-01 03:00, train before)"
    )


def test_report_heading_and_mlflow_run_tags_name_the_task_and_split(
    settings: Settings, store: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    from recsys.cli import main
    from training import registry

    load_into_store(store, make_catalog(), click_log())
    store.close()
    out = tmp_path / "report"
    args = ["--home", str(settings.home), "evaluate", "--output", str(out)]
    result = CliRunner().invoke(
        main,
        [*args, "--systems", "popularity", "--bootstrap", "0"],
        env={"RECSYS_SPLIT__KIND": "global_time", "RECSYS_SPLIT__TEST_DAYS": "0.25"},
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["task_preset"] == "impressions"
    assert report["split"]["kind"] == "global_time"
    assert report["split"]["test_start"] == "2020-01-02T03:00:00"
    heading = (out / "report.md").read_text().splitlines()[0]
    assert heading == f"# Offline evaluation: {report['protocol']}"
    assert heading.startswith("# Offline evaluation: task impressions, global cut-off 2020-01-02")
    assert "movielens" not in (out / "report.md").read_text()
    runs = registry.client(settings).search_runs(
        [registry.ensure_experiment(settings, None)], "tags.task = 'impressions'"
    )
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == "evaluate"  # stable: notebooks select runs by it
    assert run.data.tags["split"] == "global_time"
    assert run.data.tags["protocol"] == report["protocol"]


def test_per_user_split_on_a_click_log_is_named_so(tmp_path: Path) -> None:
    assert _name(tmp_path, click_log(), kind="user_time").startswith(
        "task impressions, per-user time split (each user's last 20%"
    )
