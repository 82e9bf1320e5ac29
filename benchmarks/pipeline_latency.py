"""Per-request cost of ``recsys.pipeline.recommender.Recommender`` on a trained home.

Times ``recommend(user, k=10)`` and ``rank(300 candidate ids, k=10, user_id=...)`` for random
known users (wall and CPU per call: median / p95 / p99) and the one-off ``load_recommender``.
The home's models are only read; ``load_recommender`` caches downloaded artifacts under
``<home>/serving/models``, so point ``--home`` at a copy when the home must stay untouched.

    .venv/bin/python -m benchmarks.pipeline_latency --home /tmp/h8home --users 200
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import random
import time
from pathlib import Path

import numpy as np

from feature_store.db import connect
from recsys.core.config import load_settings
from recsys.pipeline.loader import load_recommender

RESULTS = Path(__file__).parent / "results"


def _stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values) * 1e3
    return {
        "median_ms": round(float(np.median(a)), 3),
        "p95_ms": round(float(np.percentile(a, 95)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
        "mean_ms": round(float(a.mean()), 3),
    }


def _time(fn, calls: list) -> dict[str, dict[str, float]]:
    wall, cpu = [], []
    for args in calls:
        w0, c0 = time.perf_counter(), time.process_time()
        fn(*args)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return {"wall": _stats(wall), "cpu": _stats(cpu)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--candidates", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "pipeline_latency.json")
    parser.add_argument(
        "--baseline", type=Path, help="an earlier run's JSON (e.g. the old code) shown as before"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    settings = load_settings(overrides={"home": str(args.home)})
    con = connect(settings.db_path, read_only=True)
    t0 = time.perf_counter()
    rec = load_recommender(settings, con)
    load_s = time.perf_counter() - t0
    rng = random.Random(args.seed)
    users = rng.sample(sorted(rec.data.user_index), min(args.users, len(rec.data.user_index)))
    catalog = [str(i) for i in rec.data.item_ids]
    cur = con.cursor()
    rec.recommend(users[0], 10, con=cur)  # warm-up (first LightGBM call, lazy imports)
    results = {
        "recommend_k10": _time(lambda u: rec.recommend(u, 10, con=cur), [(u,) for u in users]),
        f"rank_{args.candidates}_k10": _time(
            lambda u, c: rec.rank(c, 10, user_id=u, con=cur),
            [(u, rng.sample(catalog, args.candidates)) for u in users],
        ),
        "recommend_k10_explain": _time(
            lambda u: rec.recommend(u, 10, explain=True, con=cur), [(u,) for u in users[:50]]
        ),
    }
    report = {
        "home": str(args.home),
        "users": len(users),
        "candidates": args.candidates,
        "load_s": round(load_s, 2),
        "model_versions": rec.model_versions,
        "machine": f"{platform.machine()}, shared 2-core VM (other work ran)",
        "results": results,
    }
    if args.baseline:
        report["before"] = json.loads(args.baseline.read_text(encoding="utf-8"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    lines = [
        "# Recommender per-request latency",
        "",
        f"{len(users)} random known users, `load_recommender` {load_s:.1f} s, "
        f"models {rec.model_versions}. Shared 2-core VM (other helpers were running).",
        "",
        "| call | wall median | wall p95 | wall p99 | CPU median | CPU p95 | CPU p99 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        w, c = r["wall"], r["cpu"]
        lines.append(
            f"| {name} | {w['median_ms']} ms | {w['p95_ms']} ms | {w['p99_ms']} ms | "
            f"{c['median_ms']} ms | {c['p95_ms']} ms | {c['p99_ms']} ms |"
        )
    before = report.get("before", {}).get("results", {})
    if before:
        n = report["before"].get("users", "?")
        lines += ["", f"Before (`--baseline {args.baseline.name}`, {n} users):", ""]
        lines += [
            f"- {name}: wall median {r['wall']['median_ms']} ms, CPU median "
            f"{r['cpu']['median_ms']} ms, CPU p95 {r['cpu']['p95_ms']} ms"
            for name, r in before.items()
        ]
    text = "\n".join(lines) + "\n"
    args.out.with_suffix(".md").write_text(text, encoding="utf-8")
    print(text)  # noqa: T201 - a benchmark script reports on stdout


if __name__ == "__main__":
    main()
