"""Soak benchmark: ``recsys serve`` under a steady stream of events and rank requests.

Every ``--sample-seconds`` it records each gunicorn worker's RSS, the CPU the writer (the
``recsys serve`` process) and the workers used, descriptors held to deleted snapshot files, the
snapshots and deltas on disk and the workers' open descriptors.  The report compares worker RSS
early in the run
(after ``--warmup-seconds``) with its end: the issue 9 target is growth < 10% over 30 minutes.

    python -m benchmarks.soak --home /path/to/trained/home                 # 30 minutes
    python -m benchmarks.soak --home ... --minutes 3 --warmup-seconds 30   # a quick check

Writes benchmarks/results/soak.json and .md (``--out`` elsewhere).  Needs a home with the
MovieLens store and champion models (see benchmarks/serve_load.py).  Loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks.serve_load import LOOPBACK, RESULTS, _free_port, _payloads, _recsys_server

API_KEY = "soak-benchmark-key"


class Load:
    """Two open-loop senders (events, rank requests) in threads; counts what was answered."""

    def __init__(
        self, base: str, payloads: list[dict[str, Any]], events_rate: float, rank_rate: float
    ) -> None:
        self.base, self.payloads = base, payloads
        self.users = sorted({p["user_id"] for p in payloads})
        self.items = sorted({i for p in payloads for i in p["candidates"]})
        self.rates = {"events": events_rate, "rank": rank_rate}
        self.counts = {"events_accepted": 0, "events_failed": 0, "rank_ok": 0, "rank_failed": 0}
        self.stop = threading.Event()
        self._lock = threading.Lock()
        # one sender per 5 req/s, so a slow answer does not lower the offered rate much
        self.senders = {kind: max(1, round(rate / 5)) for kind, rate in self.rates.items()}
        self._threads = [
            threading.Thread(target=self._run, args=(kind, n), daemon=True)
            for kind, rate in self.rates.items()
            if rate > 0
            for n in range(self.senders[kind])
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def _run(self, kind: str, sender: int) -> None:
        rng = random.Random(f"{kind}-{sender}")
        interval = self.senders[kind] / self.rates[kind]
        next_at = time.monotonic()
        with httpx.Client(base_url=self.base, timeout=10) as client:
            while not self.stop.is_set():
                try:
                    if kind == "events":
                        self._post_event(client, rng)
                    else:
                        resp = client.post("/v1/rank", json=rng.choice(self.payloads))
                        self._count("rank_ok" if resp.status_code == 200 else "rank_failed")
                except httpx.HTTPError:
                    self._count(f"{'events' if kind == 'events' else 'rank'}_failed")
                next_at += interval
                self.stop.wait(max(0.0, next_at - time.monotonic()))

    def _post_event(self, client: httpx.Client, rng: random.Random) -> None:
        event = {
            "event_id": f"soak-{uuid.uuid4().hex}",
            "user_id": rng.choice(self.users),
            "item_id": rng.choice(self.items),
            "event_type": "click",
            "ts": time.time(),
        }
        resp = client.post("/v1/events", json={"events": [event]}, headers={"X-API-Key": API_KEY})
        ok = resp.status_code == 200 and resp.json().get("accepted") == 1
        self._count("events_accepted" if ok else "events_failed")


def _workers(serve: psutil.Process) -> list[psutil.Process]:
    for child in serve.children():
        if "gunicorn" in " ".join(child.cmdline()):
            return list(child.children())
    return []


def _deleted_snapshot_fds(proc: psutil.Process) -> int:
    n = 0
    try:
        for fd in os.listdir(f"/proc/{proc.pid}/fd"):
            try:
                target = os.readlink(f"/proc/{proc.pid}/fd/{fd}")
            except OSError:
                continue
            snapshot = "store-" in target or "delta-" in target
            n += snapshot and target.endswith("(deleted)")
    except OSError:
        pass
    return n


def _fds(proc: psutil.Process) -> int:
    try:
        return int(proc.num_fds())
    except psutil.Error:
        return 0


def _cpu(proc: psutil.Process) -> float:
    try:
        t = proc.cpu_times()
        return float(t.user + t.system)
    except psutil.Error:
        return 0.0


def _sample(serve: psutil.Process, home: Path, t0: float, last: dict[str, Any]) -> dict[str, Any]:
    workers = _workers(serve)
    now = time.monotonic()
    # the writer is ``recsys serve --writer-only``, a child of the supervising ``recsys serve``
    writer_cpu = _cpu(serve) + sum(
        _cpu(c) for c in serve.children() if "--writer-only" in " ".join(c.cmdline())
    )
    worker_cpu = {w.pid: _cpu(w) for w in workers}
    dt = max(1e-6, now - last.get("at", t0))
    rss = {}
    for w in workers:
        try:
            rss[w.pid] = w.memory_info().rss
        except psutil.Error:
            continue
    sample = {
        "t_s": round(now - t0, 1),
        "worker_rss_mb": {str(pid): round(v / 1e6, 1) for pid, v in rss.items()},
        "worker_rss_mb_total": round(sum(rss.values()) / 1e6, 1),
        "writer_cpu_cores": round((writer_cpu - last.get("writer_cpu", writer_cpu)) / dt, 3),
        "workers_cpu_cores": round(
            sum(c - last.get("worker_cpu", {}).get(p, c) for p, c in worker_cpu.items()) / dt, 3
        ),
        "deleted_snapshot_fds": sum(_deleted_snapshot_fds(w) for w in workers),
        "snapshots_on_disk": len(list((home / "serving" / "snapshots").glob("store-*.duckdb"))),
        "deltas_on_disk": len(list((home / "serving" / "deltas").glob("delta-*.duckdb"))),
        "worker_fds": sum(_fds(w) for w in workers),
    }
    last.update({"at": now, "writer_cpu": writer_cpu, "worker_cpu": worker_cpu})
    return sample


def dump_compact(result: dict[str, Any]) -> str:
    """JSON with one line per sample: the time series stays readable and diffable without
    costing a line per number."""
    head = {k: v for k, v in result.items() if k != "samples"}
    text = json.dumps(head, indent=2)[:-2]
    samples = ",\n    ".join(json.dumps(x) for x in result.get("samples", []))
    return f'{text},\n  "samples": [\n    {samples}\n  ]\n}}\n'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("RECSYS_HOME", ".recsys")))
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--events-per-second", type=float, default=20.0)
    parser.add_argument("--rank-per-second", type=float, default=5.0)
    parser.add_argument("--sample-seconds", type=float, default=10.0)
    parser.add_argument("--warmup-seconds", type=float, default=120.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.minutes <= 0 or args.sample_seconds <= 0:
        raise SystemExit("--minutes and --sample-seconds must be positive")
    home = args.home.resolve()
    payloads = _payloads(home, 100, 10)
    port = _free_port()
    env = {"RECSYS_SERVING__API_KEY": API_KEY}
    load_before = os.getloadavg()
    samples: list[dict[str, Any]] = []
    with _recsys_server(home, port, args.workers, env):
        serve = next(p for p in psutil.Process().children() if "serve" in " ".join(p.cmdline()))
        load = Load(
            f"http://{LOOPBACK}:{port}", payloads, args.events_per_second, args.rank_per_second
        )
        t0, last = time.monotonic(), {}
        _sample(serve, home, t0, last)
        load.start()
        end = t0 + args.minutes * 60
        while time.monotonic() < end:
            time.sleep(min(args.sample_seconds, max(0.0, end - time.monotonic())))
            samples.append(_sample(serve, home, t0, last))
            s = samples[-1]
            print(
                f"  {s['t_s']:7.1f} s: workers {s['worker_rss_mb_total']} MB, writer "
                f"{s['writer_cpu_cores']} cores, workers {s['workers_cpu_cores']} cores, "
                f"{s['deleted_snapshot_fds']} deleted fds, {s['snapshots_on_disk']} snapshots",
                flush=True,
            )
        load.join()
        elapsed = time.monotonic() - t0
    _write(args, samples, load.counts, elapsed, load_before)


def _write(
    args: argparse.Namespace,
    samples: list[dict[str, Any]],
    counts: dict[str, int],
    elapsed: float,
    load_before: tuple[float, float, float],
) -> None:
    steady = [s for s in samples if s["t_s"] >= args.warmup_seconds] or samples
    k = max(1, len(steady) // 10)
    early = statistics.median(s["worker_rss_mb_total"] for s in steady[:k])
    late = statistics.median(s["worker_rss_mb_total"] for s in steady[-k:])
    growth = (late - early) / early if early else None
    # a worker's RSS swings while it rebuilds its models (old and new side by side for a few
    # seconds); the troughs show what stays behind
    low_early = min(s["worker_rss_mb_total"] for s in steady[: max(k, len(steady) // 3)])
    low_late = min(s["worker_rss_mb_total"] for s in steady[-max(k, len(steady) // 3) :])
    summary = {
        "minutes": round(elapsed / 60, 2),
        "events_per_second_acked": round(counts["events_accepted"] / elapsed, 2),
        "rank_per_second_ok": round(counts["rank_ok"] / elapsed, 2),
        **counts,
        "worker_rss_mb_early": early,
        "worker_rss_mb_late": late,
        "worker_rss_growth": None if growth is None else round(growth, 4),
        "worker_rss_mb_trough_first_third": low_early,
        "worker_rss_mb_trough_last_third": low_late,
        "worker_rss_trough_growth": round((low_late - low_early) / low_early, 4),
        "worker_rss_mb_max": max(s["worker_rss_mb_total"] for s in steady),
        "writer_cpu_cores_mean": round(statistics.fmean(s["writer_cpu_cores"] for s in steady), 3),
        "workers_cpu_cores_mean": round(
            statistics.fmean(s["workers_cpu_cores"] for s in steady), 3
        ),
        "max_deleted_snapshot_fds": max(s["deleted_snapshot_fds"] for s in samples),
        "max_snapshots_on_disk": max(s["snapshots_on_disk"] for s in samples),
        "max_deltas_on_disk": max(s.get("deltas_on_disk", 0) for s in samples),
        "worker_fds_early_late": [steady[0]["worker_fds"], steady[-1]["worker_fds"]],
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "soak",
        "settings": {k: str(v) for k, v in vars(args).items()},
        "summary": summary,
        "samples": samples,
    }
    (args.out / "soak.json").write_text(dump_compact(result))
    lines = [
        f"# soak: {summary['minutes']} min, {args.events_per_second:g} events/s + "
        f"{args.rank_per_second:g} rank req/s, gunicorn {args.workers} workers",
        "",
        f"Load average {load_before[0]:.1f} before, {summary['loadavg_after'][0]:.1f} after "
        f"({summary['cpus']} CPUs).  Steady state from {args.warmup_seconds:g} s.",
        "",
        "| measure | value |",
        "| --- | --- |",
    ]
    lines += [f"| {k} | {v} |" for k, v in summary.items() if not k.startswith("loadavg")]
    target = growth is not None and growth < 0.10
    lines += ["", f"Worker RSS growth < 10%: {'met' if target else 'NOT met'}.", ""]
    (args.out / "soak.md").write_text("\n".join(lines))
    print(f"wrote {args.out / 'soak.json'} and .md: {json.dumps(summary)}")


if __name__ == "__main__":
    main()
