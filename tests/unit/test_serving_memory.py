"""Worker memory: bounded glibc arenas for gunicorn, freed heap handed back after a reload."""

from __future__ import annotations

import gc
import sys

import duckdb
import psutil
import pytest

from serving.memory import (
    ARENA_ENV,
    arena_env,
    cap_store_cache,
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
