"""Online evaluation end to end on tiny data: interleaved lists served by the real app, recorded
through the event log and the writer, joined to logged clicks in the store, and reported by
``recsys evaluate --online``."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner

from feature_store.db import connect
from feature_store.ingest import ingest_event_records
from feature_store.interleaving import list_outcomes, write_interleaved
from recsys.cli import main
from recsys.core.config import Settings
from recsys.core.errors import ConfigError, EvaluationError
from recsys.evaluation.online import evaluate_online
from recsys.pipeline.recommender import Recommendation as Rec
from recsys.pipeline.recommender import RecommendationResult as Result
from serving.app import create_app
from serving.eventlog import EventLog
from serving.writer import EventWriter
from tests.factories import load_into_store, make_catalog, make_events
from tests.unit.test_serving_app import KEY, TableRecommender
from training import registry

A, B = "champion", "challenger"
RIDS = [str(uuid.UUID(int=n + 1)) for n in range(5)]


def _list(n: int, user: str, served: str, versions: tuple[str, str] = ("1", "2")) -> dict:
    return {
        "recommendation_id": RIDS[n],
        "user_id": user,
        "served_at": served,
        "champion_version": versions[0],
        "challenger_version": versions[1],
        "items": ["i1", "i2", "i3", "i4"],
        "teams": [A, B, A, B],
    }


def _event(n: int, user: str, item: str, kind: str, rid: int, value: float | None = None) -> dict:
    row: dict[str, Any] = {
        "event_id": f"e{n}",
        "user_id": user,
        "item_id": item,
        "event_type": kind,
        "ts": "2026-06-01T12:00:00",
        "recommendation_id": RIDS[rid],
    }
    if value is not None:
        row["value"] = value
    return row


@pytest.fixture
def lists_store(store: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    load_into_store(store, make_catalog(), make_events())
    lists = [
        _list(0, "u1", "2026-06-01T10:00:00"),  # u1 clicks i2 (challenger)
        _list(1, "u2", "2026-06-01T10:00:01"),  # i1, i3 (champion) and i2: champion wins
        _list(2, "u3", "2026-06-01T10:00:02"),  # only an impression, and u4's click: a tie
        _list(3, "u1", "2026-06-01T10:00:03"),  # rate 4.5 on i4 wins; rate 2 on i1 is no positive
        _list(4, "u2", "2025-01-01T00:00:00", ("1", "3")),  # an older pair of versions
    ]
    assert write_interleaved(store, lists) == 5
    assert write_interleaved(store, lists[:2]) == 0  # delivered twice: stored once
    events = [
        _event(1, "u1", "i2", "click", 0),
        _event(2, "u1", "i2", "like", 0),  # the same item again: counts once
        _event(3, "u2", "i1", "click", 1),
        _event(4, "u2", "i3", "click", 1),
        _event(5, "u2", "i2", "click", 1),
        _event(6, "u3", "i1", "impression", 2),
        _event(7, "u4", "i1", "click", 2),  # another user's click on u3's list
        _event(8, "u1", "i4", "rate", 3, 4.5),
        _event(9, "u1", "i1", "rate", 3, 2.0),
        _event(10, "u2", "i2", "click", 4),
    ]
    result = ingest_event_records(store, events)
    assert result.rows_written == len(events)
    return store


def test_list_outcomes_join_positives_of_the_lists_user(
    lists_store: duckdb.DuckDBPyConnection,
) -> None:
    got = {
        o.recommendation_id: (o.champion_clicks, o.challenger_clicks)
        for o in list_outcomes(lists_store)
    }
    assert got == {
        RIDS[0]: (0, 1),
        RIDS[1]: (2, 1),
        RIDS[2]: (0, 0),
        RIDS[3]: (0, 1),
        RIDS[4]: (0, 1),
    }


def test_evaluate_online_groups_version_pairs_newest_first(
    lists_store: duckdb.DuckDBPyConnection,
) -> None:
    report = evaluate_online(lists_store)
    newest, older = report["comparisons"]
    assert (newest["champion_version"], newest["challenger_version"]) == ("1", "2")
    assert (newest["lists"], newest["champion_wins"], newest["challenger_wins"]) == (4, 1, 2)
    assert newest["ties"] == 1 and newest["challenger_win_rate"] == pytest.approx(2 / 3)
    assert newest["sign_test_p"] == 1.0 and newest["ci95"][0] < 0.5 < newest["ci95"][1]
    assert (older["challenger_version"], older["challenger_wins"]) == ("3", 1)
    only_new = evaluate_online(lists_store, since=datetime(2026, 1, 1))
    assert [c["challenger_version"] for c in only_new["comparisons"]] == ["2"]
    with pytest.raises(EvaluationError, match="no interleaved list was served since 2027"):
        evaluate_online(lists_store, since=datetime(2027, 1, 1))


def test_cli_online_reports_json_and_refuses_an_empty_log(
    settings: Settings, lists_store: duckdb.DuckDBPyConnection
) -> None:
    lists_store.execute("DELETE FROM interleaved_items WHERE served_at < '2026-01-01'")
    lists_store.execute("CHECKPOINT")
    lists_store.close()
    home = ["--home", str(settings.home)]
    result = CliRunner().invoke(main, [*home, "evaluate", "--online", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    (only,) = report["comparisons"]
    assert (only["champion_wins"], only["challenger_wins"], only["ties"]) == (1, 2, 1)
    assert report["mlflow_run_id"] and (settings.reports_dir / "online" / "online.md").is_file()
    empty = CliRunner().invoke(main, [*home, "evaluate", "--online", "--since", "2030-01-01"])
    assert empty.exit_code != 0 and "no interleaved list was served since 2030" in empty.output
    mixed = CliRunner().invoke(main, [*home, "evaluate", "--online", "--replay", "store"])
    assert mixed.exit_code == 2 and "--online cannot be combined" in mixed.output


def test_interleave_challenger_must_be_an_alias_other_than_champion(settings: Settings) -> None:
    with pytest.raises(ConfigError, match="another alias"):
        settings.replace(**{"serving.interleave_challenger": "champion"})
    with pytest.raises(ConfigError, match="interleave_challenger"):
        settings.replace(**{"serving.interleave_challenger": "no spaces"})


# -- through the real app ---------------------------------------------------------------------


class ReversedRecommender(TableRecommender):
    """Scores item ``iN`` as -N: the opposite of the champion's order."""

    def _result(self, ids: list[str], k: int, explain: bool, con: Any, **kw: Any) -> Result:
        ranked = sorted(ids, key=lambda i: int(i[1:]))[:k]
        items = tuple(Rec(i, n + 1, -float(i[1:]), f"title {i}") for n, i in enumerate(ranked))
        return Result(items, dict(self.model_versions), **kw)


