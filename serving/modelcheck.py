"""Verify a ranker before any worker loads it, and remember which versions passed.

LightGBM's text parser is native code: a truncated or garbled ``ranker.txt`` can kill the
process that parses it (SIGSEGV / SIGABRT), and every gunicorn worker that loads the champion
at boot would die the same way.  So before a worker parses a version it is checked twice:

1. the sha256 of every artifact file against the checksums recorded at registration
   (``training.registry.record_checksums``): a file damaged or replaced since is refused;
2. a parse (and one prediction) in a child process, which may crash without harm.

Outcomes are recorded per version and file digest in ``<home>/serving/verified-models.json``, so
each version is parsed in a child once per home; a refused version stays refused (cheaply) and
the server falls back to the newest version that passed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from recsys.core import rules
from recsys.core.config import Settings
from serving.errors import ReloadRefusedError
from training import registry
from training.ranker.model import RankerModel

log = logging.getLogger(__name__)

RECORD_FILE = "verified-models.json"
PARSE_TIMEOUT_SECONDS = 120.0
_PACKAGE_ROOT = Path(__file__).resolve().parents[1]
_CHILD_CODE = (
    "import sys; from serving.modelcheck import child_main; sys.exit(child_main(sys.argv))"
)

Ranker = tuple[registry.ModelRef, Path]
Parser = Callable[[Path], str | None]


class ModelRefusedError(ReloadRefusedError):
    """A model version failed verification (checksum or child-process parse); 409 at reload."""

    def __init__(self, name: str, version: str, reason: str) -> None:
        super().__init__(f"{name} version {version} was refused: {reason}")
        self.name, self.version, self.reason = name, version, reason


def parse_in_child(directory: Path, timeout: float = PARSE_TIMEOUT_SECONDS) -> str | None:
    """``None`` when the ranker in ``directory`` loads and predicts in a child process, else why
    not (the child's error, the signal that killed it, or a timeout)."""
    paths = [str(_PACKAGE_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD_CODE, str(directory)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"parsing the model did not finish in {timeout:.0f} s"
    if proc.returncode == 0:
        return None
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = str(-proc.returncode)
        return f"the LightGBM parser crashed the checking process ({name})"
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    return lines[-1][:500] if lines else f"the checking process exited with {proc.returncode}"


def child_main(argv: list[str]) -> int:
    """The child's side: load the ranker and score one row of zeros (a crash here is the point)."""
    model = RankerModel.load(Path(argv[1]))
    scores = model.predict(np.zeros((1, len(model.feature_names))))
    if scores.shape != (1,):
        raise ValueError(f"the model scored one row as shape {scores.shape}")
    return 0


class ModelVerifier:
    """Checks ranker versions (see the module docstring) and keeps the record of outcomes."""

    def __init__(self, settings: Settings, *, parse: Parser = parse_in_child) -> None:
        self.settings = settings
        self.parse = parse
        self.record_path = settings.home / "serving" / RECORD_FILE

    def champion(self) -> Ranker:
        """The champion ranker and its local files, verified; ModelRefusedError if it fails."""
        ref, directory = registry.cached_champion(self.settings, rules.RANKER_MODEL_NAME)
        self.verify(ref, directory)
        return ref, directory

    def verify(self, ref: registry.ModelRef, directory: Path) -> None:
        """Raise ModelRefusedError unless ``directory`` holds a sound copy of ``ref``."""
        files = registry.sha256_tree(directory)
        digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
        with self._locked() as record:
            known = record.get(ref.name, {}).get(ref.version)
            if known is not None and known.get("digest") == digest:
                if known.get("status") == "verified":
                    return
                raise ModelRefusedError(ref.name, ref.version, str(known.get("reason")))
            reason = self._checksum_problem(ref, files, directory)
            if reason is None:
                started = time.perf_counter()
                reason = self.parse(directory)
                log.info(
                    "parsed %s v%s in a child process in %.1f s: %s",
                    ref.name,
                    ref.version,
                    time.perf_counter() - started,
                    reason or "ok",
                )
            record.setdefault(ref.name, {})[ref.version] = {
                "digest": digest,
                "status": "refused" if reason else "verified",
                "reason": reason,
                "at": time.time(),
            }
        if reason:
            log.error("refused %s version %s: %s", ref.name, ref.version, reason)
            raise ModelRefusedError(ref.name, ref.version, reason)

    def fallback(self, *, exclude: str, prefer: str | None = None) -> Ranker | None:
        """The version to serve instead of a refused champion: ``prefer`` (what serves now) if
        it was verified, else the newest verified version; ``None`` when none passes."""
        name = rules.RANKER_MODEL_NAME
        entries = self.records().get(name, {})
        good = [v for v, e in entries.items() if e.get("status") == "verified" and v != exclude]
        good.sort(key=lambda v: (v != prefer, -float(entries[v].get("at", 0))))
        for version in good:
            try:
                ref = registry.model_version(self.settings, name, version)
                directory = registry.cached_download(self.settings, ref)
                self.verify(ref, directory)
            except Exception as exc:  # deleted from the registry, damaged since, ...
                log.warning("cannot fall back to %s v%s: %s", name, version, exc)
                continue
            return ref, directory
        return None

    def records(self) -> dict[str, dict[str, dict[str, Any]]]:
        """``{name: {version: {digest, status, reason, at}}}`` as recorded so far."""
        try:
            data = json.loads(self.record_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except ValueError:
            log.warning("ignoring unreadable %s; models are verified again", self.record_path)
            return {}
        return data if isinstance(data, dict) else {}

    def _checksum_problem(
        self, ref: registry.ModelRef, files: dict[str, str], directory: Path
    ) -> str | None:
        recorded = registry.recorded_checksums(self.settings, ref.name, ref.version)
        if recorded is None:
            log.warning(
                "%s v%s has no checksums recorded at registration; verified by parsing only",
                ref.name,
                ref.version,
            )
            return None
        bad = sorted(k for k in recorded.keys() | files.keys() if recorded.get(k) != files.get(k))
        if not bad:
            return None
        return (
            f"{', '.join(bad[:5])} in {directory} differ from the checksums recorded at "
            "registration (damaged or replaced since); delete that folder to download the "
            "version again, or promote another version"
        )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, dict[str, dict[str, Any]]]]:
        """The record, read and rewritten under an exclusive lock (workers verify at once)."""
        self.record_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.record_path.with_suffix(".lock"), "a+", encoding="utf-8") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                record = self.records()
                before = json.dumps(record, sort_keys=True)
                yield record
                if json.dumps(record, sort_keys=True) != before:
                    tmp = self.record_path.with_name(f".{RECORD_FILE}.{os.getpid()}.tmp")
                    tmp.write_text(json.dumps(record, indent=1, sort_keys=True), encoding="utf-8")
                    os.replace(tmp, self.record_path)
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
