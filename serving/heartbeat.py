"""Event writer liveness: a heartbeat file the writer rewrites every second, read by /readyz.

The writer process runs a small thread that rewrites ``<home>/serving/writer.heartbeat``
(JSON: pid, state, time of the beat, last good flush, last error) every ``BEAT_SECONDS``.  A
worker answering ``/readyz`` reads it: a writer whose process is gone, whose beat is older than
``STALE_SECONDS`` or that said it stopped is not ingesting, so the service is not ready to take
events.  No file at all means no writer ever ran for this home (an app built by hand, tests).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

HEARTBEAT_FILE = "writer.heartbeat"
BEAT_SECONDS = 1.0
STALE_SECONDS = 15.0


@dataclass
class WriterStatus:
    """What the writer reports in its heartbeat (updated by the flush loop)."""

    started_at: float = field(default_factory=time.time)
    last_flush_ok_at: float | None = None
    flushing_since: float | None = None
    last_error: str | None = None


class Heartbeat:
    """Rewrites ``path`` every ``interval`` seconds from a daemon thread while started."""

    def __init__(self, path: Path, status: WriterStatus, interval: float = BEAT_SECONDS) -> None:
        self.path = path
        self.status = status
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.beat("running")
        self._thread = threading.Thread(target=self._loop, name="writer-heartbeat", daemon=True)
        self._thread.start()

    def stop(self, state: str = "stopped") -> None:
        """End the beats and leave ``state`` in the file (readers then know it is not running)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.beat(state)

    def beat(self, state: str = "running") -> None:
        body = {"pid": os.getpid(), "state": state, "beat_at": time.time(), **asdict(self.status)}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(body), encoding="utf-8")
            os.replace(tmp, self.path)  # readers never see a half-written file
        except OSError as exc:
            log.warning("cannot write the writer heartbeat %s: %s", self.path, exc)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat("running")


def read_heartbeat(path: Path) -> dict[str, Any] | None:
    """The last heartbeat written to ``path``; None when there is none (or it is unreadable)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def writer_check(path: Path, now: float | None = None) -> dict[str, Any]:
    """The ``writer`` entry of /readyz: ``ok`` false when a writer ran here and is gone now."""
    beat = read_heartbeat(path)
    if beat is None:
        return {"ok": True, "state": "absent", "detail": "no event writer has run for this home"}
    now = time.time() if now is None else now
    age = max(0.0, now - float(beat.get("beat_at") or 0.0))
    pid = beat.get("pid")
    out: dict[str, Any] = {
        "ok": True,
        "state": beat.get("state"),
        "pid": pid,
        "heartbeat_age_s": round(age, 3),
        "last_flush_ok_at": beat.get("last_flush_ok_at"),
        "flushing_since": beat.get("flushing_since"),
        "last_error": beat.get("last_error"),
    }
    if beat.get("state") != "running":
        out.update(ok=False, detail="the event writer has stopped; events wait in the log")
    elif isinstance(pid, int) and not _process_exists(pid):
        out.update(ok=False, state="dead", detail=f"the event writer (pid {pid}) is gone")
    elif age > STALE_SECONDS:
        out.update(ok=False, state="stale", detail=f"no writer heartbeat for {age:.0f} s")
    return out


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, ValueError):
        # a zombie (killed, not yet reaped by the supervisor) is gone for our purposes
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True
