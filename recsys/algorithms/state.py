"""Generator state as plain arrays: what the batch job publishes and serving workers restore.

The expensive generators (ALS factors, item-kNN and co-visitation neighbour matrices,
popularity counts, the recent-popularity timeline) are fitted once by ``recsys train ranker``
on all events and saved as numpy arrays (``training.ranker.state`` writes and checks the files).
A serving worker restores them, memory-mapped, onto the ``Interactions`` it reads from its store
snapshot: ``CatalogMap`` maps the saved item and user order onto the snapshot's (identical unless
items or users were added since), and per-user reads (what a user saw, liked, liked lately) come
from the snapshot, so new events count without refitting anything.  Generators without state
(genre affinity, text neighbours) are cheap reads of the snapshot and keep their ``fit``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp

from feature_store.interactions import Interactions
from recsys.core.errors import ModelNotReadyError

log = logging.getLogger(__name__)

Arrays = Mapping[str, np.ndarray]
ITEM_IDS, USER_IDS = "catalog/item_ids", "catalog/user_ids"


@dataclass(frozen=True)
class CatalogMap:
    """Where each saved id sits in the current order (``-1``: no longer there)."""

    index: np.ndarray  # saved position -> current position or -1
    n_current: int
    identity: bool

    @classmethod
    def between(
        cls, saved: Sequence[Any] | np.ndarray, current: Sequence[Any] | np.ndarray
    ) -> CatalogMap:
        old = np.asarray(saved, dtype=str)
        new = np.asarray(current, dtype=str)
        if old.shape == new.shape and np.array_equal(old, new):
            return cls(np.arange(len(new), dtype=np.int64), len(new), True)
        if len(new) == 0 or len(old) == 0:
            return cls(np.full(len(old), -1, dtype=np.int64), len(new), False)
        order = np.argsort(new, kind="stable")
        pos = np.clip(np.searchsorted(new[order], old), 0, len(new) - 1)
        hit = new[order][pos] == old
        return cls(np.where(hit, order[pos], -1).astype(np.int64), len(new), False)

    def rows(self, saved: np.ndarray, fill: float) -> np.ndarray:
        """``saved`` (one row per saved id) in the current order; new ids get ``fill``."""
        if self.identity:
            return saved
        out = np.full((self.n_current, *saved.shape[1:]), fill, dtype=saved.dtype)
        ok = self.index >= 0
        out[self.index[ok]] = saved[ok]
        return out

    def positions(self, saved_positions: np.ndarray) -> np.ndarray:
        """Saved positions as current positions (``-1`` where the id is gone)."""
        if self.identity:
            return saved_positions
        return self.index[saved_positions]

    def square(self, saved: sp.csr_matrix) -> sp.csr_matrix:
        """A saved id x id matrix in the current order on both axes."""
        if self.identity:
            return saved
        coo = saved.tocoo()
        a, b = self.index[coo.row], self.index[coo.col]
        ok = (a >= 0) & (b >= 0)
        n = self.n_current
        return sp.csr_matrix((coo.data[ok], (a[ok], b[ok])), shape=(n, n))


@dataclass(frozen=True)
class Maps:
    """The saved catalog's and users' places in the snapshot being served."""

    items: CatalogMap
    users: CatalogMap


@runtime_checkable
class Stateful(Protocol):
    """A generator whose fitted state is published as arrays and restored without a fit."""

    name: str

    def state(self) -> dict[str, np.ndarray]: ...

    def restore(self, arrays: Arrays, data: Interactions, maps: Maps) -> Any: ...


def csr_arrays(m: sp.csr_matrix) -> dict[str, np.ndarray]:
    """A CSR matrix as the arrays ``csr_from`` reads back."""
    m = sp.csr_matrix(m)
    m.sort_indices()
    return {
        "data": np.asarray(m.data),
        "indices": np.asarray(m.indices),
        "indptr": np.asarray(m.indptr),
        "shape": np.asarray(m.shape, dtype=np.int64),
    }


def csr_from(arrays: Arrays, prefix: str) -> sp.csr_matrix:
    """The CSR matrix saved under ``prefix`` (its arrays are used as they are, memory-mapped)."""
    shape = tuple(int(v) for v in arrays[f"{prefix}/shape"])
    return sp.csr_matrix(
        (arrays[f"{prefix}/data"], arrays[f"{prefix}/indices"], arrays[f"{prefix}/indptr"]),
        shape=shape,
        copy=False,
    )


def sub(arrays: Arrays, name: str) -> dict[str, np.ndarray]:
    """The arrays under ``name/`` with the prefix removed."""
    head = f"{name}/"
    return {k[len(head) :]: v for k, v in arrays.items() if k.startswith(head)}


def generators_state(generators: Sequence[Any], data: Interactions) -> dict[str, np.ndarray]:
    """Every stateful generator's arrays under ``<name>/`` plus the catalog and user order."""
    out: dict[str, np.ndarray] = {
        ITEM_IDS: np.asarray(data.item_ids, dtype=str),
        USER_IDS: np.asarray(data.user_ids, dtype=str),
    }
    for gen in generators:
        if isinstance(gen, Stateful):
            out.update({f"{gen.name}/{k}": v for k, v in gen.state().items()})
    return out


def restore_generators(generators: Sequence[Any], arrays: Arrays, data: Interactions) -> None:
    """Restore each stateful generator from ``arrays`` onto ``data``; the others ``fit`` (cheap
    reads of ``data``).  A stateful generator missing from ``arrays`` refuses the state."""
    started = time.perf_counter()
    if ITEM_IDS not in arrays or USER_IDS not in arrays:
        raise ModelNotReadyError("the serving state has no catalog; retrain the ranker")
    maps = Maps(
        CatalogMap.between(arrays[ITEM_IDS], data.item_ids),
        CatalogMap.between(arrays[USER_IDS], data.user_ids),
    )
    for gen in generators:
        if not isinstance(gen, Stateful):
            gen.fit(data)
            continue
        own = sub(arrays, gen.name)
        if not own:
            raise ModelNotReadyError(
                f"the serving state has no arrays for generator {gen.name!r}; retrain the "
                "ranker (`recsys train ranker`) to publish a complete state"
            )
        gen.restore(own, data, maps)
    log.info(
        "generators restored from the serving state in %.2f s (catalog %s, users %s)",
        time.perf_counter() - started,
        "unchanged" if maps.items.identity else "remapped",
        "unchanged" if maps.users.identity else "remapped",
    )
