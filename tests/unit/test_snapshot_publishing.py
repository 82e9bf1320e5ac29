"""Lean snapshots: published only after a change and at most every ``snapshot_min_seconds``;
an old snapshot is deleted only once no process has it open, so no handle to a deleted
snapshot is ever kept (checked in /proc/self/fd)."""

from __future__ import annotations

from pathlib import Path

import pytest

from feature_store.db import connect
from recsys.core.config import Settings
from serving import snapshot as snap
from serving.eventlog import EventLog
from serving.metrics import Metrics
from serving.models import ModelHolder
from serving.snapshot import SnapshotPublisher, SnapshotReader, publish_snapshot, read_pointer
from serving.writer import EventWriter
from tests.factories import deleted_handles, load_into_store, make_catalog, make_events


@pytest.fixture
def home(settings: Settings) -> Settings:
    con = connect(settings.db_path)
    load_into_store(con, make_catalog(), make_events())
    con.close()
    return settings


class _Models:
    model_versions = {"ranker": "1"}


def click(event_id: str) -> dict[str, object]:
    return {
        "event_id": event_id,
        "user_id": "u1",
        "item_id": "i3",
        "event_type": "click",
        "ts": "2021-01-01T00:00:00Z",
    }


def test_the_writer_publishes_only_changes_and_at_most_every_interval(home: Settings) -> None:
    settings = home.replace(**{"serving.snapshot_min_seconds": 3600.0})
    writer = EventWriter(settings, refresh_embeddings=False)
    first = writer.flush().snapshot
    assert first is not None and read_pointer(settings) == first  # the first flush publishes
    log = EventLog(settings.event_log_dir)
    log.append([click("e1")])
    result = writer.flush()
    assert result.accepted == 1 and result.snapshot is None  # ingested, not copied yet
    assert writer.publisher.dirty and not writer.publisher.due()
    assert log.backlog() == 0  # the event is in the store: the log moved on regardless

    writer.publisher.min_seconds = 0.0  # the interval has passed
    later = writer.flush()
    assert later.events_read == 0 and later.snapshot is not None
    assert later.snapshot.log_seq == 1
    assert writer.flush().snapshot is None  # nothing changed since: no copy

    log.mark_ingested(0)  # re-delivered events are duplicates: nothing the workers read changed
    dup = writer.flush()
    assert dup.duplicate == 1 and dup.snapshot is None


def test_publisher_policy_without_a_writer(home: Settings) -> None:
    publisher = SnapshotPublisher(home, min_seconds=0.0)
    assert publisher.dirty  # no pointer yet
    con = connect(home.db_path)
    try:
        assert publisher.maybe_publish(con, log_seq=0, changed=False) is not None
        assert publisher.maybe_publish(con, log_seq=0, changed=False) is None
        assert publisher.maybe_publish(con, log_seq=0, changed=True) is not None
    finally:
        con.close()


def test_open_snapshots_are_not_deleted_and_no_deleted_handle_stays(
    home: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(snap, "_RETIRE_AFTER_SECONDS", 0.0)
    monkeypatch.setattr("serving.models._RETIRE_AFTER_SECONDS", 0.0)
    writer_con = connect(home.db_path)

    def publish() -> Path:
        return Path(publish_snapshot(writer_con, home, log_seq=0).path)

    try:
        first = publish()
        reader = SnapshotReader(home)
        assert reader.refresh()
        holder = ModelHolder(home, Metrics(), lambda settings, con: _Models())
        holder.load(str(first))  # a worker's models hold the snapshot too
        second = publish()
        for _ in range(3):
            publish()
        assert first.is_file(), "a snapshot in use was deleted"
        assert not second.exists(), "an unused old snapshot was kept"
        assert deleted_handles("store-") == []

        assert reader.refresh()  # moves to the newest; the old connection is closed
        holder.load(reader.info.path if reader.info else "")
        holder.close_retired()
        assert str(first) not in snap.leases.held()
        publish()
        assert not first.exists(), "a snapshot nobody has open was kept"
        assert deleted_handles("store-") == []
        kept = sorted((home.home / "serving" / "snapshots").glob("store-*.duckdb"))
        assert len(kept) == snap.KEEP_SNAPSHOTS
        holder.close_retired(everything=True)
        reader.close()
        mine = str(home.home)  # other tests in this process may hold leases of their own
        assert {path: n for path, n in snap.leases.held().items() if path.startswith(mine)} == {}
    finally:
        writer_con.close()
