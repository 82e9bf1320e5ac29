"""Scale benchmark: the whole job end to end at 1e5, 1e6 (and 1e7) synthetic events.

For each size, in a fresh home under a temporary folder: generate items (title, genres and a
short description, so the text path has text) and events with ``benchmarks/feature_store.py``'s
generator; then run each step as its own ``recsys`` process and record wall time, CPU time
(user + system of the whole process tree) and peak RSS (the tree's resident memory summed,
sampled every 0.2 s):

    ingest -> train text -> score -> train ranker -> evaluate -> serve

``train text`` and ``score`` run only with ``--text``, with the text model's defaults: its plan
fits ``text.time_budget_seconds`` and, on a log too large for one epoch, trains on a seeded
sample of the examples (the plan line in the log says how many); without ``--text`` the ranker
trains without text features and the report says "skipped".
``serve`` starts ``recsys serve`` (gunicorn, 2 workers), records the time until /readyz
answers 200 and each process's RSS / PSS, then sends GET /v1/users/<id>/recommendations for
random known users at a fixed rate (open loop, latency from the scheduled send time) and
reports p50 / p90 / p99 and the status counts.  Writes benchmarks/results/scale.json and .md
with how each figure grows from one size to the next.

    python -m benchmarks.scale --sizes 1e5                  # a few minutes
    python -m benchmarks.scale --sizes 1e5,1e6 --rate 20 --load-seconds 60
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import psutil

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TARGETS = {
    "train_ranker_peak_rss_gb": 8.0,
    "train_ranker_s": 1800.0,
    "serve_ready_s": 60.0,
    "worker_rss_gb": 2.0,
    "p50_ms": 30.0,
    "p99_ms": 100.0,
}
WORDS = {
    "Action": "chase fight rescue mission explosion hero",
    "Comedy": "funny awkward wedding road trip friends",
    "Drama": "family loss ambition trial secret",
    "Horror": "haunted night curse creature fear",
    "Romance": "love letters summer meeting heart",
    "Sci-Fi": "space robot future planet signal",
    "Kids": "puppy school adventure magic toy",
    "Docs": "true story history nature interview",
}


def _bench_generator() -> Any:
    """``benchmarks/feature_store.py`` as a module (its name would shadow the package)."""
    spec = importlib.util.spec_from_file_location("bench_fs", ROOT / "benchmarks/feature_store.py")
    assert spec is not None and spec.loader is not None  # noqa: S101 - a file of this repo
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generate(n_events: int, out: Path, seed: int = 0) -> dict[str, Any]:
    """items.parquet (with descriptions) and events.parquet under ``out``."""
    info = _bench_generator().generate(n_events, 10, out, seed=seed)
    rng = random.Random(seed)
    items = pl.read_parquet(out / "items.parquet")
    descriptions = []
    for title, genres in zip(items["title"], items["genres"], strict=True):
        words = " ".join(w for g in genres for w in rng.sample(WORDS[g].split(), 3))
        descriptions.append(f"{title}: a {' and '.join(genres).lower()} film about {words}.")
    items.with_columns(pl.Series("description", descriptions)).write_parquet(out / "items.parquet")
    return info


# ---------------------------------------------------------------------------------------------
# measuring a process tree
# ---------------------------------------------------------------------------------------------


class TreeSampler:
    """Peak of the summed RSS of a process and its descendants, sampled in a thread."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            total = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        continue
            except psutil.Error:
                break
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(timeout=2)
        return self.peak


# ``--setting section.key=value``: settings every child process gets (as RECSYS_* variables)
SETTINGS: dict[str, str] = {}


