"""Worker memory: bounded glibc arenas for gunicorn, freed heap handed back after a reload."""

from __future__ import annotations

import sys

import psutil
import pytest

from serving.memory import ARENA_ENV, arena_env, release_memory


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
