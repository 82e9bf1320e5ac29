"""The shared feature snapshot: saved once per store content, memory-mapped by every process,
the same features as a snapshot built in memory; damaged or unwritable caches fall back."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pytest

from feature_store import features_cache as fc
from feature_store.db import connect, init_schema
from feature_store.features import FeatureSnapshot
from feature_store.interactions import Interactions
from recsys.core.config import load_settings
from serving.snapshot import close_snapshot, open_snapshot
from serving.writer import EventWriter
from tests.factories import load_into_store, make_catalog, make_events

WINDOW = 1.0


def make_store(path: Path, seed: int = 0) -> None:
    con = duckdb.connect(str(path))
    init_schema(con)
    load_into_store(con, make_catalog(), make_events(seed=seed))
    con.close()


def requests(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    pairs = con.execute(
        "SELECT u.user_id, i.item_id, max(e.ts) OVER () AS as_of FROM "
        "(SELECT DISTINCT user_id FROM events) u, (SELECT item_id FROM items) i, "
        "(SELECT max(ts) AS ts FROM events) e"
    ).pl()
    return pairs.with_columns(pl.col("as_of").cast(pl.Datetime("us"))).sort("user_id", "item_id")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "store.duckdb"
    make_store(path)
    return path


def shared(con: duckdb.DuckDBPyConnection, cache: Path) -> FeatureSnapshot:
    return fc.shared_snapshot(con, cache, events="events", covisit_window_days=WINDOW)


def test_a_mapped_snapshot_gives_the_built_snapshots_features(db: Path, tmp_path: Path) -> None:
    con = duckdb.connect(str(db), read_only=True)
    built = FeatureSnapshot.build(con, covisit_window_days=WINDOW)
    cache = tmp_path / "features"
    first = shared(con, cache)  # builds and saves
    saved = [p for p in cache.iterdir() if p.is_dir()]
    assert len(saved) == 1 and (saved[0] / "arrays.bin").stat().st_size > 0
    second = shared(con, cache)  # maps
    req = requests(con)
    want = built.compute(req)
    for snap in (first, second):
        assert snap.compute(req).equals(want)
        assert snap.n_events == built.n_events and snap.newest_event == built.newest_event
    # the arrays are read-only views of the saved file, not copies
    arrays = [v for v in vars(second._index).values() if isinstance(v, np.ndarray)]
    assert arrays and not any(a.flags.writeable for a in arrays)


def test_the_second_process_maps_instead_of_building(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    con = duckdb.connect(str(db), read_only=True)
    cache = tmp_path / "features"
    shared(con, cache)

    def refuse(*args: object, **kwargs: object) -> FeatureSnapshot:
        raise AssertionError("built again")

    monkeypatch.setattr(FeatureSnapshot, "build", refuse)
    assert shared(con, cache).n_events == 12 * 15


def _worker(db: str, cache: str, log: str, barrier: multiprocessing.synchronize.Barrier) -> None:
    build = FeatureSnapshot.build

    def counted(*args: object, **kwargs: object) -> FeatureSnapshot:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        return build(*args, **kwargs)  # type: ignore[arg-type]

    FeatureSnapshot.build = counted  # type: ignore[method-assign]
    con = duckdb.connect(db, read_only=True)
    barrier.wait()
    snap = shared(con, Path(cache))
    assert snap.n_events == 12 * 15


def run_together(target: Any, n: int, db: Path, cache: Path, log: Path) -> list[int | None]:
    """``target(db, cache, log, barrier)`` in ``n`` processes released at once; exit codes."""
    ctx = multiprocessing.get_context("spawn")  # fork would copy DuckDB's threads mid-flight
    barrier = ctx.Barrier(n)
    procs = [
        ctx.Process(target=target, args=(str(db), str(cache), str(log), barrier)) for _ in range(n)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    for p in procs:
        p.kill()
    return [p.exitcode for p in procs]


def test_concurrent_processes_build_once(db: Path, tmp_path: Path) -> None:
    log, cache = tmp_path / "builds.log", tmp_path / "features"
    assert run_together(_worker, 3, db, cache, log) == [0, 0, 0]
    assert len(log.read_text().split()) == 1  # one built, two waited and mapped
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 1


def test_new_events_make_a_new_snapshot_and_old_ones_are_pruned(tmp_path: Path) -> None:
    cache = tmp_path / "features"
    keys = []
    for seed in range(fc.KEEP + 2):
        path = tmp_path / f"store{seed}.duckdb"
        make_store(path, seed=seed)
        con = duckdb.connect(str(path), read_only=True)
        keys.append(fc.snapshot_key(con, "events", WINDOW))
        shared(con, cache)
        con.close()
        os.utime(cache / keys[-1], (seed + 1, seed + 1))  # creation order, whatever the clock
    assert len(set(keys)) == len(keys)
    assert sorted(p.name for p in cache.iterdir() if p.is_dir()) == sorted(keys[-fc.KEEP :])


def test_the_key_follows_the_window_and_the_task_rules(db: Path) -> None:
    con = duckdb.connect(str(db))
    key = fc.snapshot_key(con, "events", WINDOW)
    assert fc.snapshot_key(con, "events", WINDOW) == key
    assert fc.snapshot_key(con, "events", 2.0) != key
    con.execute("UPDATE events SET value = 5.0 WHERE event_id = 'e0-0'")
    changed = fc.snapshot_key(con, "events", WINDOW)
    assert changed != key
    con.execute("CREATE OR REPLACE MACRO recsys_positive(t, v) AS t = 'purchase'")
    assert fc.snapshot_key(con, "events", WINDOW) != changed


@pytest.mark.parametrize(
    "damage",
    ["index.pkl", "arrays.bin", "meta.json", "missing arrays"],
)
def test_a_damaged_saved_snapshot_is_rebuilt(
    db: Path, tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    con = duckdb.connect(str(db), read_only=True)
    cache = tmp_path / "features"
    want = shared(con, cache).compute(requests(con))
    (saved,) = [p for p in cache.iterdir() if p.is_dir()]
    if damage == "index.pkl":
        body = bytearray((saved / damage).read_bytes())
        body[len(body) // 2] ^= 0xFF
        (saved / damage).write_bytes(bytes(body))
    elif damage == "arrays.bin":
        with open(saved / damage, "r+b") as f:
            f.truncate(100)
    elif damage == "meta.json":
        (saved / damage).write_text("{not json")
    else:
        (saved / "arrays.bin").unlink()
    snap = shared(con, cache)
    assert snap.compute(requests(con)).equals(want)
    assert "ignoring the saved feature snapshot" in caplog.text
    # and the rebuilt copy is saved again, whole
    assert fc.load(saved, saved.name) is not None


def test_an_unusable_cache_leaves_an_in_memory_snapshot(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    con = duckdb.connect(str(db), read_only=True)
    want = FeatureSnapshot.build(con, covisit_window_days=WINDOW).compute(requests(con))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert shared(con, blocker).compute(requests(con)).equals(want)
    assert "cache unavailable" in caplog.text

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fc.os, "fsync", full)  # the disk fills while the arrays are written
    cache = tmp_path / "features"
    assert shared(con, cache).compute(requests(con)).equals(want)
    assert "could not save the feature snapshot" in caplog.text
    assert list(cache.iterdir()) == [next(cache.glob("*.lock"))]  # no partial directory left


def test_the_writer_prepares_a_new_bases_snapshot_for_the_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(overrides={"home": str(tmp_path / "home")}, environ={})
    con = connect(settings.db_path)
    load_into_store(con, make_catalog(), make_events())
    con.close()
    cache = Path(settings.home) / "features"
    # without a model registry there is nothing to serve features to: nothing is built
    info = EventWriter(settings, refresh_embeddings=False).flush().snapshot
    assert info is not None and info.delta is None and not cache.exists()
    Path(str(settings.home), "mlflow.db").touch()  # a registry (registry_exists)
    con = duckdb.connect(str(settings.db_path))
    con.execute("UPDATE events SET value = 1.0 WHERE event_id = 'e0-0'")  # a batch job's write
    con.close()
    info = EventWriter(settings, refresh_embeddings=False).flush().snapshot
    assert info is not None and info.delta is None
    saved = sorted(p.name for p in cache.iterdir() if p.is_dir())
    # a worker on the new base maps what the writer saved: the features and the interactions
    monkeypatch.setattr(FeatureSnapshot, "build", lambda *a, **k: pytest.fail("built again"))
    monkeypatch.setattr(Interactions, "from_store", lambda *a, **k: pytest.fail("read again"))
    window = settings.ranker.covisit_window_days
    worker = open_snapshot(info.path)
    try:
        assert saved == sorted(
            [fc.snapshot_key(worker, "events", window), fc.interactions_key(worker, "events")]
        )
        snap = fc.shared_snapshot(worker, cache, events="events", covisit_window_days=window)
        assert snap.n_events == 12 * 15
        data = fc.shared_interactions(worker, cache, events="events")
        assert data.con is worker and data.seen.nnz > 0
    finally:
        close_snapshot(worker, info.path)


def test_mapped_interactions_equal_the_stores(db: Path, tmp_path: Path) -> None:
    con = duckdb.connect(str(db), read_only=True)
    want = Interactions.from_store(con, "events")
    cache = tmp_path / "features"
    fc.shared_interactions(con, cache, events="events")  # builds and saves
    got = fc.shared_interactions(con, cache, events="events")  # maps
    assert got.con is con and got.relation == want.relation
    assert list(got.item_ids) == list(want.item_ids) and list(got.user_ids) == list(want.user_ids)
    for name in ("seen", "positives"):
        a, b = getattr(got, name), getattr(want, name)
        assert (a != b).nnz == 0 and a.shape == b.shape
        assert not a.data.flags.writeable  # a view of the saved file
    for name in ("user", "item", "ts"):
        assert np.array_equal(
            getattr(got.positive_events, name), getattr(want.positive_events, name)
        )
    assert got.item_genres == want.item_genres and got.user_index == want.user_index
    # what the request path reads of it
    u = want.user_ids[0]
    assert np.array_equal(got.seen_items(u), want.seen_items(u))
    assert np.array_equal(got.recent_positive_items(u, 5), want.recent_positive_items(u, 5))
    assert got.latest_positives(u, 20) == want.latest_positives(u, 20)
    # the per-user orders were built before saving: workers map them instead of sorting
    for built in (got.timeline(), got.latest_order()):
        assert all(not a.flags.writeable for a in built)


def test_pruning_keeps_the_newest_of_each_kind(tmp_path: Path) -> None:
    cache = tmp_path / "features"
    cache.mkdir()
    for k, name in enumerate(["features-a", "features-b", "interactions-a", "features-c"]):
        (cache / name).mkdir()
        (cache / name / "meta.json").write_text("{}")
        os.utime(cache / name, (k + 1, k + 1))
    # a save a killed process left behind, and one in progress now
    for name, age in ((".features-d.1.tmp", fc.STALE_TMP_SECONDS + 60), (".features-e.2.tmp", 1)):
        (cache / name).mkdir()
        os.utime(cache / name, (time.time() - age, time.time() - age))
    gone = fc.prune(cache, keep=1)
    assert sorted(p.name for p in gone) == [".features-d.1.tmp", "features-a", "features-b"]
    assert sorted(p.name for p in cache.iterdir()) == [
        ".features-e.2.tmp",
        "features-c",
        "interactions-a",
    ]


def _state_worker(
    db: str, cache: str, log: str, barrier: multiprocessing.synchronize.Barrier
) -> None:
    def slow(kind: str, build: Any) -> Any:
        def run(*args: object, **kwargs: object) -> Any:
            with open(log, "a") as f:
                f.write(f"{kind} {os.getpid()}\n")
            time.sleep(2.0)  # long enough for the other process to find the lock held
            return build(*args, **kwargs)

        return run

    FeatureSnapshot.build = slow("features", FeatureSnapshot.build)  # type: ignore[method-assign]
    Interactions.from_store = slow("interactions", Interactions.from_store)  # type: ignore[method-assign]
    con = duckdb.connect(db, read_only=True)
    barrier.wait()
    data, snap = fc.shared_state(con, Path(cache), events="events", covisit_window_days=WINDOW)
    assert data.con is con and data.seen.nnz > 0 and snap.n_events == 12 * 15


def test_two_processes_starting_together_build_one_each(db: Path, tmp_path: Path) -> None:
    log, cache = tmp_path / "builds.log", tmp_path / "features"
    assert run_together(_state_worker, 2, db, cache, log) == [0, 0]
    builds = [line.split() for line in log.read_text().splitlines()]
    # each kind built once, and by different processes: side by side, not one after the other
    assert sorted(kind for kind, _ in builds) == ["features", "interactions"]
    assert len({pid for _, pid in builds}) == 2