def child_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env.update({f"RECSYS_{k.upper().replace('.', '__')}": v for k, v in SETTINGS.items()})
    env.update(
        {
            "RECSYS_HOME": str(home),
            "PYTHONPATH": str(ROOT),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    return env


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_step(
    name: str, args: list[str], home: Path, logs: Path, ok: tuple[int, ...] = (0,)
) -> dict:
    """One ``recsys`` command: wall, CPU (tree, from rusage) and peak tree RSS."""
    log_file = logs / f"{name.replace(' ', '_')}.log"
    cmd = [sys.executable, "-m", "recsys", *args]
    print(f"  {name}: {' '.join(args)}", flush=True)
    cpu0, t0 = _cpu_children(), time.perf_counter()
    with open(log_file, "wb") as out:
        proc = subprocess.Popen(cmd, env=child_env(home), stdout=out, stderr=subprocess.STDOUT)
        sampler = TreeSampler(proc.pid)
        rc = proc.wait()
        peak = sampler.stop()
    wall, cpu = time.perf_counter() - t0, _cpu_children() - cpu0
    if rc not in ok:
        tail = log_file.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{name} exited with {rc}; log {log_file}:\n{tail}")
    result = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "peak_rss_gb": round(peak / 1e9, 3)}
    print(f"    {result}", flush=True)
    return result


# ---------------------------------------------------------------------------------------------
# serving
# ---------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 10.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback only
            r.read()
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, TimeoutError, ConnectionError):
        return 0


def process_memory(pid: int) -> list[dict[str, Any]]:
    """RSS and PSS (shared pages split between their users) of every process in the tree."""
    out = []
    root = psutil.Process(pid)
    for p in [root, *root.children(recursive=True)]:
        try:
            full = p.memory_full_info()
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        role = (
            "gunicorn worker"
            if p.parent() and "gunicorn" in " ".join(p.parent().cmdline())
            else ("gunicorn master" if "gunicorn" in cmd else "recsys")
        )
        out.append(
            {
                "pid": p.pid,
                "role": role,
                "rss_gb": round(full.rss / 1e9, 3),
                "pss_gb": round(getattr(full, "pss", 0) / 1e9, 3),
                # private pages only: what one more worker costs (RSS also counts the pages of
                # shared memory-mapped files, the feature snapshot and generator state)
                "uss_gb": round(getattr(full, "uss", 0) / 1e9, 3),
            }
        )
    return out


