"""A real two-worker ``distributed.LocalCluster`` for tests (skipped where Dask is missing)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest


@contextlib.contextmanager
def local_client(*, processes: bool = False) -> Iterator[object]:
    """A client of 2 workers of 1 thread each: threads of this process, or worker processes
    (every object a task takes is then pickled).  The HTTP server takes a free port, so
    several clusters can be up at once."""
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            processes=processes, n_workers=2, threads_per_worker=1, dashboard_address=":0"
        ) as local,
        distributed.Client(local) as client,
    ):
        yield client
