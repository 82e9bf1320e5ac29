"""Worker memory: bounded glibc arenas for gunicorn, freed heap handed back after a reload."""

from __future__ import annotations

import gc
import sys
import threading
import time
from pathlib import Path

import duckdb
import psutil
import pytest

from serving.memory import (
    ARENA_ENV,
    arena_env,
    cap_store_cache,
    collection_turn,
    release_memory,
    settle_heap,
)


def test_arena_env_sets_the_bound_unless_the_operator_did() -> None:
    assert arena_env({}) == {ARENA_ENV: "2"}
    assert arena_env({ARENA_ENV: "8"}) == {}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim")
def test_release_memory_returns_a_fragmented_heap_to_the_system() -> None:
    # 4 KB blocks come from glibc's heap (not Python's arenas, not mmap); keeping every 50th
    # alive fragments it, so glibc cannot shrink the heap by itself when the rest is freed
    proc = psutil.Process()
    blocks = [bytearray(4096) for _ in range(40_000)]  # ~160 MB
    kept = blocks[::50]
    del blocks
    before = proc.memory_info().rss
    assert release_memory()
    after = proc.memory_info().rss
    assert before - after > 80e6, (before, after)
    assert len(kept) == 800


def test_settled_objects_leave_the_collector_until_memory_is_released() -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self  # a cycle: only the collector can free it

    model = [Node() for _ in range(1000)]
    try:
        assert settle_heap() >= 1000
        assert gc.get_freeze_count() >= 1000
        ref_to_first = model[0]
        del model  # the cycles are garbage now, but frozen: a collection does not see them
        gc.collect()
        assert gc.get_freeze_count() >= 1000
        release_memory()  # unfreezes and collects
        assert gc.get_freeze_count() == 0
        assert ref_to_first.me is ref_to_first
    finally:
        gc.unfreeze()


def test_store_cache_is_capped_after_load_unless_zero() -> None:
    con = duckdb.connect()
    try:
        default = con.execute("SELECT current_setting('memory_limit')").fetchone()
        cap_store_cache(con, 0)
        assert con.execute("SELECT current_setting('memory_limit')").fetchone() == default
        cap_store_cache(con, 512)
        assert con.execute("SELECT current_setting('memory_limit')").fetchone() == ("488.2 MiB",)
    finally:
        con.close()


def test_collection_turns_do_not_overlap(tmp_path: Path) -> None:
    """Two workers (here two threads, each with its own open file) pause one after the other,
    the second only after the first's linger."""
    lock = tmp_path / "serving" / "collection.lock"
    spans: dict[str, tuple[float, float]] = {}
    first_in = threading.Event()

    def worker(name: str, hold: float) -> None:
        with collection_turn(lock, linger_s=0.2) as taken:
            assert taken
            start = time.monotonic()
            first_in.set()
            time.sleep(hold)
        spans[name] = (start, time.monotonic())

    a = threading.Thread(target=worker, args=("a", 0.3))
    a.start()
    assert first_in.wait(5)
    b = threading.Thread(target=worker, args=("b", 0.0))
    b.start()
    a.join(5)
    b.join(5)
    # b entered after a's pause (0.3 s) and its linger (0.2 s): a's span ends after the linger
    assert spans["b"][0] >= spans["a"][1] - 0.01
    assert spans["b"][0] - spans["a"][0] >= 0.5


def test_a_stuck_turn_is_skipped_and_a_broken_lock_path_is_not_an_error(tmp_path: Path) -> None:
    lock = tmp_path / "collection.lock"
    with collection_turn(lock, linger_s=0) as held:
        assert held
        started = time.monotonic()
        with collection_turn(lock, wait_s=0.3) as second:
            assert not second  # the holder never let go: collect anyway, after wait_s
        assert 0.3 <= time.monotonic() - started < 3
    (tmp_path / "a-file").write_text("x")
    with collection_turn(tmp_path / "a-file" / "collection.lock") as taken:
        assert not taken
