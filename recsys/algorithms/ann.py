"""Nearest-neighbour search over item vectors: exact (numpy) or an HNSW graph (faiss).

``VectorIndex`` is the one interface: ``search(queries, k, exclude=...)`` returns, per query,
``(rows, scores)`` best first, the excluded rows left out.  ``ExactIndex`` is a dot product over
every row (what text retrieval always did); ``HnswIndex`` searches a faiss HNSW graph with the
excluded rows filtered out inside the search (faiss ``IDSelector``) and rescores the hits
exactly, so scores are the same cosines as exact search gives.

Which one a catalog gets is ``VectorSearch`` (``serving.vector_index``): ``auto`` uses HNSW from
``serving.vector_index_min_items`` items, where exact search stops fitting the request budget
(benchmarks/ann.py, docs/scale.md).  faiss-cpu is optional: imported lazily by ``faiss_module``
and, when it is missing, search falls back to exact with a logged warning.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from recsys.core import compat
from recsys.core.config import Settings
from recsys.core.errors import ConfigError, MissingDependencyError, ModelNotReadyError

log = logging.getLogger(__name__)

Hits = tuple[np.ndarray, np.ndarray]  # (row indices int64, scores float32), best first
VECTOR_INDEX_KINDS = ("auto", "exact", "hnsw")
# HNSW graph: 16 links per node, a 128-wide beam while building, 512 while searching: on
# clustered 384-d vectors (benchmarks/ann.py) top-100 recall at 1e5 items is 0.68 with a
# 128-wide search beam, 0.82 with 256 and 0.996 with 512, still ~10x less CPU than a scan
CONNECTIVITY, EXPANSION_ADD, EXPANSION_SEARCH = 16, 128, 512
_FORMAT = "recsys-faiss-hnsw/1"


@functools.cache
def faiss_module() -> ModuleType | None:
    """``faiss`` when the optional ``faiss-cpu`` package is installed, else ``None``."""
    try:
        return compat.faiss()
    except MissingDependencyError:
        return None


@dataclass(frozen=True)
class VectorSearch:
    """Which index a catalog of item vectors is searched with."""

    kind: str = "exact"  # one of VECTOR_INDEX_KINDS
    min_items: int = 50_000  # auto: HNSW from this many items
    # where built graphs are kept, named by their vectors' fingerprint: the batch job that
    # first loads a catalog builds and saves it, later loads (workers) memory-map it
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.kind not in VECTOR_INDEX_KINDS:
            raise ConfigError(
                f"vector index must be one of {', '.join(VECTOR_INDEX_KINDS)}; got {self.kind!r}"
            )

    @classmethod
    def of(cls, settings: Settings) -> VectorSearch:
        """``serving.vector_index`` and ``serving.vector_index_min_items``."""
        s = settings.serving
        return cls(s.vector_index, s.vector_index_min_items, Path(settings.home) / "ann")

    def wants_hnsw(self, n_items: int) -> bool:
        return self.kind == "hnsw" or (self.kind == "auto" and n_items >= self.min_items)


class VectorIndex(ABC):
    """Top-k inner-product search over the rows of one float32 matrix."""

    kind = "abstract"

    def __init__(self, matrix: np.ndarray) -> None:
        m = np.asarray(matrix, dtype=np.float32)
        if m.ndim != 2:
            raise ValueError(f"item vectors must be a 2-d matrix; got shape {m.shape}")
        self.matrix = m if m.flags.c_contiguous else np.ascontiguousarray(m)
        self.n, self.dim = int(m.shape[0]), int(m.shape[1])

    def search(
        self, queries: np.ndarray, k: int, exclude: Sequence[Sequence[int]] | None = None
    ) -> list[Hits]:
        """Per query (one row of ``queries``; a 1-d array is one query) the ``k`` best rows and
        their scores, best first, leaving out that query's ``exclude`` rows."""
        q = np.asarray(queries, dtype=np.float32)
        q = q[None, :] if q.ndim == 1 else q
        if q.ndim != 2 or (self.dim and q.shape[1] != self.dim):
            raise ValueError(
                f"query vectors have shape {tuple(np.shape(queries))}; this index holds "
                f"{self.dim}-d vectors (was the text model changed without rescoring?)"
            )
        if exclude is not None and len(exclude) != len(q):
            raise ValueError(f"exclude has {len(exclude)} lists for {len(q)} queries")
        out: list[Hits] = []
        for j in range(len(q)):
            skip = np.unique(np.asarray(exclude[j] if exclude is not None else [], dtype=np.int64))
            skip = skip[(skip >= 0) & (skip < self.n)]
            want = min(int(k), self.n - len(skip))
            out.append(self._one(q[j], want, skip) if want > 0 else _empty())
        return out

    @abstractmethod
    def _one(self, query: np.ndarray, k: int, skip: np.ndarray) -> Hits:
        """The ``k`` (>= 1, <= rows not skipped) best rows of one query."""


