"""``recsys evaluate``: protocol v1 over every system, and logged-click replay."""

from __future__ import annotations

import json
import logging
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from feature_store.adapters.mind import ingest_mind
from feature_store.db import connect
from recsys.cli import settings_from
from recsys.core import rules
from recsys.core.errors import EvaluationError, ModelNotReadyError
from recsys.evaluation.impressions import evaluate_impressions, has_served_lists
from recsys.evaluation.online import (
    evaluate_online,
    log_online_to_mlflow,
    win_rate_text,
    write_online_report,
)
from recsys.evaluation.protocol import SYSTEMS, check_systems, run_protocol
from recsys.evaluation.provenance import provenance
from recsys.evaluation.replay import HistoryText, ranker_scorer, replay, systems_for
from recsys.evaluation.report import REPLAY_ONLY, log_to_mlflow, write_report
from recsys.evaluation.uncertainty import DEFAULT_RESAMPLES
from training import registry
from training.ranker.model import RankerModel
from training.registry import load_text_index

log = logging.getLogger(__name__)


@click.command()
@click.option(
    "--output",
    "output",
    type=click.Path(file_okay=False),
    default=None,
    help="Report directory (default <home>/reports/evaluate).",
)
@click.option(
    "--systems",
    default=None,
    help="Comma-separated systems (default: popularity,item_knn,als,tfidf,text_only,"
    "ranker_no_text,ranker).",
)
@click.option(
    "--replay",
    "replay_source",
    default=None,
    help="Also replay logged clicks: a MIND directory (news.tsv, behaviors.tsv) or "
    "'store' for the impressions already in the store.",
)
@click.option("--replay-only", is_flag=True, help="Skip protocol v1; only the replay.")
@click.option(
    "--bootstrap",
    "resamples",
    type=click.IntRange(min=0),
    default=DEFAULT_RESAMPLES,
    show_default=True,
    help="Bootstrap resamples over users for the confidence intervals (0: none).",
)
@click.option(
    "--online",
    is_flag=True,
    help="Only the online evaluation: who won the team-draft interleaved lists served with a "
    "challenger (serving.interleave_challenger), from the clicks logged on them.",
)
@click.option(
    "--since",
    type=click.DateTime(),
    default=None,
    help="With --online: only lists served at or after this UTC time (e.g. 2026-12-01).",
)
@click.option("--json", "as_json", is_flag=True, help="With --online: print the report as JSON.")
@click.pass_context
def evaluate(
    ctx: click.Context,
    output: str | None,
    systems: str | None,
    replay_source: str | None,
    replay_only: bool,
    resamples: int,
    online: bool,
    since: datetime | None,
    as_json: bool,
) -> None:
    """Evaluate on the split (full ranking; impression logs add per-impression metrics on
    the held-out served lists) and write report.json, report.md and plots; or, with
    --online, the interleaving win rate of a challenger over the champion."""
    if online:
        if systems or replay_source or replay_only:
            raise click.UsageError("--online cannot be combined with --systems or --replay")
        _online(ctx, output, since, as_json)
        return
    if since is not None or as_json:
        raise click.UsageError("--since and --json go with --online")
    settings = settings_from(ctx)
    out = Path(output) if output else settings.reports_dir / "evaluate"
    chosen = tuple(s.strip() for s in systems.split(",") if s.strip()) if systems else SYSTEMS
    if replay_only and not replay_source:
        raise click.UsageError("--replay-only needs --replay SOURCE")
    if not replay_only:
        check_systems(chosen)
    if not settings.db_path.exists() and (replay_source == "store" or not replay_only):
        raise EvaluationError(
            f"nothing to evaluate: there is no store at {settings.db_path} (home "
            f"{settings.home}); run `recsys ingest ...` first, or point --home at a trained home"
        )
    report: dict[str, Any] = {"protocol": REPLAY_ONLY, "systems": {}, "skipped": {}}
    con = connect(settings.db_path)
    try:
        fingerprint = registry.data_fingerprint(con)
        counts = registry.store_counts(con)
        if not replay_only:
            try:
                report = run_protocol(settings, con, chosen, bootstrap=resamples)
            except EvaluationError as exc:
                if not replay_source:
                    raise
                log.warning("%s", exc)
                report["skipped"]["protocol"] = str(exc)
            _impressions(settings, con, report)
        if replay_source:
            report["replay"] = _replay(settings, con, replay_source)
            _check_replay(report["replay"])
    finally:
        con.close()
    report.update(provenance(settings, report, fingerprint))
    files = write_report(report, out)
    run_id = log_to_mlflow(settings, report, files, fingerprint, counts)
    for name, m in report.get("systems", {}).items():
        click.echo(
            f"{name:15s} NDCG@10 {m['ndcg@10']:.4f}  recall@10 {m['recall@10']:.4f}  "
            f"recall@50 {m['recall@50']:.4f}  MRR@10 {m['mrr@10']:.4f}  "
            f"coverage@10 {m['coverage@10']:.4f}  cold NDCG@10 {m['cold_ndcg@10']:.4f}  "
            f"users {m['users']}"
        )
    for name, reason in report.get("skipped", {}).items():
        click.echo(f"{name:15s} skipped: {reason}")
    for name, m in report.get("impressions", {}).get("systems", {}).items():
        click.echo(
            f"held-out lists {name:15s} AUC {m['auc']:.4f}  MRR {m['mrr']:.4f}  "
            f"nDCG@5 {m['ndcg@5']:.4f}  nDCG@10 {m['ndcg@10']:.4f}  lists {m['impressions']}"
        )
    for name, reason in report.get("impressions", {}).get("skipped", {}).items():
        click.echo(f"held-out lists {name:15s} skipped: {reason}")
    for name, m in report.get("replay", {}).get("systems", {}).items():
        click.echo(
            f"replay {name:18s} AUC {m['auc']:.4f}  MRR {m['mrr']:.4f}  "
            f"nDCG@5 {m['ndcg@5']:.4f}  nDCG@10 {m['ndcg@10']:.4f}  lists {m['impressions']}"
        )
    click.echo(f"report: {out / 'report.md'} (MLflow run {run_id})")