def _loader(settings: Settings, con: Any, *, alias: str = "champion") -> Any:
    return TableRecommender("1") if alias == "champion" else ReversedRecommender("2")


@pytest.fixture
def interleaving_home(settings: Settings) -> Settings:
    settings = settings.replace(
        **{"serving.api_key": "s3cret", "serving.interleave_challenger": "challenger"}
    )
    con = connect(settings.db_path)
    load_into_store(con, make_catalog(), make_events())
    con.close()
    EventWriter(settings).flush()
    return settings


def test_served_lists_are_interleaved_recorded_and_credited(interleaving_home: Settings) -> None:
    app = create_app(interleaving_home, loader=_loader, start_watcher=False)
    client = app.test_client()
    st = app.extensions["recsys"]
    try:
        data = client.get("/v1/users/u3/recommendations?k=4").get_json()
        assert data["interleaved"] is True and data["model_versions"]["ranker"] == "1"
        ids = [i["item_id"] for i in data["items"]]
        # two rounds: each ranker's top two, champion i29, i28 and challenger i0, i1
        assert sorted(ids) == ["i0", "i1", "i28", "i29"]
        assert [i["rank"] for i in data["items"]] == [1, 2, 3, 4]
        assert "team" not in json.dumps(data) and "challenger" not in json.dumps(data)
        assert st.models.challenger_versions == {"ranker": "2", "text-scorer": "1"}
        (pending,) = [record for _, record in st.event_log.pending_lists()]
        assert pending["recommendation_id"] == data["recommendation_id"]
        assert dict(zip(pending["items"], pending["teams"], strict=True)) == {
            "i29": A,
            "i28": A,
            "i0": B,
            "i1": B,
        }
        clicks = [
            {
                "event_id": f"c{n}",
                "user_id": "u3",
                "item_id": item,
                "event_type": "click",
                "ts": "2026-06-01T12:00:00Z",
                "recommendation_id": data["recommendation_id"],
            }
            for n, item in enumerate(["i0", "i1", "i29"])
        ]
        posted = client.post("/v1/events", json={"events": clicks}, headers=KEY).get_json()
        assert posted["accepted"] == 3
        flushed = EventWriter(interleaving_home).flush()
        assert flushed.lists_stored == 1 and flushed.accepted == 3
        assert st.event_log.pending_lists() == []
        metrics = client.get("/metrics").get_data(as_text=True)
        assert 'recsys_interleaved_lists_total{status="recorded"} 1.0' in metrics
    finally:
        st.close()
    con = connect(interleaving_home.db_path)
    try:
        (comparison,) = evaluate_online(con)["comparisons"]
    finally:
        con.close()
    assert (comparison["challenger_wins"], comparison["champion_wins"]) == (1, 0)


