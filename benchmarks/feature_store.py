"""Feature-store benchmark: ingest and point-in-time features at 1e5, 1e6 and 1e7 events.

For each size, in fresh subprocesses (so peak RSS is per step): generate synthetic items and
events (power-law users and items, two years of timestamps with daily and weekly cycles) as
Parquet; ingest them with ``feature_store.ingest`` into a fresh store; compute features for
100k (user, item, as_of) rows.  Then the request path: ``compute_features`` for one user x 300
candidates at as_of=now on MovieLens-small through a ``con.cursor()``.  Writes
benchmarks/results/feature_store.json and .md.

    python -m benchmarks.feature_store                 # all sizes (the 1e7 run takes minutes)
    python -m benchmarks.feature_store --sizes 1e5,1e6 --requests 20000
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

from feature_store.adapters.movielens import ingest_movielens
from feature_store.db import connect, table_counts
from feature_store.features import FeatureSnapshot, compute_features
from feature_store.ingest import ingest_events_file, ingest_items_file

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TARGETS = {"ingest_1e7_s": 60.0, "features_1e7_s": 30.0, "peak_rss_gib": 4.0}
START = datetime(2022, 1, 1)
DAYS = 730
EVENT_TYPES = np.array(["rate", "click", "view", "impression", "like"])
EVENT_P = np.array([0.45, 0.15, 0.2, 0.15, 0.05])
GENRES = np.array(["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Kids", "Docs"])

log = logging.getLogger("bench.feature_store")


def peak_rss_gib() -> float:
    """Peak resident set of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def zipf_ids(rng: np.random.Generator, n: int, size: int, a: float) -> np.ndarray:
    """``size`` draws from ``0..n-1`` with P(k) proportional to 1/(k+1)^a, ids shuffled."""
    p = 1.0 / np.arange(1, n + 1) ** a
    draws = rng.choice(n, size=size, p=p / p.sum())
    return rng.permutation(n)[draws]


def timestamps(rng: np.random.Generator, size: int) -> np.ndarray:
    """Two years of activity that grows over time, peaks in the evening and at weekends."""
    days = np.arange(DAYS)
    weekday = (days + START.weekday()) % 7
    day_w = (1 + days / DAYS) * np.where(weekday >= 5, 1.4, 1.0)
    hour_w = 0.3 + np.exp(-0.5 * ((np.arange(24) - 20) / 3.0) ** 2)
    day = rng.choice(DAYS, size=size, p=day_w / day_w.sum())
    hour = rng.choice(24, size=size, p=hour_w / hour_w.sum())
    seconds = day * 86400 + hour * 3600 + rng.integers(0, 3600, size=size)
    return (np.datetime64(START, "s") + seconds.astype("timedelta64[s]")).astype("datetime64[us]")