def _online(ctx: click.Context, output: str | None, since: datetime | None, as_json: bool) -> None:
    """``recsys evaluate --online``: wins per interleaved list, win rate, interval, p-value."""
    settings = settings_from(ctx)
    if not settings.db_path.exists():
        raise EvaluationError(
            f"nothing to evaluate online: there is no store at {settings.db_path}; serve with "
            "a challenger and log clicks first (README, 'Online evaluation')"
        )
    out = Path(output) if output else settings.reports_dir / "online"
    con = connect(settings.db_path)
    try:
        report = evaluate_online(con, since)
        fingerprint = registry.data_fingerprint(con)
    finally:
        con.close()
    files = write_online_report(report, out)
    report["mlflow_run_id"] = log_online_to_mlflow(settings, report, files, fingerprint)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    for c in report["comparisons"]:
        shown = win_rate_text(c)
        click.echo(
            f"ranker v{c['champion_version']} (champion) vs v{c['challenger_version']} "
            f"(challenger): {c['lists']} lists, champion wins {c['champion_wins']}, challenger "
            f"wins {c['challenger_wins']}, ties {c['ties']}; challenger win rate {shown} "
            f"(95% Wilson), sign test p={c['sign_test_p']:.3g}: {c['verdict']}"
        )
    click.echo(f"report: {out / 'online.md'} (MLflow run {report['mlflow_run_id']})")


def _impressions(settings: Any, con: Any, report: dict[str, Any]) -> None:
    """Impression logs: per-impression metrics on the held-out served lists."""
    if not has_served_lists(con):
        return
    try:
        report["impressions"] = evaluate_impressions(settings, con)
    except EvaluationError as exc:
        log.warning("per-impression evaluation skipped: %s", exc)
        report.setdefault("skipped", {})["impressions"] = str(exc)


def _check_replay(result: dict[str, Any]) -> None:
    """Refuse a replay in which no list has both a click and a non-click (nothing scored)."""
    lists = [int(m.get("impressions", 0)) for m in result.get("systems", {}).values()]
    if not lists or max(lists) == 0:
        raise EvaluationError(
            "nothing to evaluate: no logged impression list has both a click and a non-click "
            f"({result.get('requests', 0)} lists read from {result.get('source', 'the log')})"
        )


def _replay(settings: Any, con: Any, source: str) -> dict[str, Any]:
    if source == "store":
        scorers, text = _model_scorers(settings, con)
        result = replay(con, systems_for(None, scorers), text=text)
        result["source"] = "store"
        return result
    directory = Path(source)
    if not directory.is_dir():
        raise click.BadParameter(
            f"{source} is neither 'store' nor a directory", param_hint="--replay"
        )
    # A MIND log goes into a scratch store so the product store is left as it was.
    with tempfile.TemporaryDirectory(prefix="recsys-replay-") as tmp:
        scratch = connect(Path(tmp) / "replay.duckdb")
        try:
            ingest_mind(scratch, directory, progress=False)
            result = replay(scratch, systems_for(None, {}))
        finally:
            scratch.close()
    result["source"] = str(directory)
    result["skipped"] = {
        "ranker": "a MIND log is replayed in a scratch store; the champion "
        "ranker was trained on the product store's items"
    }
    return result


def _model_scorers(settings: Any, con: Any) -> tuple[dict[str, Any], Any | None]:
    """The champion ranker (and, when it uses text, a history-based text scorer)."""
    try:
        _, path = registry.download(settings, rules.RANKER_MODEL_NAME)
    except ModelNotReadyError as exc:
        log.warning("replay without the ranker: %s", exc)
        return {}, None
    model = RankerModel.load(path)
    scorers: dict[str, Any] = {"ranker": ranker_scorer(model)}
    text = None
    if model.uses_text:
        index = load_text_index(
            settings, con, scope=rules.LIVE_SCOPE.name, version=model.text_model_version
        )
        if index is not None:
            # user vectors from the clicks before each impression, never the live embedding
            text = HistoryText(con, index)
            scorers["text_only"] = lambda f: f["text_score"].fill_null(-1e9).to_numpy()
    return scorers, text
