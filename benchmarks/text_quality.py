"""Benchmark: does the text earn its place?  Protocol v1 over several seeds on one home.

For a home that already holds the ingested data and a scored text model (``recsys train text``
and ``recsys score``; ``--train-text`` runs both here and times them), for each ``--seeds``:
train the ranker and its no-text ablation (``recsys train ranker``, registered and made the
champion so evaluation reads it), then run protocol v1 on every system (popularity, item-kNN,
ALS, text_only, ranker_no_text, ranker, and TF-IDF when the protocol knows it).  Reports per
seed and mean / spread (max - min) of NDCG@10, cold NDCG@10, candidate recall@300 and
ranker - ranker_no_text, with the machine's load average, to
benchmarks/results/text_quality.json and .md (``--name`` changes the file stem).

    RECSYS_HOME=/tmp/home python -m benchmarks.text_quality [--seeds 42,1,2] [--train-text]
        [--include earlier.json]   # reuse the seeds of an earlier run of the same setup

Settings come from the usual layers (``RECSYS_*`` environment, ``--config``), so a variant is
measured with, say, ``RECSYS_RANKER__TEXT_CANDIDATES=300`` (the text generators uncapped).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from feature_store.db import connect
from recsys.core import rules
from recsys.core.config import load_settings
from recsys.evaluation.protocol import run_protocol
from training import registry
from training.ranker.run import train_and_log

RESULTS = Path(__file__).resolve().parent / "results"
SHOWN = ("popularity", "item_knn", "als", "tfidf", "text_only", "ranker_no_text", "ranker")


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def timed_cli(args: list[str]) -> float:
    """Run ``recsys ARGS`` in a child process (its own logging), return wall seconds."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "recsys", *args], check=True)
    return time.perf_counter() - started


def one_seed(seed: int) -> dict[str, Any]:
    settings = load_settings(overrides={"seed": seed})
    con = connect(settings.db_path)
    try:
        started = time.perf_counter()
        # force: register the ranker WITH text features even when the gate would register its
        # ablation, so that ranker vs ranker_no_text measures what the text adds
        summary = train_and_log(settings, con, promote=False, force=True)
        registry.promote(settings, rules.RANKER_MODEL_NAME, summary["version"])
        ranker_s = time.perf_counter() - started
        started = time.perf_counter()
        report = run_protocol(settings, con)
        eval_s = time.perf_counter() - started
    finally:
        con.close()
    systems = report["systems"]
    row: dict[str, Any] = {
        "seed": seed,
        "load_average": load(),
        "ranker_seconds": round(ranker_s, 1),
        "evaluate_seconds": round(eval_s, 1),
        "text_model_version": report.get("text_model_version"),
        "candidate_recall@test": report.get(f"candidate_recall@{settings.ranker.num_candidates}"),
        "candidate_recall@val": summary["metrics"].get(
            f"val_candidate_recall@{settings.ranker.num_candidates}"
        ),
        "systems": {
            name: {k: m[k] for k in ("ndcg@10", "recall@10", "cold_ndcg@10", "coverage@10")}
            for name, m in systems.items()
        },
        "skipped": report.get("skipped", {}),
        "top_features": [f["feature"] for f in summary.get("top_features", [])][:8],
    }
    if "ranker" in systems and "ranker_no_text" in systems:
        row["text_gain"] = systems["ranker"]["ndcg@10"] - systems["ranker_no_text"]["ndcg@10"]
    return row


def spread(values: list[float]) -> dict[str, float]:
    return {
        "mean": sum(values) / len(values),
        "min": min(values),
        "max": max(values),
        "spread": max(values) - min(values),
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    names = [n for n in SHOWN if all(n in r["systems"] for r in rows)]
    for name in names:
        for metric in ("ndcg@10", "cold_ndcg@10"):
            out[f"{name}.{metric}"] = spread([r["systems"][name][metric] for r in rows])
    for key in ("text_gain", "candidate_recall@test", "candidate_recall@val"):
        vals = [r[key] for r in rows if r.get(key) is not None]
        if vals:
            out[key] = spread(vals)
    return out


def markdown(result: dict[str, Any]) -> str:
    rows, summary = result["seeds"], result["summary"]
    seeds = [str(r["seed"]) for r in rows]
    lines = [
        f"# Text quality, protocol v1 ({result['name']})",
        "",
        f"Machine: {result['machine']}; load average per seed: "
        + "; ".join(f"seed {r['seed']}: {r['load_average']}" for r in rows),
        f"Settings overrides (environment): {result['overrides'] or 'none (defaults)'}",
        "",
        "| system | " + " | ".join(f"NDCG@10 seed {s}" for s in seeds) + " | mean | spread "
        "| cold NDCG@10 mean |",
        "| --- |" + " ---: |" * (len(seeds) + 3),
    ]
    for name in SHOWN:
        key = f"{name}.ndcg@10"
        if key not in summary:
            continue
        vals = " | ".join(f"{r['systems'][name]['ndcg@10']:.4f}" for r in rows)
        lines.append(
            f"| {name} | {vals} | {summary[key]['mean']:.4f} | {summary[key]['spread']:.4f} "
            f"| {summary[f'{name}.cold_ndcg@10']['mean']:.4f} |"
        )
    for key, label in (
        ("text_gain", "ranker - ranker_no_text"),
        ("candidate_recall@test", "candidate recall@300 (test)"),
        ("candidate_recall@val", "candidate recall@300 (val)"),
    ):
        if key in summary:
            vals = " | ".join(
                f"{r[key]:+.4f}" if key == "text_gain" else f"{r[key]:.4f}" for r in rows
            )
            s = summary[key]
            lines.append(f"| {label} | {vals} | {s['mean']:.4f} | {s['spread']:.4f} | |")
    if result.get("text_timings"):
        t = result["text_timings"]
        lines += [
            "",
            f"Text model: train {t['train_s']:.0f} s, score {t['score_s']:.0f} s "
            f"(load average {t['load_average']}).",
        ]
    lines += [
        "",
        "Per seed: ranker training "
        + ", ".join(f"{r['ranker_seconds']:.0f} s" for r in rows)
        + "; evaluation "
        + ", ".join(f"{r['evaluate_seconds']:.0f} s" for r in rows)
        + " (wall; see the load averages above).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="42,1,2")
    parser.add_argument("--name", default="text_quality")
    parser.add_argument("--train-text", action="store_true", help="train text + score first")
    parser.add_argument(
        "--include",
        action="append",
        default=[],
        help="a result JSON of this script (same home and settings) whose seeds are reused",
    )
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    text_timings = None
    if args.train_text:
        before = load()
        train_s = timed_cli(["train", "text"])
        score_s = timed_cli(["score"])
        text_timings = {
            "train_s": train_s,
            "score_s": score_s,
            "load_average": f"{before} / {load()}",
        }
    rows = [
        row
        for path in args.include
        for row in json.loads(Path(path).read_text(encoding="utf-8"))["seeds"]
    ]
    rows += [one_seed(int(s)) for s in args.seeds.split(",") if s.strip()]
    result = {
        "name": args.name,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "overrides": {
            k: v
            for k, v in os.environ.items()
            if k.startswith("RECSYS_") and "__" in k and "KEY" not in k
        },
        "text_timings": text_timings,
        "seeds": rows,
        "summary": summarise(rows),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    (RESULTS / f"{args.name}.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))


if __name__ == "__main__":
    main()
