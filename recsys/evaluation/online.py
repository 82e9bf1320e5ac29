"""Online evaluation: who won the team-draft interleaved lists (``recsys evaluate --online``).

Per list the team whose items its user engaged with more wins (``recsys.algorithms.
interleaving.winner``); lists with as many engaged items on both sides (most often none) are
ties and carry no preference.  Over the decided lists the challenger's win rate gets a 95%
Wilson score interval and a two-sided sign test against 0.5 (no preference).  Lists are grouped
by the pair of ranker versions that were interleaved, newest pair first.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from feature_store.interleaving import ListOutcome, list_outcomes
from recsys.algorithms.interleaving import winner
from recsys.core.config import Settings
from recsys.core.errors import EvaluationError
from recsys.core.rules import CHALLENGER_TEAM, CHAMPION_TEAM
from training import registry

Z_95 = 1.959963984540054  # the standard normal's 97.5th percentile


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (``(0, 1)`` when ``n == 0``)."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n; got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def sign_test_p(wins: int, losses: int) -> float:
    """Two-sided exact sign test of ``wins`` against ``losses`` (p = 0.5 under no preference)."""
    n = wins + losses
    if n == 0:
        return 1.0
    low = min(wins, losses)
    log_half = n * math.log(0.5)
    tail = sum(
        math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + log_half)
        for i in range(low + 1)
    )
    return min(1.0, 2.0 * tail)


def summarize(outcomes: Sequence[ListOutcome]) -> dict[str, Any]:
    """Wins, ties, the challenger's win rate among decided lists, its interval and p-value."""
    wins = {CHAMPION_TEAM: 0, CHALLENGER_TEAM: 0}
    ties = 0
    for o in outcomes:
        team = winner(o.champion_clicks, o.challenger_clicks)
        if team is None:
            ties += 1
        else:
            wins[team] += 1
    decided = wins[CHAMPION_TEAM] + wins[CHALLENGER_TEAM]
    low, high = wilson_interval(wins[CHALLENGER_TEAM], decided)
    rate = wins[CHALLENGER_TEAM] / decided if decided else None
    return {
        "lists": len(outcomes),
        "champion_wins": wins[CHAMPION_TEAM],
        "challenger_wins": wins[CHALLENGER_TEAM],
        "ties": ties,
        "decided": decided,
        "challenger_win_rate": rate,
        "ci95": [low, high],
        "sign_test_p": sign_test_p(wins[CHALLENGER_TEAM], wins[CHAMPION_TEAM]),
        "verdict": verdict(decided, low, high),
    }


def verdict(decided: int, low: float, high: float) -> str:
    """One line: which ranker the interval favours, or that it cannot tell yet."""
    if decided == 0:
        return "no decided list yet (no list has more engagement on one side)"
    if low > 0.5:
        return "the challenger wins (95% interval above 0.5)"
    if high < 0.5:
        return "the champion wins (95% interval below 0.5)"
    return "no significant preference yet (95% interval contains 0.5); collect more lists"


def evaluate_online(
    con: duckdb.DuckDBPyConnection, since: datetime | None = None
) -> dict[str, Any]:
    """The online report: one summary per (champion, challenger) version pair, newest first.

    EvaluationError when no interleaved list was served (since ``since``).
    """
    outcomes = list_outcomes(con, since)
    if not outcomes:
        when = f" since {since.isoformat()}" if since else ""
        raise EvaluationError(
            f"nothing to evaluate online: no interleaved list was served{when}. Set "
            "serving.interleave_challenger (e.g. RECSYS_SERVING__INTERLEAVE_CHALLENGER="
            "challenger), give a ranker version that alias (`recsys models promote ranker "
            "VERSION --alias challenger`), serve, and log clicks with the lists' "
            "recommendation_id"
        )
    pairs: dict[tuple[str, str], list[ListOutcome]] = {}
    for o in outcomes:
        pairs.setdefault((o.champion_version, o.challenger_version), []).append(o)
    comparisons = []
    for (champ, chal), group in sorted(
        pairs.items(), key=lambda kv: max(o.served_at for o in kv[1]), reverse=True
    ):
        comparisons.append(
            {
                "champion_version": champ,
                "challenger_version": chal,
                "first_served": min(o.served_at for o in group).isoformat(),
                "last_served": max(o.served_at for o in group).isoformat(),
                **summarize(group),
            }
        )
    return {
        "method": "team-draft interleaving (Radlinski et al. 2008)",
        "since": since.isoformat() if since else None,
        "comparisons": comparisons,
    }


def markdown(report: dict[str, Any]) -> str:
    """The online report as a Markdown table."""
    lines = [
        "# Online evaluation: team-draft interleaving",
        "",
        f"Lists served since {report['since'] or 'the start'}; per list the ranker whose "
        "items got more engagement wins, ties are ignored. Win rate = challenger wins / "
        "decided lists, with a 95% Wilson interval and a two-sided sign-test p-value.",
        "",
        "| champion | challenger | lists | champion wins | challenger wins | ties "
        "| challenger win rate [95% CI] | p | verdict |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    for c in report["comparisons"]:
        shown = win_rate_text(c)
        lines.append(
            f"| v{c['champion_version']} | v{c['challenger_version']} | {c['lists']} "
            f"| {c['champion_wins']} | {c['challenger_wins']} | {c['ties']} | {shown} "
            f"| {c['sign_test_p']:.3g} | {c['verdict']} |"
        )
    return "\n".join(lines) + "\n"


def win_rate_text(comparison: dict[str, Any]) -> str:
    """``0.840 [0.815, 0.863]`` (the challenger's win rate and its 95% interval), ``-`` when no
    list was decided."""
    rate = comparison["challenger_win_rate"]
    if rate is None:
        return "-"
    low, high = comparison["ci95"]
    return f"{rate:.3f} [{low:.3f}, {high:.3f}]"


def write_online_report(report: dict[str, Any], output: Path) -> list[Path]:
    """``online.json`` and ``online.md`` in ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    json_path, md_path = output / "online.json", output / "online.md"
    json_path.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    md_path.write_text(markdown(report), encoding="utf-8")
    return [json_path, md_path]


def log_online_to_mlflow(
    settings: Settings, report: dict[str, Any], files: Sequence[Path], fingerprint: str | None
) -> str:
    """An ``evaluate-online`` MLflow run: the newest comparison's counts, win rate, interval
    and p-value as metrics (every comparison is in the artifacts); returns the run id."""
    latest = report["comparisons"][0]
    with registry.start_run(
        settings,
        "evaluate-online",
        data_fingerprint=fingerprint,
        tags={
            "evaluation": "online-interleaving",
            "champion_version": str(latest["champion_version"]),
            "challenger_version": str(latest["challenger_version"]),
        },
    ) as run:
        metrics = {
            f"online.{k}": float(latest[k])
            for k in ("lists", "champion_wins", "challenger_wins", "ties", "sign_test_p")
        }
        if latest["challenger_win_rate"] is not None:
            metrics["online.challenger_win_rate"] = float(latest["challenger_win_rate"])
        metrics["online.challenger_win_rate.ci_low"] = float(latest["ci95"][0])
        metrics["online.challenger_win_rate.ci_high"] = float(latest["ci95"][1])
        registry.log_metrics(metrics)
        for f in files:
            registry.log_artifact(f, "report")
        return str(run.info.run_id)