def test_a_challenger_that_fails_to_load_leaves_the_champion_alone(
    interleaving_home: Settings,
) -> None:
    def loader(settings: Settings, con: Any, *, alias: str = "champion") -> Any:
        if alias != "champion":
            raise ValueError("challenger ranker file is corrupt")
        return TableRecommender("1")

    app = create_app(interleaving_home, loader=loader, start_watcher=False)
    try:
        data = app.test_client().get("/v1/users/u3/recommendations?k=3").get_json()
        assert "interleaved" not in data
        assert [i["item_id"] for i in data["items"]] == ["i29", "i28", "i27"]
        assert app.extensions["recsys"].event_log.pending_lists() == []
    finally:
        app.extensions["recsys"].close()


def test_recording_a_list_gives_up_quickly_when_the_log_is_locked(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "log")
    record = _list(0, "u1", "2026-06-01T10:00:00")
    blocker = sqlite3.connect(log.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another worker holds the write lock
    try:
        started = time.monotonic()
        assert log.append_list(record) is False
        assert time.monotonic() - started < 2.0
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert log.append_list(record) is True and log.append_list(record) is True  # once only
    assert [r["recommendation_id"] for _, r in log.pending_lists()] == [RIDS[0]]
    log.mark_lists_stored(log.pending_lists()[0][0])
    assert log.pending_lists() == []


def test_the_watcher_reloads_when_the_challenger_alias_moves(
    interleaving_home: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    polled = interleaving_home.replace(**{"serving.reload_poll_seconds": 0.01})
    app = create_app(polled, loader=_loader, start_watcher=False)
    st = app.extensions["recsys"]
    alias: dict[str, str | None] = {"version": "2"}
    monkeypatch.setattr("serving.models.registry_exists", lambda _settings: True)
    monkeypatch.setattr(
        registry, "champion", lambda _s, name: registry.ModelRef(name, "1", "run", "src")
    )
    monkeypatch.setattr(
        registry,
        "aliased",
        lambda _s, name, _a: (
            registry.ModelRef(name, alias["version"], "run", "src") if alias["version"] else None
        ),
    )
    try:
        assert st.models.challenger_tried == "2"
        assert not st.watcher._champions_changed()  # champion v1, challenger v2: as served
        alias["version"] = "5"
        assert st.watcher._champions_changed()  # the alias moved to another version
        alias["version"] = None
        assert st.watcher._champions_changed()  # the alias was removed: serve the champion alone
    finally:
        st.close()
