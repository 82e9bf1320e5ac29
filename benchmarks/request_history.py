"""A known user's latest positives on the request path: DuckDB query vs the interactions in memory.

A text-aware ranker needs, per request of a user the server did not precompute (stores with
more than ``PRECOMPUTE_MAX_USERS`` users), the user's latest positives: for the freshness check
of the stored user vector and for the explanation's "because you liked".  Until 2026-12-03 that
was ``recent_positives(con, "events", 20, user)``, a query over the events table; now it is
``Interactions.latest_positives`` over the per-user order saved with the shared interactions
(``feature_store.features_cache``).  This measures both on one store, side by side, for a seeded
sample of users, checks that they give the same answer for every one, and reports medians, the
ratio and the process's peak RSS.

    python -m benchmarks.request_history --store /path/to/recsys.duckdb [--users 200]

Writes benchmarks/results/request_history.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np

from feature_store import features_cache
from feature_store.interactions import recent_positives
from recsys.core import rules

RESULTS = Path(__file__).parent / "results"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, required=True, help="a recsys.duckdb file")
    parser.add_argument("--users", type=int, default=200, help="sampled users (seeded)")
    parser.add_argument(
        "--cache", type=Path, help="features cache directory (default: <store dir>/features)"
    )
    parser.add_argument("--output", default="request_history")
    args = parser.parse_args()
    load_start = [round(v, 2) for v in os.getloadavg()]
    con = duckdb.connect(str(args.store), read_only=True)
    row = con.execute("SELECT count(*) FROM events").fetchone()
    events = row[0] if row else 0
    cache = args.cache or args.store.parent / "features"
    if not os.access(cache.parent, os.W_OK):
        cache = Path(tempfile.mkdtemp(prefix="request-history-"))
    started = time.perf_counter()
    data = features_cache.shared_interactions(con, cache, events="events")
    ready_s = time.perf_counter() - started
    rng = np.random.default_rng(0)
    users = [str(u) for u in rng.choice(data.user_ids, min(args.users, len(data.user_ids)))]
    sql_ms, mem_ms, mismatches = [], [], 0
    for user in users:
        t0 = time.perf_counter()
        want = recent_positives(con, "events", rules.HISTORY_LENGTH, user).get(user)
        t1 = time.perf_counter()
        got = data.latest_positives(user, rules.HISTORY_LENGTH)
        t2 = time.perf_counter()
        sql_ms.append((t1 - t0) * 1e3)
        mem_ms.append((t2 - t1) * 1e3)
        mismatches += got != want
    sql, mem = statistics.median(sql_ms), statistics.median(mem_ms)
    result = {
        "store": str(args.store),
        "events": int(events),
        "users_sampled": len(users),
        "interactions_ready_s": round(ready_s, 1),
        "sql_median_ms": round(sql, 2),
        "sql_max_ms": round(max(sql_ms), 2),
        "memory_median_ms": round(mem, 4),
        "memory_max_ms": round(max(mem_ms), 4),
        "ratio": round(sql / mem, 1) if mem else None,
        "mismatches": int(mismatches),
        "peak_rss_gb": round(peak_rss_gb(), 2),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "load_average_start": load_start,
        "load_average_end": [round(v, 2) for v in os.getloadavg()],
    }
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.output}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{args.output}.md").write_text(
        f"# A user's latest positives on the request path ({args.output})\n\n"
        f"Store: {result['events']:,} events; {len(users)} seeded users; machine "
        f"{result['machine']}; load average {load_start} (start) / "
        f"{result['load_average_end']} (end).\n\n"
        "| path | median ms | max ms |\n| --- | ---: | ---: |\n"
        f"| `recent_positives` (DuckDB query) | {result['sql_median_ms']} | "
        f"{result['sql_max_ms']} |\n"
        f"| `Interactions.latest_positives` (memory) | {result['memory_median_ms']} | "
        f"{result['memory_max_ms']} |\n\n"
        f"Ratio of medians: {result['ratio']}x. Same answer for "
        f"{len(users) - mismatches} of {len(users)} users. Mapping (or building) the shared "
        f"interactions: {result['interactions_ready_s']} s; peak RSS of the process "
        f"{result['peak_rss_gb']} GB.\n"
    )


if __name__ == "__main__":
    main()
