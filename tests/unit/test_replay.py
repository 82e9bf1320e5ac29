"""Logged-click replay on the MIND fixture, with metrics worked out by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from feature_store.adapters.mind import ingest_mind
from recsys.cli import main
from recsys.core.config import Settings
from recsys.core.errors import RecsysError
from recsys.evaluation.replay import impressions, replay

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "mind"
R2 = 1 / math.log2(3)  # discount of rank 2


@pytest.fixture
def mind_store(store: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    ingest_mind(store, FIXTURE, progress=False)
    return store


def test_impression_lists_and_labels(mind_store: duckdb.DuckDBPyConnection) -> None:
    rows = impressions(mind_store)
    lists = {r: g.sort("position")["item_id"].to_list() for (r,), g in rows.group_by("request_id")}
    assert lists == {
        "1": ["N3", "N4", "N5"],
        "2": ["N1", "N2"],
        "3": ["N5", "N3"],
        "4": ["N2", "N3"],
    }
    clicked = set(rows.filter(rows["label"] == 1).select("request_id", "item_id").iter_rows())
    assert clicked == {("1", "N4"), ("2", "N1"), ("2", "N2"), ("3", "N5")}


def test_replay_metrics_by_hand(mind_store: duckdb.DuckDBPyConnection) -> None:
    # Lists 2 (all clicked) and 4 (no clicks) are skipped, as in MIND's evaluation.
    # logged order: list 1 click at rank 2 of 3, list 3 click at rank 1 of 2.
    # reversed order: list 1 click still at rank 2; list 3 click at rank 2 (below the non-click).
    out = replay(
        mind_store,
        {
            "logged": lambda f: -f["position"].cast(float).to_numpy(),
            "reversed": lambda f: f["position"].cast(float).to_numpy(),
        },
    )
    logged, rev = out["systems"]["logged"], out["systems"]["reversed"]
    assert logged["impressions"] == rev["impressions"] == 2
    assert logged["auc"] == pytest.approx((0.5 + 1.0) / 2)
    assert logged["mrr"] == pytest.approx((0.5 + 1.0) / 2)
    assert logged["ndcg@5"] == pytest.approx((R2 + 1.0) / 2)
    assert logged["ndcg@10"] == pytest.approx((R2 + 1.0) / 2)
    assert rev["auc"] == pytest.approx((0.5 + 0.0) / 2)
    assert rev["mrr"] == pytest.approx(0.5)
    assert rev["ndcg@5"] == pytest.approx(R2)


def test_replay_features_are_point_in_time(mind_store: duckdb.DuckDBPyConnection) -> None:
    # popularity before list 3 (11/16 00:00:01): N5 has no earlier click, N3 none either, so
    # the tie keeps the logged order; the click on N5 in list 3 itself must not count.
    out = replay(mind_store, {"pop": lambda f: f["item_positives_all"].fill_null(0).to_numpy()})
    assert out["systems"]["pop"]["mrr"] == pytest.approx(0.75)


def test_no_impressions_is_a_clear_error(store: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(RecsysError, match="impression"):
        replay(store, {})


def test_evaluate_replay_cli(settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    result = CliRunner().invoke(
        main,
        [
            "--home",
            str(settings.home),
            "evaluate",
            "--replay",
            str(FIXTURE),
            "--replay-only",
            "--output",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    systems = report["replay"]["systems"]
    assert systems["logged_order"]["mrr"] == pytest.approx(0.75)
    assert {"auc", "mrr", "ndcg@5", "ndcg@10", "impressions"} <= set(systems["popularity"])
    assert (out / "replay.png").is_file() and "Logged-click replay" in (
        out / "report.md"
    ).read_text()


def test_evaluate_replay_store_without_models(
    settings: Settings,
    mind_store: duckdb.DuckDBPyConnection,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mind_store.execute("CHECKPOINT")
    out = tmp_path / "rep"
    result = CliRunner().invoke(
        main,
        [
            "--home",
            str(settings.home),
            "evaluate",
            "--replay",
            "store",
            "--replay-only",
            "--output",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    replay_report = json.loads((out / "report.json").read_text())["replay"]
    assert replay_report["source"] == "store"
    assert set(replay_report["systems"]) == {"logged_order", "popularity", "recent_popularity"}
