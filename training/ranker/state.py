"""The serving state's files: numpy arrays plus a manifest with shapes and sha256 checksums.

``recsys train ranker`` fits the candidate generators once on every event of the store and
writes their arrays (``recsys.algorithms.state``) to ``serving_state/`` inside the ranker's
MLflow model artifact, so a ranker version and the state it was trained beside travel
together.  Serving workers ``load_state`` them memory-mapped (``np.load(mmap_mode="r")``): the
pages are shared between workers through the page cache and nothing is refitted at start or on
a store refresh.  A file whose checksum, shape or dtype differs from the manifest refuses the
state with ``ModelNotReadyError`` (so the model is refused and the worker keeps serving what it
had); no pickles are read (``allow_pickle=False``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from feature_store.interactions import Interactions, newest_event
from recsys.algorithms.candidates import default_generators
from recsys.algorithms.state import Stateful, generators_state
from recsys.core import rules
from recsys.core.config import Settings
from recsys.core.errors import ModelNotReadyError

log = logging.getLogger(__name__)

STATE_DIR = "serving_state"  # inside a ranker's model directory
MANIFEST = "manifest.json"
FORMAT = 1
_PACKAGES = ("numpy", "scipy", "implicit", "lightgbm")


def build_state(
    settings: Settings, con: duckdb.DuckDBPyConnection, generator_names: Sequence[str]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Fit the named stateful generators on every event of the store (what serving sees);
    returns their arrays and the manifest's ``meta``."""
    started = time.perf_counter()
    events = rules.LIVE_SCOPE.events
    data = Interactions.from_store(con, events)
    gens = [
        g
        for g in default_generators(settings, None)
        if g.name in generator_names and isinstance(g, Stateful)
    ]
    for gen in gens:
        gen.fit(data)
    arrays = generators_state(gens, data)
    meta = {
        "events": events,
        "newest_event": str(newest_event(con, events)),
        "n_users": len(data.user_ids),
        "n_items": data.n_items,
        "generators": [g.name for g in gens],
        "seconds": round(time.perf_counter() - started, 1),
    }
    log.info(
        "serving state fitted on %s in %.1f s: %s", events, meta["seconds"], meta["generators"]
    )
    return arrays, meta


def sha256_file(path: Path, block: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def save_state(directory: Path, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Path:
    """Write each array as ``<key>.npy`` and ``manifest.json``; returns the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    entries: dict[str, dict[str, Any]] = {}
    for key, value in sorted(arrays.items()):
        arr = np.ascontiguousarray(value)
        if arr.dtype == object:
            raise TypeError(f"serving state array {key!r} has dtype object; convert it first")
        rel = f"{key}.npy"
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, arr, allow_pickle=False)
        entries[key] = {
            "file": rel,
            "shape": list(arr.shape),
            "dtype": arr.dtype.str,
            "sha256": sha256_file(path),
        }
    manifest = {
        "format": FORMAT,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": {p: _version(p) for p in _PACKAGES},
        "meta": dict(meta),
        "arrays": entries,
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True), "utf-8")
    size = sum((directory / e["file"]).stat().st_size for e in entries.values())
    log.info("serving state: %d arrays, %.1f MB in %s", len(entries), size / 1e6, directory)
    return directory


def load_state(
    directory: Path, *, verify: bool = True
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays memory-mapped read-only, manifest) of a saved state; ``ModelNotReadyError`` when
    the manifest is missing or unreadable or a file is missing, damaged or of another shape."""
    started = time.perf_counter()
    manifest = read_manifest(directory)
    arrays: dict[str, np.ndarray] = {}
    for key, entry in manifest["arrays"].items():
        path = directory / str(entry["file"])
        if not path.is_file():
            raise _refused(directory, f"{entry['file']} is missing")
        if verify and sha256_file(path) != entry["sha256"]:
            raise _refused(directory, f"{entry['file']} does not match its sha256 checksum")
        try:
            size = int(np.prod(entry["shape"]))
            arr = np.load(path, mmap_mode="r" if size else None, allow_pickle=False)
        except ValueError as exc:
            raise _refused(directory, f"{entry['file']} is not a readable array ({exc})") from exc
        if list(arr.shape) != list(entry["shape"]) or arr.dtype.str != entry["dtype"]:
            raise _refused(
                directory,
                f"{entry['file']} is {arr.dtype.str}{list(arr.shape)}, the manifest says "
                f"{entry['dtype']}{entry['shape']}",
            )
        arrays[key] = arr
    log.info(
        "serving state: %d arrays memory-mapped from %s in %.2f s%s",
        len(arrays),
        directory,
        time.perf_counter() - started,
        " (checksums verified)" if verify else "",
    )
    return arrays, manifest


def read_manifest(directory: Path) -> dict[str, Any]:
    """The state's manifest, checked for the format this code reads."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise _refused(directory, f"{MANIFEST} is missing") from exc
    except ValueError as exc:
        raise _refused(directory, f"{MANIFEST} is not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("arrays"), dict):
        raise _refused(directory, f"{MANIFEST} has no 'arrays' table")
    if manifest.get("format") != FORMAT:
        raise _refused(
            directory, f"format {manifest.get('format')!r} is not {FORMAT}, the one this code reads"
        )
    return manifest


def _refused(directory: Path, why: str) -> ModelNotReadyError:
    return ModelNotReadyError(
        f"the serving state in {directory} cannot be used: {why}; retrain the ranker "
        "(`recsys train ranker`) or delete the cached model folder to download it again"
    )


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