def generate(n_events: int, n_requests: int, out: Path, seed: int = 0) -> dict:
    """Write items.parquet, events.parquet and requests.parquet under ``out``."""
    rng = np.random.default_rng(seed)
    n_items = max(1_000, n_events // 100)
    n_users = max(1_000, n_events // 50)
    g = rng.integers(0, len(GENRES), size=(n_items, 2))
    items = pl.DataFrame(
        {
            "item_id": [f"i{k}" for k in range(n_items)],
            "title": [f"Item {k}" for k in range(n_items)],
            "genres": [[GENRES[a], GENRES[b]] if a != b else [GENRES[a]] for a, b in g],
            "category": GENRES[g[:, 0]],
        }
    )
    items.write_parquet(out / "items.parquet")
    types = rng.choice(EVENT_TYPES, size=n_events, p=EVENT_P)
    ratings = rng.choice(np.arange(1, 11) / 2, size=n_events)
    ts = timestamps(rng, n_events)
    user = zipf_ids(rng, n_users, n_events, 0.8)
    item = zipf_ids(rng, n_items, n_events, 1.05)
    events = pl.DataFrame(
        {
            "event_id": pl.Series(np.arange(n_events)).cast(pl.Utf8).str.pad_start(9, "0"),
            "user_id": pl.Series(user).cast(pl.Utf8),
            "item_id": pl.Series(item).cast(pl.Utf8),
            "event_type": types,
            "ts": pl.Series(ts),
            "value": np.where(types == "rate", ratings, np.nan),
        }
    ).with_columns(
        pl.col("event_id").map_batches(lambda s: "e" + s, return_dtype=pl.Utf8),
        pl.col("item_id").map_batches(lambda s: "i" + s, return_dtype=pl.Utf8),
        pl.col("user_id").map_batches(lambda s: "u" + s, return_dtype=pl.Utf8),
        pl.col("value").fill_nan(None),
    )
    events.write_parquet(out / "events.parquet")
    # Requests: real (user, time) moments; half the items are the one engaged, half a random
    # popular candidate, as a ranker's training set would mix positives and sampled negatives.
    pick = rng.choice(n_events, size=n_requests, replace=n_requests > n_events)
    other = zipf_ids(rng, n_items, n_requests, 1.05)
    base = events[pick]
    requests = pl.DataFrame(
        {
            "user_id": base["user_id"],
            "item_id": pl.Series(
                np.where(
                    rng.random(n_requests) < 0.5,
                    base["item_id"].to_numpy(),
                    np.char.add("i", other.astype(str)),
                )
            ),
            "as_of": base["ts"],
        }
    )
    requests.write_parquet(out / "requests.parquet")
    return {"n_events": n_events, "n_items": n_items, "n_users": n_users, "n_requests": n_requests}


def step_ingest(data: Path, db: Path) -> dict:
    con = connect(db)
    t = time.perf_counter()
    items = ingest_items_file(con, data / "items.parquet", progress=False)
    t_items = time.perf_counter() - t
    t = time.perf_counter()
    events = ingest_events_file(con, data / "events.parquet", progress=False)
    t_events = time.perf_counter() - t
    counts = table_counts(con)
    con.close()
    return {
        "items_s": t_items,
        "events_s": t_events,
        "ingest_s": t_items + t_events,
        "events_written": events.rows_written,
        "events_quarantined": events.rows_quarantined,
        "items_written": items.rows_written,
        "counts": counts,
    }


def step_features(data: Path, db: Path) -> dict:
    con = connect(db, read_only=True)
    requests = pl.read_parquet(data / "requests.parquet")
    t, cpu = time.perf_counter(), time.process_time()
    out = compute_features(con, requests)
    elapsed, cpu = time.perf_counter() - t, time.process_time() - cpu
    con.close()
    return {
        "features_s": elapsed,
        "features_cpu_s": cpu,
        "rows": out.height,
        "null_fraction": round(
            float(out.null_count().sum_horizontal()[0]) / (out.height * out.width), 4
        ),
    }


def _latency(fn, calls: int) -> dict:
    """Median / p95 / max wall and median CPU milliseconds of ``fn()``; 3 warm-up calls."""
    wall, cpu = [], []
    for _ in range(calls + 3):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - t) * 1e3)
        cpu.append((time.process_time() - c) * 1e3)
    wall, cpu = sorted(wall[3:]), sorted(cpu[3:])
    return {
        "median_ms": statistics.median(wall),
        "p95_ms": wall[min(len(wall) - 1, int(0.95 * len(wall)))],
        "max_ms": wall[-1],
        "median_cpu_ms": statistics.median(cpu),
    }


def step_movielens(data_dir: Path, db: Path, calls: int) -> dict:
    con = connect(db)
    ingest_movielens(con, data_dir, progress=False)
    user = con.execute(  # the median user by activity
        "SELECT user_id FROM events GROUP BY user_id ORDER BY count(*), user_id "
        "LIMIT 1 OFFSET (SELECT count(DISTINCT user_id) / 2 FROM events)"
    ).fetchone()[0]
    items = [
        r[0]
        for r in con.execute(
            "SELECT item_id FROM events GROUP BY item_id ORDER BY count(*) DESC, item_id LIMIT 300"
        ).fetchall()
    ]
    cur = con.cursor()

    def request() -> pl.DataFrame:
        now = datetime.now(UTC).replace(tzinfo=None)
        return pl.DataFrame(
            {"user_id": [user] * len(items), "item_id": items, "as_of": [now] * len(items)}
        )

    builds = []
    for _ in range(5):
        t, c = time.perf_counter(), time.process_time()
        snap = FeatureSnapshot.build(cur)
        builds.append((time.perf_counter() - t, time.process_time() - c))
    uncached = _latency(lambda: compute_features(cur, request()), calls)
    cached = _latency(lambda: compute_features(cur, request(), snapshot=snap), calls)
    req = request()
    equal = compute_features(cur, req).equals(
        compute_features(cur, req, snapshot=snap), null_equal=True
    )
    con.close()
    return {
        "user_id": user,
        "rows": len(items),
        "calls": calls,
        "n_events": snap.n_events,
        "snapshot_build_s": statistics.median(b[0] for b in builds),
        "snapshot_build_cpu_s": statistics.median(b[1] for b in builds),
        "uncached": uncached,
        "snapshot": cached,
        "snapshot_equals_uncached": equal,
    }


