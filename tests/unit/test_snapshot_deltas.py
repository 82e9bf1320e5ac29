"""Incremental snapshots: a flush with a few events publishes a small delta beside the base
(the base file is not rewritten), readers see the new rows through the overlay at once, models
are rebuilt only on a new base, and compaction removes old files only once no reader has them
open (no handle to a deleted file stays; checked in /proc/self/fd)."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import pytest

from feature_store.db import connect
from feature_store.deltas import apply_overlay, attach_delta, table_marks, write_delta
from recsys.core.config import Settings
from serving import snapshot as snap
from serving.eventlog import EventLog
from serving.metrics import Metrics
from serving.models import ModelHolder, Watcher
from serving.snapshot import SnapshotReader, read_pointer
from serving.writer import EventWriter
from tests.factories import click_record as click
from tests.factories import deleted_handles, load_into_store, make_catalog, make_events


@pytest.fixture
def home(settings: Settings) -> Settings:
    con = connect(settings.db_path)
    load_into_store(con, make_catalog(), make_events())
    con.close()
    return settings.replace(**{"serving.snapshot_min_seconds": 0.0})


def count(reader: SnapshotReader, sql: str) -> int:
    cur = reader.cursor()
    assert cur is not None
    try:
        row = cur.execute(sql).fetchone()
        return int(row[0]) if row else 0
    finally:
        cur.close()


def test_a_few_events_publish_a_delta_and_leave_the_base_alone(home: Settings) -> None:
    writer = EventWriter(home, refresh_embeddings=False)
    base = writer.flush().snapshot
    assert base is not None and base.delta is None  # the first publish is a full snapshot
    stat = os.stat(base.path)
    reader = SnapshotReader(home)
    assert reader.refresh()
    before = count(reader, "SELECT count(*) FROM events")

    log = EventLog(home.event_log_dir)
    log.append([click("d1"), click("d2", user="new-user", item="i4")])
    published = writer.flush().snapshot
    assert published is not None and published.delta is not None
    assert published.path == base.path and published.delta_events == 2
    after = os.stat(base.path)
    assert (after.st_mtime_ns, after.st_size, after.st_ino) == (
        stat.st_mtime_ns,
        stat.st_size,
        stat.st_ino,
    ), "the base was rewritten"
    only_new = connect(published.delta, read_only=True)
    try:  # the delta holds the new rows only, not a copy of the store
        assert only_new.execute("SELECT count(*) FROM events").fetchone() == (2,)
        assert only_new.execute("SELECT count(*) FROM users").fetchone() == (2,)
    finally:
        only_new.close()
    assert len(list((home.home / "serving" / "snapshots").glob("store-*.duckdb"))) == 1

    assert reader.refresh()  # the same base connection, the delta attached
    assert count(reader, "SELECT count(*) FROM events") == before + 2
    assert count(reader, "SELECT count(*) FROM events WHERE event_id IN ('d1', 'd2')") == 2
    assert count(reader, "SELECT count(*) FROM users WHERE user_id = 'new-user'") == 1
    assert count(reader, "SELECT count(*) FROM users WHERE user_id = 'u1'") == 1  # not twice
    # macros of the base still resolve on an overlaid cursor
    assert count(reader, "SELECT count(*) FROM events WHERE recsys_positive(event_type, value)")

    log.append([click("d3")])
    third = writer.flush().snapshot
    assert third is not None and third.delta_events == 3  # a delta is cumulative
    assert reader.refresh()
    assert count(reader, "SELECT count(*) FROM events") == before + 3
    reader.close()


def test_the_overlay_replaces_the_live_rows_of_changed_users(settings: Settings) -> None:
    con = connect(settings.db_path)
    try:
        con.execute("INSERT INTO users VALUES ('a', NULL, 't'), ('b', NULL, 't')")
        con.execute(
            "INSERT INTO user_embeddings VALUES ('a', '1', 'live', NULL, [1.0]), "
            "('a', '1', 'fit_v1', NULL, [5.0]), ('b', '1', 'live', NULL, [2.0])"
        )
        marks = table_marks(con)
        base = settings.home / "base.duckdb"
        con.execute("CHECKPOINT")
        base.write_bytes(settings.db_path.read_bytes())
        # the writer refreshes a's live vector (delete + insert) and b is untouched
        con.execute("DELETE FROM user_embeddings WHERE user_id = 'a' AND scope = 'live'")
        con.execute("INSERT INTO user_embeddings VALUES ('a', '1', 'live', NULL, [9.0])")
        delta = settings.home / "delta.duckdb"
        assert write_delta(con, delta, marks, ["a"]) == 0
    finally:
        con.close()
    reader = connect(base, read_only=True)
    try:
        views = attach_delta(reader, str(delta), "d")
        cur = reader.cursor()
        apply_overlay(cur, views)
        rows = cur.execute(
            "SELECT user_id, scope, embedding[1] FROM user_embeddings ORDER BY ALL"
        ).fetchall()
        assert rows == [("a", "fit_v1", 5.0), ("a", "live", 9.0), ("b", "live", 2.0)]
        assert cur.execute("SELECT count(*) FROM users").fetchone() == (2,)
        plain = reader.cursor()  # a cursor without the overlay reads the base alone
        assert plain.execute(
            "SELECT embedding[1] FROM user_embeddings WHERE user_id = 'a' AND scope = 'live'"
        ).fetchall() == [(1.0,)]
    finally:
        reader.close()


class _Models:
    model_versions = {"ranker": "1"}


def test_models_rebuild_on_new_events_only_and_at_most_every_refresh_interval(
    home: Settings,
) -> None:
    writer = EventWriter(home, refresh_embeddings=False)
    writer.flush()
    loads: list[int] = []  # events each load saw on its connection

    def loader(_settings: Settings, con: duckdb.DuckDBPyConnection) -> _Models:
        row = con.execute("SELECT count(*) FROM events").fetchone()
        loads.append(int(row[0]) if row else -1)
        return _Models()

    def run(settings: Settings) -> tuple[Watcher, SnapshotReader, ModelHolder]:
        reader = SnapshotReader(settings)
        holder = ModelHolder(settings, Metrics(), loader)
        return Watcher(settings, reader, holder), reader, holder

    log = EventLog(home.event_log_dir)
    slow, slow_reader, slow_holder = run(home.replace(**{"serving.store_refresh_seconds": 3600}))
    fast, fast_reader, fast_holder = run(home.replace(**{"serving.store_refresh_seconds": 0}))
    try:
        slow.tick()
        fast.tick()
        base_events = loads[0]
        assert loads == [base_events, base_events]
        log.append([click("m1")])
        assert writer.flush().snapshot is not None  # a delta
        slow.tick()
        assert len(loads) == 2, "rebuilt before store_refresh_seconds"
        fast.tick()
        assert loads[2:] == [base_events + 1], "the rebuilt models did not see the delta"
        log.mark_ingested(0)  # a re-delivered event is a duplicate: nothing is published
        assert writer.flush().snapshot is None
        fast.tick()
        assert len(loads) == 3, "rebuilt although nothing changed"
    finally:
        for reader, holder in ((slow_reader, slow_holder), (fast_reader, fast_holder)):
            holder.close_retired(everything=True)
            reader.close()


def test_compaction_removes_old_files_only_once_readers_let_go(
    home: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = home.replace(**{"serving.snapshot_compact_events": 2})
    writer = EventWriter(settings, refresh_embeddings=False)
    log = EventLog(settings.event_log_dir)
    first = writer.flush().snapshot
    assert first is not None
    log.append([click("c1")])
    delta = writer.flush().snapshot
    assert delta is not None and delta.delta is not None
    reader = SnapshotReader(settings)
    assert reader.refresh()  # holds the first base and its delta
    seen = count(reader, "SELECT count(*) FROM events")

    log.append([click("c2")])
    writer.flush()  # the delta now holds 2 events: the next publish compacts
    log.append([click("c3")])
    compacted = writer.flush().snapshot
    assert compacted is not None and compacted.delta is None
    assert compacted.path != first.path
    for _ in range(3):  # more full snapshots: KEEP_SNAPSHOTS would drop the first base
        writer.publisher._full = True
        log.append([click(f"x{_}")])
        writer.flush()
    assert Path(first.path).is_file() and Path(delta.delta).is_file(), "deleted while read"
    assert count(reader, "SELECT count(*) FROM events") == seen  # the reader's view still works
    assert deleted_handles("store-", "delta-") == []

    monkeypatch.setattr(snap, "_RETIRE_AFTER_SECONDS", 0.0)
    assert reader.refresh()  # moves to the newest base; the old one is closed
    assert count(reader, "SELECT count(*) FROM events") == seen + 5
    pointer = read_pointer(settings)
    assert pointer is not None
    snap.prune_snapshots(settings)
    assert not Path(first.path).exists() and not Path(delta.delta).exists()
    assert list((settings.home / "serving" / "deltas").glob("delta-*.duckdb")) == []
    assert deleted_handles("store-", "delta-") == []
    reader.close()
    mine = str(settings.home)
    assert {p: n for p, n in snap.leases.held().items() if p.startswith(mine)} == {}
