"""Report sections about uncertainty and provenance: intervals, the text effect, models, date.

``report.py`` writes the metric table and plots; these sections are added to its Markdown and
the cold-slice plot to its files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from recsys.core import compat
from recsys.evaluation.uncertainty import warnings

CI_METRICS: tuple[str, ...] = ("ndcg@10", "recall@10", "mrr@10", "cold_ndcg@10")


def provenance_md(report: dict[str, Any]) -> list[str]:
    """Date, store fingerprint and the model versions evaluated."""
    lines = []
    if report.get("date"):
        lines.append(
            f"Evaluated {report['date']}; store fingerprint (events and items) "
            f"`{report.get('data_fingerprint') or 'unknown'}`."
        )
        lines.append("")
    models = report.get("models") or []
    if models:
        lines += ["| model | version | alias | promotion |", "| --- | ---: | --- | --- |"]
        for m in models:
            why = m.get("promotion.reason", "")
            decision = m.get("promotion.decision", "")
            text = f"{decision}: {why}" if decision and why else decision or why or "-"
            lines.append(f"| {m['name']} | {m['version']} | {m['alias']} | {text} |")
        lines.append("")
    elif "date" in report:
        lines += ["No registered champion model (baselines only).", ""]
    return lines


def intervals_md(report: dict[str, Any]) -> list[str]:
    """Each system's metrics with their bootstrap intervals."""
    boot = report.get("bootstrap")
    systems = {n: m for n, m in report.get("systems", {}).items() if "ci" in m}
    if not boot or not systems:
        return []
    lines = [
        f"### {boot['level']:.0%} bootstrap confidence intervals over users "
        f"({boot['resamples']} resamples, seed {boot['seed']})",
        "",
        "| system | " + " | ".join(CI_METRICS) + " |",
        "| --- | " + " | ".join("---:" for _ in CI_METRICS) + " |",
    ]
    for name, m in systems.items():
        cells = [_cell(m[k], m["ci"][k]) for k in CI_METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    buckets = list(next(iter(systems.values()))["ndcg@10_by_history"])
    lines += [
        "NDCG@10 by train history length (users per bucket in the header):",
        "",
        "| system | "
        + " | ".join(
            f"{b} ({next(iter(systems.values()))['ndcg@10_by_history'][b]['users']})"
            for b in buckets
        )
        + " |",
        "| --- | " + " | ".join("---:" for _ in buckets) + " |",
    ]
    for name, m in systems.items():
        by = m["ndcg@10_by_history"]
        cells = [_cell(by[b]["ndcg@10"], by[b]["ci"]) for b in buckets]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def _cell(value: float, ci: list[float]) -> str:
    return f"{value:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]"


def text_effect_md(report: dict[str, Any]) -> list[str]:
    """ranker - ranker_no_text per slice with its interval, and a warning where text hurts."""
    effect = report.get("text_effect")
    systems = report.get("systems", {})
    if not effect and "ranker" in systems and report.get("text_model_version") is None:
        return [
            "The champion ranker uses no text features (its promotion reason above says why), "
            "so ranker and ranker_no_text are the same model: there is no text effect to "
            "measure.",
            "",
        ]
    if not effect:
        return []
    a, b = effect["pair"]
    lines = [
        f"### Does text help? {a} - {b}, NDCG@10 (paired bootstrap over users)",
        "",
        "| slice | users | difference | 95% CI | verdict |",
        "| --- | ---: | ---: | --- | --- |",
    ]
    for label, s in effect["slices"].items():
        lines.append(
            f"| {label} | {s['users']} | {s['mean']:+.4f} | [{s['low']:+.4f}, {s['high']:+.4f}] "
            f"| {s['verdict']} |"
        )
    lines.append("")
    warned = warnings(report)
    lines += [f"> **WARNING** {w}" for w in warned]
    if warned:
        lines.append("")
    elif effect["slices"]["overall"]["verdict"] != "helps":
        lines += [
            "Text features do not measurably help overall: the interval includes 0.",
            "",
        ]
    return lines


def plot_cold_slice(report: dict[str, Any], path: Path) -> Path:
    """Cold-item NDCG@10 per system, on its own scale, with bootstrap intervals when present."""
    plt = compat.pyplot()
    systems = report["systems"]
    names = list(systems)
    values = np.array([systems[n]["cold_ndcg@10"] for n in names])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    errors = None
    if all("ci" in systems[n] for n in names):
        low = np.array([systems[n]["ci"]["cold_ndcg@10"][0] for n in names])
        high = np.array([systems[n]["ci"]["cold_ndcg@10"][1] for n in names])
        errors = np.vstack([values - low, high - values]).clip(min=0)
    bars = ax.bar(names, values, yerr=errors, capsize=4, color="#4477aa")
    ax.bar_label(bars, labels=[f"{v:.4f}" for v in values], padding=3, fontsize=8)
    top = float((values + (errors[1] if errors is not None else 0)).max()) if len(values) else 0
    ax.set_ylim(0, max(top * 1.25, 1e-3))
    users = next(iter(systems.values()))["cold_users"] if systems else 0
    ax.set_ylabel("cold-item NDCG@10")
    ax.set_title(f"cold-item slice: {users} users with a test positive on a rarely rated item")
    ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
