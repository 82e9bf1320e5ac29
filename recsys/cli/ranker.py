"""``recsys train ranker``: LightGBM LambdaRank on protocol v1 (MLflow run + registered model)."""

from __future__ import annotations

import json

import click

from feature_store.db import connect
from recsys.cli import settings_from
from training.ranker.run import train_and_log


@click.command("ranker")
@click.option(
    "--num-candidates",
    type=click.IntRange(min=10),
    default=None,
    help="Candidates per user (ranker.num_candidates, default 300).",
)
@click.option(
    "--num-boost-round",
    type=click.IntRange(min=1),
    default=None,
    help="Maximum boosting rounds (early stopping picks the best).",
)
@click.option("--learning-rate", type=float, default=None, help="LightGBM learning rate.")
@click.option("--num-leaves", type=click.IntRange(min=2), default=None, help="LightGBM num_leaves.")
@click.option("--no-promote", is_flag=True, help="Register the model but never promote it.")
@click.option(
    "--force", is_flag=True, help="Promote even when a promotion gate fails (reason recorded)."
)
@click.pass_context
def train_ranker(
    ctx: click.Context,
    num_candidates: int | None,
    num_boost_round: int | None,
    learning_rate: float | None,
    num_leaves: int | None,
    no_promote: bool,
    force: bool,
) -> None:
    """Train the ranker (and its no-text ablation) on the store; register it as `ranker`."""
    settings = settings_from(
        ctx,
        **{
            "ranker.num_candidates": num_candidates,
            "ranker.num_boost_round": num_boost_round,
            "ranker.learning_rate": learning_rate,
            "ranker.num_leaves": num_leaves,
        },
    )
    con = connect(settings.db_path)
    try:
        summary = train_and_log(settings, con, promote=not no_promote, force=force)
    finally:
        con.close()
    m = summary["metrics"]
    with_text = m.get("with_text_val_ndcg@10")
    click.echo(
        f"ranker version {summary['version']} (run {summary['run_id']}, text model "
        f"{summary['text_model_version']}): holdout NDCG@10 {m['val_ndcg@10']:.4f} "
        + (f"(with text {with_text:.4f}, " if with_text is not None else "(")
        + f"no text {m['no_text_val_ndcg@10']:.4f}); "
        f"{'promoted to champion' if summary['promoted'] else 'not promoted'}"
    )
    if summary["baselines"]:
        click.echo(
            "baselines on the same holdout: "
            + ", ".join(f"{k} {v:.4f}" for k, v in summary["baselines"].items())
        )
    click.echo(f"promotion: {summary['decision']}: {summary['reason']}")
    click.echo(json.dumps({"top_features": summary["top_features"][:5]}, default=str))