def _empty() -> Hits:
    return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)


class ExactIndex(VectorIndex):
    """A dot product with every row (the behaviour text retrieval always had)."""

    kind = "exact"

    def _one(self, query: np.ndarray, k: int, skip: np.ndarray) -> Hits:
        return _scan(self.matrix, query, k, skip)


def _scan(matrix: np.ndarray, query: np.ndarray, k: int, skip: np.ndarray) -> Hits:
    scores = matrix @ query
    scores[skip] = -np.inf
    best = np.argpartition(-scores, k - 1)[:k]
    best = best[np.argsort(-scores[best], kind="stable")]
    return best.astype(np.int64), scores[best]


class HnswIndex(VectorIndex):
    """A faiss HNSW graph over the rows (inner product); hits are rescored exactly."""

    kind = "hnsw"

    def __init__(self, matrix: np.ndarray, graph: Any = None) -> None:
        super().__init__(matrix)
        self.faiss = _require_faiss()
        if graph is None:
            started = time.perf_counter()
            graph = self.faiss.IndexHNSWFlat(
                max(self.dim, 1), CONNECTIVITY, self.faiss.METRIC_INNER_PRODUCT
            )
            graph.hnsw.efConstruction = EXPANSION_ADD
            if self.n:
                graph.add(self.matrix)
            log.info(
                "HNSW index over %d items built in %.1f s", self.n, time.perf_counter() - started
            )
        self.graph = graph

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (a batch job ships its text index to Dask workers): the graph as faiss's
        own serialized bytes, the module re-imported where it is loaded."""
        state = dict(self.__dict__)
        state["graph"] = self.faiss.serialize_index(self.graph)
        del state["faiss"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.faiss = _require_faiss()
        self.graph = self.faiss.deserialize_index(state["graph"])

    def _one(self, query: np.ndarray, k: int, skip: np.ndarray) -> Hits:
        if (k + len(skip)) * 4 >= self.n:  # most of the catalog: a scan is as cheap and exact
            return _scan(self.matrix, query, k, skip)
        f = self.faiss
        params = f.SearchParametersHNSW(efSearch=max(EXPANSION_SEARCH, k))
        # locals keep the selectors alive during the search (SWIG does not reference them)
        selectors = []
        if len(skip):
            selectors = [f.IDSelectorBatch(skip)]
            selectors.append(f.IDSelectorNot(selectors[0]))
            params.sel = selectors[-1]
        _, found = self.graph.search(query[None, :], k, params=params)
        keys = np.asarray(found[0], dtype=np.int64)
        keys = keys[keys >= 0]
        scores = self.matrix[keys] @ query
        order = np.lexsort((keys, -scores))
        return keys[order], scores[order]

    def save(self, path: str | Path, fingerprint: str = "") -> None:
        """Write the graph to ``path`` and a checksummed manifest to ``path.json``, each through
        a temporary file and a rename (a concurrent reader sees the old file or the new one)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        self.faiss.write_index(self.graph, str(tmp))
        manifest = {
            "format": _FORMAT,
            "n": self.n,
            "dim": self.dim,
            "index_sha256": _sha256_file(tmp),
            "vectors_sha256": fingerprint or vectors_fingerprint(self.matrix),
        }
        tmp_manifest = p.with_name(f".{p.name}.json.{os.getpid()}.tmp")
        tmp_manifest.write_text(json.dumps(manifest, indent=1) + "\n")
        os.replace(tmp, p)
        os.replace(tmp_manifest, Path(f"{p}.json"))

    @classmethod
    def load(cls, path: str | Path, matrix: np.ndarray, fingerprint: str = "") -> HnswIndex:
        """The graph saved at ``path`` for exactly these ``matrix`` rows, memory-mapped.

        Refuses (``ModelNotReadyError``) a missing, corrupt or stale file: its checksum, size
        or vectors must match the manifest (``fingerprint``: the vectors', when known).
        """
        p = Path(path)
        f = _require_faiss()
        try:
            manifest = json.loads(Path(f"{p}.json").read_text())
        except (OSError, ValueError) as exc:
            raise ModelNotReadyError(f"no readable manifest for the HNSW index {p}: {exc}") from exc
        m = np.asarray(matrix, dtype=np.float32)
        problems = []
        if manifest.get("format") != _FORMAT:
            problems.append(f"format {manifest.get('format')!r}")
        if not p.is_file() or _sha256_file(p) != manifest.get("index_sha256"):
            problems.append("index checksum")
        if (manifest.get("n"), manifest.get("dim")) != (m.shape[0], m.shape[1]):
            problems.append(f"shape {manifest.get('n')}x{manifest.get('dim')} != {m.shape}")
        elif manifest.get("vectors_sha256") != (fingerprint or vectors_fingerprint(m)):
            problems.append("item vectors changed")
        if problems:
            raise ModelNotReadyError(
                f"refusing the saved HNSW index {p} ({', '.join(problems)}); rebuild it"
            )
        try:
            graph = f.read_index(str(p), f.IO_FLAG_MMAP_IFC)
        except RuntimeError as exc:
            raise ModelNotReadyError(f"refusing the saved HNSW index {p}: {exc}") from exc
        if graph.ntotal != m.shape[0] or graph.d != max(m.shape[1], 1):
            raise ModelNotReadyError(f"refusing the saved HNSW index {p} (wrong size); rebuild it")
        return cls(m, graph)


