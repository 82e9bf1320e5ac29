"""Evaluation report files: report.json, report.md and PNG plots, also logged to MLflow."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from recsys.core import compat
from recsys.core.rules import COLD_ITEM_MAX_EVENTS, POSITIVE_RATING
from recsys.evaluation.report_sections import (
    intervals_md,
    plot_cold_slice,
    provenance_md,
    text_effect_md,
)
from training import registry

log = logging.getLogger(__name__)

REPLAY_ONLY = "logged-click replay only"  # the heading when no split was evaluated

HELDOUT_LISTS_TITLE = "Per-impression metrics on held-out served lists"
METRICS: tuple[str, ...] = (
    "ndcg@10",
    "recall@10",
    "recall@50",
    "mrr@10",
    "coverage@10",
    "cold_ndcg@10",
)


def write_report(report: dict[str, Any], output: Path) -> list[Path]:
    """Write report.json, report.md and the plots into ``output``; returns the files written."""
    output.mkdir(parents=True, exist_ok=True)
    files = [output / "report.json", output / "report.md"]
    files[0].write_text(
        json.dumps(report, indent=2, sort_keys=False, default=str), encoding="utf-8"
    )
    files[1].write_text(markdown(report), encoding="utf-8")
    if report.get("systems"):
        files.append(_plot_metrics(report, output / "metrics_by_system.png"))
        files.append(_plot_history(report, output / "ndcg_by_history.png"))
        files.append(plot_cold_slice(report, output / "cold_slice.png"))
    if report.get("replay", {}).get("systems"):
        files.append(_plot_replay(report["replay"], output / "replay.png"))
    if report.get("impressions", {}).get("systems"):
        files.append(
            _plot_replay(report["impressions"], output / "impressions.png", HELDOUT_LISTS_TITLE)
        )
    log.info("wrote %s", ", ".join(str(f) for f in files))
    return files


def markdown(report: dict[str, Any]) -> str:
    """A human-readable report: the metric table, skipped systems, replay results."""
    lines = [f"# Offline evaluation: {report.get('protocol', REPLAY_ONLY)}", ""]
    lines += provenance_md(report)
    systems = report.get("systems", {})
    if systems:
        lines += [
            "| system | " + " | ".join(METRICS) + " | users |",
            "| --- | " + " | ".join("---:" for _ in METRICS) + " | ---: |",
        ]
        for name, m in systems.items():
            lines.append(
                f"| {name} | " + " | ".join(f"{m[k]:.4f}" for k in METRICS) + f" | {m['users']} |"
            )
        lines.append("")
        lines += text_effect_md(report)
        lines += intervals_md(report)
        best = _best_baseline(systems)
        if "ranker" in systems and best:
            ratio = systems["ranker"]["ndcg@10"] / max(systems[best]["ndcg@10"], 1e-12)
            lines += [
                f"ranker NDCG@10 / best baseline ({best}) = **{ratio:.3f}** (target >= 1.10)",
                "",
            ]
        if "ranker" in systems and "ranker_no_text" in systems:
            lift = systems["ranker"]["cold_ndcg@10"] - systems["ranker_no_text"]["cold_ndcg@10"]
            lines += [
                f"text lift on the cold-item slice (ranker - ranker_no_text cold NDCG@10): "
                f"**{lift:+.4f}**",
                "",
            ]
        for key in sorted(k for k in report if k.startswith("candidate_recall")):
            lines += [f"{key} (test split, ranker candidates): {report[key]:.4f}", ""]
        for key in sorted(k for k in report if k.startswith("val_candidate_recall")):
            lines += [
                f"{key} (validation split, from the ranker's training run): {report[key]:.4f}",
                "",
            ]
        lines += [
            f"Definitions: positives are the task's test positives "
            f"({report.get('task', f'ratings >= {POSITIVE_RATING:g}')}); users with >= 1 "
            "test positive; full ranking over items not rated in train; cold_ndcg@10 keeps "
            f"only test positives whose item has <= {COLD_ITEM_MAX_EVENTS} train ratings, "
            "over users with >= 1 such "
            "positive. See docs/ranking.md.",
            "",
        ]
    for name, reason in report.get("skipped", {}).items():
        lines.append(f"- **{name} skipped**: {reason}")
    lines += _impressions_markdown(report.get("impressions"))
    replay = report.get("replay")
    if replay:
        lines += [
            "",
            f"## Logged-click replay ({replay.get('source', '')})",
            "",
        ]
        lines += _list_metrics_table(replay, "impressions")
    return "\n".join(lines).rstrip() + "\n"


def _impressions_markdown(result: dict[str, Any] | None) -> list[str]:
    if not result:
        return []
    lines = [
        "",
        f"## {HELDOUT_LISTS_TITLE}",
        "",
        f"{result.get('lists', 0)} served lists of the test period ({result.get('impressions', 0)} "
        "impressions), none seen in training; metrics averaged over lists with a click and a "
        "non-click (recsys.evaluation.impressions).",
        "",
    ]
    return lines + _list_metrics_table(result, "lists")


def _list_metrics_table(result: dict[str, Any], count: str) -> list[str]:
    """Per-list metrics (replay, held-out impressions): one row per system, then the skipped."""
    lines = [
        f"| system | AUC | MRR | nDCG@5 | nDCG@10 | {count} |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, m in result.get("systems", {}).items():
        lines.append(
            f"| {name} | {m['auc']:.4f} | {m['mrr']:.4f} | {m['ndcg@5']:.4f} | "
            f"{m['ndcg@10']:.4f} | {m['impressions']} |"
        )
    for name, reason in result.get("skipped", {}).items():
        lines.append(f"- **{name} skipped**: {reason}")
    return lines


def _best_baseline(systems: dict[str, Any]) -> str | None:
    base = [n for n in ("popularity", "item_knn", "als", "tfidf", "text_only") if n in systems]
    return max(base, key=lambda n: systems[n]["ndcg@10"]) if base else None


def _plot_metrics(report: dict[str, Any], path: Path) -> Path:
    plt = compat.pyplot()
    systems = report["systems"]
    names = list(systems)
    x = np.arange(len(METRICS))
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for k, name in enumerate(names):
        ax.bar(x + k * width, [systems[name][m] for m in METRICS], width, label=name)
    ax.set_xticks(x + width * (len(names) - 1) / 2, METRICS)
    ax.set_title(
        f"{report.get('task_preset', 'replay')} / "
        f"{(report.get('split') or {}).get('kind', '-')}: metrics per system"
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_history(report: dict[str, Any], path: Path) -> Path:
    plt = compat.pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, m in report["systems"].items():
        buckets = m["ndcg@10_by_history"]
        ax.plot(list(buckets), [b["ndcg@10"] for b in buckets.values()], marker="o", label=name)
    first = next(iter(report["systems"].values()))["ndcg@10_by_history"]
    ax.set_xlabel(
        "train ratings per user (users: " + ", ".join(str(b["users"]) for b in first.values()) + ")"
    )
    ax.set_ylabel("NDCG@10")
    ax.set_title("NDCG@10 by length of user history")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_replay(replay: dict[str, Any], path: Path, title: str = "logged-click replay") -> Path:
    plt = compat.pyplot()
    keys = ("auc", "mrr", "ndcg@5", "ndcg@10")
    names = list(replay["systems"])
    x = np.arange(len(keys))
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(8, 4))
    for k, name in enumerate(names):
        ax.bar(x + k * width, [replay["systems"][name][m] for m in keys], width, label=name)
    ax.set_xticks(x + width * (len(names) - 1) / 2, keys)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def log_to_mlflow(
    settings: Any,
    report: dict[str, Any],
    files: list[Path],
    fingerprint: str | None,
    counts: Mapping[str, int] | None = None,
) -> str:
    """One MLflow run holding every system's metrics and the report files; returns its id.

    With ``counts`` the store is logged as the run's evaluation input (digest ``fingerprint``).
    """

    split = report.get("split") or {}
    tags = {"protocol": str(report.get("protocol", REPLAY_ONLY))}
    if "task_preset" in report:
        tags.update(task=str(report["task_preset"]), split=str(split.get("kind", "")))
    # the run keeps the stable name "evaluate" (queries and notebooks select on it); its tags
    # name the task and split
    with registry.start_run(settings, "evaluate", data_fingerprint=fingerprint, tags=tags) as run:
        if fingerprint and counts is not None:
            registry.log_store_input(settings, fingerprint, "evaluation", counts)
        metrics = {}
        for name, m in report.get("systems", {}).items():
            metrics.update({f"{name}.{k}": float(m[k]) for k in METRICS})
            for k, (low, high) in m.get("ci", {}).items():
                metrics.update({f"{name}.{k}.ci_low": low, f"{name}.{k}.ci_high": high})
        for label, s in report.get("text_effect", {}).get("slices", {}).items():
            key = "text_effect." + label.replace(" ", "_").replace("+", "plus")
            metrics.update({key: s["mean"], f"{key}.ci_low": s["low"], f"{key}.ci_high": s["high"]})
        for part in ("replay", "impressions"):
            for name, m in report.get(part, {}).get("systems", {}).items():
                metrics.update(
                    {f"{part}.{name}.{k}": float(m[k]) for k in ("auc", "mrr", "ndcg@5", "ndcg@10")}
                )
        registry.log_metrics(metrics)
        for f in files:
            registry.log_artifact(f, "report")
        return str(run.info.run_id)
