"""Background work runs at a lower CPU priority than request threads (Linux: per thread)."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from serving.priority import (
    BLAS_THREAD_VARS,
    in_background,
    lower_thread_priority,
    worker_thread_env,
)

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice")


@linux
def test_only_the_background_thread_is_lowered() -> None:
    main = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen = in_background(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
    assert seen == min(19, main + 10)
    # the calling (request) thread keeps its priority
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main


@linux
def test_threads_started_by_a_lowered_thread_inherit_it() -> None:
    def spawn() -> int:
        got: list[int] = []
        t = threading.Thread(
            target=lambda: got.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        )
        t.start()
        t.join()
        return got[0]

    main = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert in_background(spawn) == min(19, main + 10)


def test_errors_come_back_to_the_caller() -> None:
    def fail() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        in_background(fail)


@linux
def test_the_nice_value_is_capped() -> None:
    def twice() -> int | None:
        lower_thread_priority(15)
        return lower_thread_priority(15)

    assert in_background(twice) == 19


def test_workers_get_single_threaded_blas_unless_the_operator_chose() -> None:
    assert worker_thread_env({}) == {var: "1" for var in BLAS_THREAD_VARS}
    assert worker_thread_env({"OMP_NUM_THREADS": "4"}) == {
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