def worker(args: argparse.Namespace) -> None:
    """One step in this (fresh) process; prints one JSON line."""
    t = time.perf_counter()
    if args.step == "generate":
        result = generate(int(float(args.size)), args.requests, Path(args.data))
    elif args.step == "ingest":
        result = step_ingest(Path(args.data), Path(args.db))
    elif args.step == "features":
        result = step_features(Path(args.data), Path(args.db))
    else:
        result = step_movielens(Path(args.data), Path(args.db), args.calls)
    result.update(wall_s=time.perf_counter() - t, peak_rss_gib=peak_rss_gib())
    print("RESULT " + json.dumps(result, default=str))


def run_step(step: str, **kw: object) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.feature_store", "--worker", step]
    for key, value in kw.items():
        cmd += [f"--{key}", str(value)]
    log.info("running %s", " ".join(cmd[2:]))
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"step {step} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def growth(sizes: list[dict], key: str) -> list[dict]:
    """Time ratio between consecutive sizes against the ratio of their event counts."""
    out = []
    for a, b in zip(sizes, sizes[1:], strict=False):
        if a.get(key) and b.get(key):
            out.append(
                {
                    "from": a["n_events"],
                    "to": b["n_events"],
                    "events_ratio": b["n_events"] / a["n_events"],
                    "time_ratio": round(b[key] / a[key], 2),
                }
            )
    return out


def run_size(n_events: int, n_requests: int, tmp: Path) -> dict:
    """Generate, ingest and compute features for one size; reuse a finished store in ``tmp``.

    A store is reused when ``tmp`` holds one from an earlier run with the same size and request
    count (its ``done.json`` records the generate and ingest figures of that run).
    """
    data = tmp / f"data-{n_events}-{n_requests}"
    db = tmp / f"store-{n_events}-{n_requests}.duckdb"
    done = data / "done.json"
    if done.exists() and db.exists():
        log.info("size %.0e: reusing %s and %s", n_events, data, db)
        gen, ingest = json.loads(done.read_text())
        ingest["reused"] = True
    else:
        data.mkdir(exist_ok=True)
        db.unlink(missing_ok=True)
        gen = run_step("generate", size=n_events, requests=n_requests, data=data)
        ingest = run_step("ingest", data=data, db=db)
        done.write_text(json.dumps([gen, ingest]))
    feats = run_step("features", data=data, db=db)
    row = {
        "n_events": n_events,
        "n_items": gen["n_items"],
        "n_users": gen["n_users"],
        "n_requests": n_requests,
        "generate_s": round(gen["wall_s"], 2),
        "ingest_s": round(ingest["ingest_s"], 2),
        "ingest_events_s": round(ingest["events_s"], 2),
        "ingest_peak_rss_gib": round(ingest["peak_rss_gib"], 3),
        "events_written": ingest["events_written"],
        "events_quarantined": ingest["events_quarantined"],
        "features_s": round(feats["features_s"], 2),
        "features_cpu_s": round(feats["features_cpu_s"], 2),
        "features_peak_rss_gib": round(feats["peak_rss_gib"], 3),
        "features_null_fraction": feats["null_fraction"],
        "store_mib": round(db.stat().st_size / 2**20, 1),
        "ingest_reused": bool(ingest.get("reused")),
    }
    log.info("size %.0e: %s", n_events, row)
    return row


