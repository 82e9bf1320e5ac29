"""``recsys train text`` and ``recsys score``: fine-tune the text scorer, batch-score the store.

torch is imported inside the commands only: the root CLI imports this module to list commands.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import click

from feature_store.db import connect
from recsys.cli import settings_from
from recsys.core import rules
from recsys.core.config import Settings
from training import promotion, registry
from training.text.scoring import score_store
from training.text.train import train_text_model

SCOPE_CHOICES = tuple(rules.SCOPES)


@click.command("text")
@click.option("--max-pairs", type=click.IntRange(min=2), help="Cap on training pairs (CPU runs).")
@click.option("--epochs", type=click.IntRange(min=1), help="Epochs (text.epochs).")
@click.option("--batch-size", type=click.IntRange(min=2), help="Pairs per step (text.batch_size).")
@click.option(
    "--use-lora/--no-lora", default=None, help="Train LoRA adapters instead of all weights."
)
@click.option(
    "--base-model", type=click.Path(file_okay=False), help="Local BERT-family model directory."
)
@click.option(
    "--model",
    type=click.Choice(["tower", "pairs"]),
    help="tower: history tower over cached lower BERT layers; pairs: per-pair BERT "
    "(default: text.model).",
)
@click.option("--no-promote", is_flag=True, help="Register only; never move the champion alias.")
@click.option(
    "--force", is_flag=True, help="Promote even when a promotion gate fails (reason recorded)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def train_text(
    ctx: click.Context,
    max_pairs: int | None,
    epochs: int | None,
    batch_size: int | None,
    use_lora: bool | None,
    base_model: str | None,
    model: str | None,
    no_promote: bool,
    force: bool,
    as_json: bool,
) -> None:
    """Fine-tune the two-tower BERT text scorer on protocol v1 (one MLflow run)."""
    settings = settings_from(ctx, **{"text.model": model})
    tower = settings.text.model == "tower"
    settings = settings_from(
        ctx,
        **{
            "text.model": model,
            ("text.tower_epochs" if tower else "text.epochs"): epochs,
            ("text.tower_batch_size" if tower else "text.batch_size"): batch_size,
            "text.use_lora": use_lora,
            "text.base_model": base_model,
        },
    )
    started = time.perf_counter()
    con = connect(settings.db_path)
    try:
        result = train_text_model(
            settings,
            con,
            max_pairs=max_pairs,
            promote=not no_promote,
            force=force,
            on_plan=None if as_json else (lambda plan: click.echo(plan.describe())),
        )
    finally:
        con.close()
    seconds = time.perf_counter() - started
    if as_json:
        click.echo(
            json.dumps(
                {
                    "run_id": result.run_id,
                    "model_version": result.model_version,
                    "promoted": result.promoted,
                    "promotion_reason": result.promotion_reason,
                    "seconds": seconds,
                    "metrics": result.metrics,
                },
                indent=2,
            )
        )
        return
    m = result.metrics
    click.echo(
        f"text-scorer version {result.model_version} (run {result.run_id}) in {seconds:.0f} s"
    )
    click.echo(f"{'model':24s}{'val AUC':>10s}{'NDCG@10':>10s}")
    for name, prefix in (
        ("fine-tuned", "val_"),
        ("zero-shot base", "zeroshot_val_"),
        ("TF-IDF cosine", "tfidf_val_"),
    ):
        click.echo(f"{name:24s}{m[prefix + 'auc']:>10.4f}{m[prefix + 'ndcg@10']:>10.4f}")
    click.echo("promoted to champion" if result.promoted else "not promoted (champion kept)")
    click.echo(f"promotion: {result.promotion_reason}")


@click.command("score")
@click.option(
    "--model-version",
    default="champion",
    show_default=True,
    help="Registered text-scorer version to score with.",
)
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    type=click.Choice(SCOPE_CHOICES),
    help="Scope(s) to write (default: all three).",
)
@click.option("--batch-size", type=click.IntRange(min=1), help="Texts per encoder batch.")
@click.pass_context
def score(
    ctx: click.Context, model_version: str, scopes: tuple[str, ...], batch_size: int | None
) -> None:
    """Embed the catalog and every user; write embeddings and top-N text scores to DuckDB."""
    settings = settings_from(ctx)
    version = None if model_version == "champion" else model_version
    if version is None and (refused := _refused_text_model(settings)) is not None:
        click.echo(refused)
        return
    with tempfile.TemporaryDirectory(prefix="text-scorer-") as tmp:
        ref, model_dir = registry.download(settings, rules.TEXT_MODEL_NAME, version, Path(tmp))
        click.echo(f"scoring with {ref.name} version {ref.version} (run {ref.run_id})")
        started = time.perf_counter()
        con = connect(settings.db_path)
        try:
            chosen = scopes or SCOPE_CHOICES
            summary = score_store(
                settings, con, model_dir, ref.version, chosen, batch_size=batch_size
            )
        finally:
            con.close()
    click.echo(f"wrote {summary.items} item embeddings in {time.perf_counter() - started:.0f} s")
    for scope in summary.users:
        users, scores = summary.users[scope], summary.scores[scope]
        click.echo(f"  {scope}: {users} user embeddings, {scores} text scores")


def _refused_text_model(settings: Settings) -> str | None:
    """The notice ``score`` prints when text models were trained but the gate promoted none.

    Not an error: the promotion gate decided the text does not earn its place on this log, and
    the rest of the job (ranker, evaluate, serve) runs without text features.  ``None`` when
    there is a champion to score with, or when no text model was ever trained (then
    ``registry.download`` raises its "train it" error).
    """
    if registry.champion(settings, rules.TEXT_MODEL_NAME) is not None:
        return None
    versions = registry.list_versions(settings, rules.TEXT_MODEL_NAME)
    if not versions:
        return None
    latest = versions[0]
    reason = latest["tags"].get(promotion.REASON_TAG) or "no reason recorded"
    name, number = rules.TEXT_MODEL_NAME, latest["version"]
    return (
        f"nothing to score: no {name} version is champion; the latest, version {number}, "
        f"was not promoted ({reason}).\n"
        "`recsys train ranker`, `recsys evaluate` and `recsys serve` run without text features. "
        f"To use version {number} anyway: `recsys models promote {name} {number}` (or "
        "`recsys train text --force`), then `recsys score`."
    )