def _require_faiss() -> ModuleType:
    f = faiss_module()
    if f is None:
        raise ConfigError(
            "the HNSW vector index needs the optional package faiss-cpu "
            "(pip install 'recsys-text[ann]'), or set serving.vector_index = 'exact'"
        )
    return f


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def vectors_fingerprint(matrix: np.ndarray) -> str:
    """sha256 of the vectors' shape and bytes (a saved index belongs to exactly these rows)."""
    m = np.ascontiguousarray(matrix, dtype=np.float32)
    return hashlib.sha256(f"{m.shape}".encode() + m.tobytes()).hexdigest()


def vector_index(matrix: np.ndarray, search: VectorSearch | None = None) -> VectorIndex:
    """The index ``search`` asks for over ``matrix``: HNSW when wanted and faiss imports,
    exact otherwise (a warning says so when HNSW was wanted)."""
    search = search or VectorSearch()
    n = int(np.shape(matrix)[0]) if np.ndim(matrix) else 0
    if not search.wants_hnsw(n):
        return ExactIndex(matrix)
    if faiss_module() is None:
        log.warning(
            "vector index %r wanted HNSW for %d items but faiss-cpu is not installed "
            "(pip install 'recsys-text[ann]'); searching exactly",
            search.kind,
            n,
        )
        return ExactIndex(matrix)
    if search.cache_dir is None:
        return HnswIndex(matrix)
    return _cached_hnsw(np.asarray(matrix, dtype=np.float32), Path(search.cache_dir))


def _cached_hnsw(matrix: np.ndarray, cache_dir: Path) -> HnswIndex:
    """The graph saved for these vectors in ``cache_dir``, else a new one, saved there."""
    fingerprint = vectors_fingerprint(matrix)
    path = cache_dir / f"{fingerprint[:32]}.faiss"
    if path.is_file():
        try:
            started = time.perf_counter()
            index = HnswIndex.load(path, matrix, fingerprint)
            log.info(
                "HNSW index over %d items loaded from %s in %.2f s",
                index.n,
                path,
                time.perf_counter() - started,
            )
            return index
        except ModelNotReadyError as exc:
            log.warning("%s", exc)
    index = HnswIndex(matrix)
    try:
        index.save(path, fingerprint)
    except OSError as exc:
        log.warning("could not save the HNSW index to %s: %s", path, exc)
    return index