def load(
    base: str,
    users: list[str],
    rate: float,
    seconds: float,
    seed: int = 0,
    *,
    during: tuple[float, Any] | None = None,
) -> dict:
    """GET recommendations for random known users at ``rate`` per second (open loop).

    ``during`` = (t, fn): ``fn()`` runs t seconds into the load, and the latency of the
    requests sent from then on is reported on its own (``after_store_change``)."""
    rng = random.Random(seed)
    n = int(rate * seconds)
    results: list[tuple[float, int, float]] = []  # (latency s, status, sent at s)
    lock = threading.Lock()

    def one(i: int, scheduled: float) -> None:
        delay = scheduled - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        status = _get(f"{base}/v1/users/{rng.choice(users)}/recommendations?k=10")
        with lock:
            results.append((time.perf_counter() - scheduled, status, scheduled - start))

    start = time.perf_counter() + 0.5
    timer = None
    if during is not None:
        timer = threading.Timer(during[0] + 0.5, during[1])
        timer.start()
    with ThreadPoolExecutor(max_workers=64) as pool:
        for i in range(n):
            pool.submit(one, i, start + i / rate)
    if timer is not None:
        timer.join()
    lat = sorted(t for t, s, _ in results if s == 200)
    statuses: dict[str, int] = {}
    for _, s, _ in results:
        statuses[str(s)] = statuses.get(str(s), 0) + 1

    def pct(q: float) -> float | None:
        return round(1000 * lat[min(len(lat) - 1, int(q * len(lat)))], 1) if lat else None

    after = None
    if during is not None:
        late = sorted(t for t, s, at in results if s == 200 and at >= during[0])
        after = {
            "from_s": during[0],
            "requests": sum(1 for _, _, at in results if at >= during[0]),
            "errors_5xx": sum(1 for _, s, at in results if at >= during[0] and s >= 500),
            "shed_503": sum(1 for _, s, at in results if at >= during[0] and s == 503),
            "p50_ms": round(1000 * late[len(late) // 2], 1) if late else None,
            "p99_ms": round(1000 * late[min(len(late) - 1, int(0.99 * len(late)))], 1)
            if late
            else None,
            "max_ms": round(1000 * late[-1], 1) if late else None,
        }
    return {
        "rate": rate,
        "seconds": seconds,
        "requests": n,
        "after_store_change": after,
        "statuses": statuses,
        "errors_5xx": sum(v for k, v in statuses.items() if k.startswith("5")),
        "p50_ms": pct(0.5),
        "p90_ms": pct(0.9),
        "p99_ms": pct(0.99),
        "max_ms": round(1000 * lat[-1], 1) if lat else None,
    }


def external_write(home: Path, n: int = 100) -> None:
    """What a batch job does to the store while serving: ``n`` copies of the newest events,
    one second later, under new ids (the writer then publishes a full snapshot and workers
    rebuild on it)."""
    import duckdb  # noqa: PLC0415 - only the serve step's store change needs it here

    db = str(home / "recsys.duckdb")
    for _ in range(120):  # the writer holds the store for a moment per flush
        try:
            con = duckdb.connect(db)
            break
        except duckdb.IOException:
            time.sleep(0.5)
    else:
        raise TimeoutError(f"could not open {db} read-write")
    try:
        con.execute(
            f"""INSERT INTO events SELECT * REPLACE (event_id || '-bench' AS event_id,
                ts + INTERVAL 1 SECOND AS ts, 'bench' AS batch_id)
            FROM (SELECT * FROM events ORDER BY ts DESC LIMIT {int(n)})"""
        )
    finally:
        con.close()
    print(f"    store changed at {time.strftime('%H:%M:%S')} ({n} events)", flush=True)


def serve_step(
    home: Path,
    logs: Path,
    users: list[str],
    rate: float,
    seconds: float,
    change_at: float | None = None,
) -> dict:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "recsys", "serve", "--port", str(port), "--workers", "2"]
    print(f"  serve: port {port}", flush=True)
    with open(logs / "serve.log", "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd, env=child_env(home), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            while _get(f"{base}/readyz", timeout=2) != 200:
                if proc.poll() is not None:
                    raise RuntimeError(f"recsys serve exited with {proc.returncode}")
                if time.perf_counter() - t0 > 900:
                    raise TimeoutError("recsys serve not ready in 900 s")
                time.sleep(0.25)
            ready = time.perf_counter() - t0
            for user in users[:4]:  # first requests warm each worker's caches
                _get(f"{base}/v1/users/{user}/recommendations?k=10")
            during = None if change_at is None else (change_at, lambda: external_write(home))
            result = load(base, users, rate, seconds, during=during)
            memory = process_memory(proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    workers = [m for m in memory if m["role"] == "gunicorn worker"]
    out_ = {
        "ready_s": round(ready, 1),
        "worker_rss_gb": max((w["rss_gb"] for w in workers), default=None),
        "worker_pss_gb": max((w["pss_gb"] for w in workers), default=None),
        "worker_uss_gb": max((w["uss_gb"] for w in workers), default=None),
        "processes": memory,
        **result,
    }
    print(f"    ready {out_['ready_s']} s, workers {workers}, {result}", flush=True)
    return out_


# ---------------------------------------------------------------------------------------------
# one size end to end
# ---------------------------------------------------------------------------------------------


STEPS = ("ingest", "train text", "score", "train ranker", "evaluate")


def run_size(n_events: int, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One size end to end.  Each finished step is recorded in ``work/progress.json``: with
    ``--resume`` a size whose run stopped (a killed or failed step) goes on from the first step
    it lacks, in the same home."""
    data, home, logs = work / "data", work / "home", work / "logs"
    for d in (data, home, logs):
        d.mkdir(parents=True, exist_ok=True)
    progress = work / "progress.json"
    saved = json.loads(progress.read_text("utf-8")) if args.resume and progress.is_file() else {}
    steps: dict[str, Any] = saved.get("steps", {})
    for name in args.redo:
        steps.pop(name, None)  # measured again; the other finished steps are kept
    if "data" in saved:
        info = saved["data"]
        print(f"size {n_events:.0e}: resuming after {', '.join(steps) or 'the data'}", flush=True)
    else:
        t = time.perf_counter()
        info = generate(n_events, data, seed=args.seed)
        info["generate_s"] = round(time.perf_counter() - t, 1)
        print(f"size {n_events:.0e}: {info}", flush=True)

    def step(name: str, fn: Any) -> None:
        if name not in steps:
            steps[name] = fn()
            progress.write_text(json.dumps({"data": info, "steps": steps}, indent=2), "utf-8")

    def ingest() -> dict[str, Any]:
        items = run_step(
            "ingest items", ["ingest", "items", str(data / "items.parquet")], home, logs, ok=(0, 3)
        )
        events = run_step(
            "ingest events",
            ["ingest", "events", str(data / "events.parquet")],
            home,
            logs,
            ok=(0, 3),
        )
        return {k: round(items[k] + events[k], 1) for k in ("wall_s", "cpu_s")} | {
            "peak_rss_gb": max(items["peak_rss_gb"], events["peak_rss_gb"])
        }

    step("ingest", ingest)
    if args.text:
        text_args = ["train", "text"]
        text_args += ["--max-pairs", str(args.text_max_pairs)] if args.text_max_pairs else []
        step("train text", lambda: run_step("train text", text_args, home, logs))
        step("score", lambda: run_step("score", ["score"], home, logs))
    else:
        steps["train text"] = steps["score"] = "skipped (--text not given)"
    step("train ranker", lambda: run_step("train ranker", ["train", "ranker"], home, logs))
    report: dict[str, Any] = {}
    if args.skip_evaluate:
        steps["evaluate"] = "skipped (--skip-evaluate)"
    else:
        systems = "popularity,item_knn,als,ranker_no_text,ranker" + (
            ",text_only" if args.text else ""
        )
        evaluate = ["evaluate", "--systems", systems]
        step("evaluate", lambda: run_step("evaluate", evaluate, home, logs))
        report = json.loads((home / "reports" / "evaluate" / "report.json").read_text())
    users = (
        pl.read_parquet(data / "events.parquet", columns=["user_id"])["user_id"].unique().to_list()
    )
    random.Random(args.seed).shuffle(users)
    steps["serve"] = serve_step(
        home, logs, users[:5000], args.rate, args.load_seconds, args.store_change_at
    )
    return {
        "n_events": n_events,
        "data": info,
        "steps": steps,
        "quality": _quality(report),
        "state_mb": _state_mb(home),
    }


def _quality(report: dict[str, Any]) -> dict[str, Any]:
    if not report:
        return {"evaluate": "skipped"}
    systems: dict[str, Any] = report.get("systems", {})
    users = [m.get("users") for m in systems.values()]
    out: dict[str, Any] = {"users": users[0] if users else None}
    out["users_sampled"] = report.get("users_sampled", "no (all users)")
    out |= {f"{k}_ndcg@10": round(float(m["ndcg@10"]), 4) for k, m in systems.items()}
    return out


def _state_mb(home: Path) -> float | None:
    sizes = [
        sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
        for d in home.rglob("serving_state")
        if d.is_dir()
    ]
    return round(max(sizes) / 1e6, 1) if sizes else None


def growth(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ratios of each figure from one size to the next (events grow by the first ratio)."""
    out = []
    for a, b in zip(runs, runs[1:], strict=False):
        row: dict[str, Any] = {
            "from": a["n_events"],
            "to": b["n_events"],
            "events": b["n_events"] / a["n_events"],
        }
        for step, fa in a["steps"].items():
            fb = b["steps"].get(step)
            if not isinstance(fa, dict) or not isinstance(fb, dict):
                continue
            for key in ("wall_s", "peak_rss_gb", "ready_s", "worker_rss_gb", "p50_ms", "p99_ms"):
                if fa.get(key) and fb.get(key):
                    row[f"{step} {key}"] = round(fb[key] / fa[key], 2)
        out.append(row)
    return out


def write(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str), "utf-8")
    lines = [
        "# Scale benchmark (synthetic events, end to end)",
        "",
        f"{result['machine']}; load average at start {result['load_average_start']}, "
        f"at end {result['load_average_end']}. {result['note']}",
        "",
        "| events | step | wall s | CPU s | peak RSS GB |",
        "| ---: | --- | ---: | ---: | ---: |",
    ]
    for run in result["runs"]:
        for step, f in run["steps"].items():
            if step == "serve":
                continue
            if isinstance(f, dict):
                cells = (f"{run['n_events']:.0e}", step, f["wall_s"], f["cpu_s"], f["peak_rss_gb"])
                lines.append("| " + " | ".join(str(c) for c in cells) + " |")
            else:
                lines.append(f"| {run['n_events']:.0e} | {step} | {f} | | |")
    lines += [
        "",
        "| events | users | items | serve ready s | worker RSS GB | worker PSS GB "
        "| worker private GB | rate | p50 ms | p90 ms | p99 ms | 5xx | state MB |",
        "|" + " ---: |" * 13,
    ]
    for run in result["runs"]:
        s = run["steps"]["serve"]
        cells = [f"{run['n_events']:.0e}", run["data"]["n_users"], run["data"]["n_items"]]
        cells += [s.get(k) for k in ("ready_s", "worker_rss_gb", "worker_pss_gb", "worker_uss_gb")]
        cells += [s["rate"]]
        cells += [s[k] for k in ("p50_ms", "p90_ms", "p99_ms", "errors_5xx")] + [run["state_mb"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += [
        "",
        "Quality (protocol on the synthetic split; random data, so only a sanity check):",
        "",
    ]
    for run in result["runs"]:
        lines.append(f"- {run['n_events']:.0e}: {json.dumps(run['quality'])}")
    if result["growth"]:
        lines += ["", "Growth from one size to the next (ratio of the figure):", ""]
        for row in result["growth"]:
            lines.append(f"- {json.dumps(row)}")
    path.with_suffix(".md").write_text("\n".join(lines) + "\n", "utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1e5,1e6", help="Comma-separated event counts.")
    parser.add_argument("--text", action="store_true", help="Also train and score the text model.")
    parser.add_argument(
        "--text-max-pairs",
        type=int,
        default=0,
        help="Cap on text training examples (0: the plan fits text.time_budget_seconds).",
    )
    parser.add_argument("--skip-evaluate", action="store_true", help="Do not run `evaluate`.")
    parser.add_argument("--rate", type=float, default=20.0, help="Requests per second.")
    parser.add_argument("--load-seconds", type=float, default=60.0)
    parser.add_argument(
        "--store-change-at",
        type=float,
        default=None,
        help="Seconds into the serve load at which a batch job writes the store (workers "
        "then rebuild on a new snapshot); latency from then on is reported apart.",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--work", type=Path, default=None, help="Work folder (default: a temp one)."
    )
    parser.add_argument("--keep", action="store_true", help="Keep each size's home and data.")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="With --work: go on from each size's last finished step (its progress.json).",
    )
    parser.add_argument(
        "--redo",
        type=lambda v: [s.strip() for s in v.split(",") if s.strip()],
        default=[],
        help="With --resume: run these finished steps again (e.g. 'score' after changing it), "
        "keeping the others' figures.",
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "scale.json")
    parser.add_argument(
        "--append", action="store_true", help="Keep the other sizes already in --output."
    )
    parser.add_argument("--note", default="", help="Free text for the report (e.g. machine busy).")
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="A setting for every step (repeatable), e.g. serving.store_cache_mb=64.",
    )
    args = parser.parse_args()
    for item in args.setting:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            parser.error(f"--setting takes SECTION.KEY=VALUE, got {item!r}")
        SETTINGS[key.strip()] = value.strip()
    unknown = set(args.redo) - set(STEPS)
    if unknown or (args.redo and not args.resume):
        parser.error(f"--redo takes steps of {', '.join(STEPS)} and needs --resume")
    sizes = [int(float(s)) for s in args.sizes.split(",") if s.strip()]
    result: dict[str, Any] = {
        "benchmark": "scale",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "load_average_start": [round(v, 2) for v in os.getloadavg()],
        "note": args.note,
        "settings": dict(SETTINGS),
        "targets": TARGETS,
        "text": bool(args.text),
        "runs": [],
    }
    if args.append and args.output.with_suffix(".json").is_file():
        earlier = json.loads(args.output.with_suffix(".json").read_text("utf-8"))
        result["runs"] = [r for r in earlier["runs"] if r["n_events"] not in sizes]
        result["earlier_load_averages"] = [earlier.get("load_average_start")]
    root = args.work or Path(tempfile.mkdtemp(prefix="recsys-scale-"))
    for n in sizes:
        work = root / f"{n:.0e}"
        run = run_size(n, work, args)
        result["runs"] = sorted([*result["runs"], run], key=lambda r: r["n_events"])
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        result["growth"] = growth(result["runs"])
        result["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
        write(result, args.output)  # after every size, so a later failure keeps the earlier
    print(f"wrote {args.output.with_suffix('.md')}", flush=True)


if __name__ == "__main__":
    main()
