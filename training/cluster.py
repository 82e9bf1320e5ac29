"""Dask, the engine the batch jobs run on past one machine: the one module that uses it.

The embedded single-process path is the default and never imports Dask.  When
``distributed.address`` is set (``RECSYS_DISTRIBUTED__ADDRESS``), a job opens a client with
``connect(settings)``: ``local`` starts a ``LocalCluster`` sized to this machine for the job's
duration, any other value is the address of a running scheduler (``dask scheduler``; workers
started with ``dask worker tcp://scheduler:8786``).  Dask ships in the optional
``distributed`` extra (``pip install 'recsys-text[distributed]'``), like LightGBM's own
``lightgbm.dask`` compat pattern: imported lazily through ``recsys.core.compat``, behind clear
errors.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

from recsys.core import compat
from recsys.core.config import LOCAL_CLUSTER, Settings
from recsys.core.errors import ConfigError, MissingDependencyError

log = logging.getLogger(__name__)

INSTALL_HINT = "install the distributed extra: pip install 'recsys-text[distributed]'"


def _import(load: Callable[[], ModuleType]) -> ModuleType:
    try:
        return load()
    except MissingDependencyError as exc:
        raise ConfigError(
            f"distributed.address is set but {exc}; {INSTALL_HINT}, "
            "or leave distributed.address empty to run embedded"
        ) from exc


def distributed() -> ModuleType:
    """``distributed`` (Client, LocalCluster)."""
    return _import(compat.distributed)


def dask_array() -> ModuleType:
    """``dask.array`` (the partitioned training matrix)."""
    return _import(lambda: compat.dask("array"))


def lightgbm_dask() -> ModuleType:
    """``lightgbm.dask`` (``DaskLGBMRanker``)."""
    _import(lambda: compat.dask("dataframe"))  # lightgbm.dask needs it and says so less clearly
    return _import(lambda: compat.lightgbm("dask"))


@contextlib.contextmanager
def connect(settings: Settings) -> Iterator[Any | None]:
    """A ``distributed.Client`` for the job (None when ``distributed.address`` is empty).

    Fails within ``distributed.connect_timeout_seconds`` with a ``ConfigError`` naming the
    address when no scheduler answers there, instead of hanging.
    """
    cfg = settings.distributed
    address = cfg.address.strip()
    if not address:
        yield None
        return
    dist = distributed()
    timeout = cfg.connect_timeout_seconds
    with contextlib.ExitStack() as stack:
        if address == LOCAL_CLUSTER:
            workers = cfg.local_workers or max(1, os.cpu_count() or 1)
            cluster = stack.enter_context(
                dist.LocalCluster(
                    n_workers=workers,
                    threads_per_worker=cfg.local_threads_per_worker,
                    dashboard_address=None,
                )
            )
            client = stack.enter_context(dist.Client(cluster, timeout=timeout))
            log.info("started a local Dask cluster: %d workers", workers)
        else:
            try:
                client = stack.enter_context(dist.Client(address, timeout=timeout))
            except (OSError, TimeoutError) as exc:
                raise ConfigError(
                    f"no Dask scheduler answered at distributed.address={address!r} within "
                    f"{timeout:g} s ({exc}); start one (`dask scheduler`, then `dask worker "
                    f"{address}`) or leave distributed.address empty to run embedded"
                ) from exc
            log.info("connected to the Dask scheduler at %s", address)
        yield client


def worker_count(client: Any) -> int:
    """Workers the scheduler knows now (at least 1; a job waits for none)."""
    return max(1, len(client.scheduler_info().get("workers", {})))