def write_report(report: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "feature_store.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Feature-store benchmark",
        "",
        f"Machine: {report['machine']}. Measured {report['date']}; the machine was shared with "
        f"other work while measuring (load average {report.get('load_average', '?')} on "
        f"{os.cpu_count()} cores), so wall times are upper bounds: compare CPU times.",
        "",
        f"Targets (2-core machine): ingest 1e7 events <= {TARGETS['ingest_1e7_s']:.0f} s; "
        f"features for 100k rows over 1e7 events <= {TARGETS['features_1e7_s']:.0f} s; "
        f"peak RSS <= {TARGETS['peak_rss_gib']:.0f} GiB.",
        "",
        "| events | users | items | requests | ingest s | ingest peak RSS GiB | features s "
        "| features CPU s | features peak RSS GiB | store MiB |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["sizes"]:
        lines.append(
            f"| {r['n_events']:,} | {r['n_users']:,} | {r['n_items']:,} | {r['n_requests']:,} "
            f"| {r['ingest_s']} | {r['ingest_peak_rss_gib']} | {r['features_s']} "
            f"| {r.get('features_cpu_s', '')} | {r['features_peak_rss_gib']} | {r['store_mib']} |"
        )
    if any(r.get("ingest_reused") for r in report["sizes"]):
        lines += [
            "",
            "Stores marked reused were built by an earlier run (`--work`): their generate and "
            "ingest figures are from that run.",
        ]
    lines += ["", "Growth between sizes (time ratio for a 10x larger event log):", ""]
    for key, rows in report["growth"].items():
        for g in rows:
            lines.append(f"- {key}: {g['from']:,} -> {g['to']:,} events: x{g['time_ratio']}")
    ml = report.get("movielens_request_path")
    if ml:
        lines += [
            "",
            f"Request path (MovieLens-small, {ml['n_events']:,} events, one user x {ml['rows']} "
            f"candidates at as_of=now, {ml['calls']} calls through a cursor; CPU = process time):",
            "",
            "| path | median ms | p95 ms | max ms | median CPU ms |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for name in ("uncached", "snapshot"):
            r = ml[name]
            lines.append(
                f"| {name} | {r['median_ms']:.1f} | {r['p95_ms']:.1f} | {r['max_ms']:.1f} "
                f"| {r['median_cpu_ms']:.1f} |"
            )
        lines += [
            "",
            f"Snapshot build (`FeatureSnapshot.build`): median {ml['snapshot_build_s']:.2f} s "
            f"wall, {ml['snapshot_build_cpu_s']:.2f} s CPU; snapshot result equals the uncached "
            f"one: {ml['snapshot_equals_uncached']}.",
        ]
    if report.get("checks"):
        lines += ["", "Targets: " + ", ".join(f"{k}: {v}" for k, v in report["checks"].items())]
    (RESULTS / "feature_store.md").write_text("\n".join(lines) + "\n")


def checks(sizes: list[dict]) -> dict[str, str]:
    out = {}
    big = next((r for r in sizes if r["n_events"] == 10_000_000), None)
    if big:
        out["ingest_1e7"] = "met" if big["ingest_s"] <= TARGETS["ingest_1e7_s"] else "MISSED"
        out["features_1e7"] = "met" if big["features_s"] <= TARGETS["features_1e7_s"] else "MISSED"
    for step in ("ingest", "features"):
        rss = max(r[f"{step}_peak_rss_gib"] for r in sizes) if sizes else 0.0
        out[f"peak_rss_{step}"] = "met" if rss <= TARGETS["peak_rss_gib"] else "MISSED"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e5,1e6,1e7", help="comma-separated event counts")
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=50, help="request-path calls (MovieLens)")
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("RECSYS_DATA_DIR", str(ROOT.parent / "shared" / "data")),
    )
    parser.add_argument("--no-movielens", action="store_true")
    parser.add_argument(
        "--work",
        help="keep generated data and stores in this folder and reuse them on later runs "
        "(skips generate + ingest; their figures come from the run that built the store)",
    )
    parser.add_argument("--worker", dest="step", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        worker(args)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    sizes = sorted(int(float(s)) for s in args.sizes.split(","))
    with tempfile.TemporaryDirectory(prefix="bench-fs-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = [run_size(n, args.requests, work) for n in sizes]
        ml = None
        if not args.no_movielens:
            ml = run_step(
                "movielens", data=args.data_dir, db=Path(tmp) / "ml.duckdb", calls=args.calls
            )
            log.info("request path: %s", ml)
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.system()}",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average": " / ".join(f"{x:.1f}" for x in os.getloadavg()),
        "targets": TARGETS,
        "sizes": rows,
        "growth": {k: growth(rows, k) for k in ("ingest_s", "features_s")},
        "movielens_request_path": ml,
        "checks": checks(rows),
    }
    write_report(report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
