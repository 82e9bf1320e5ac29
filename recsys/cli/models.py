"""``recsys models list|promote|compare``: the registry from the command line."""

from __future__ import annotations

import json

import click

from recsys.cli import settings_from
from recsys.core import rules
from recsys.core.rules import MODEL_NAMES
from training import registry


@click.group()
def models() -> None:
    """Inspect and promote registered models (MLflow registry)."""


@models.command("list")
@click.argument("name", required=False, type=click.Choice(MODEL_NAMES))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def list_models(ctx: click.Context, name: str | None, as_json: bool) -> None:
    """List registered versions with their aliases and key metrics."""
    settings = settings_from(ctx)
    rows = [
        row
        for n in ([name] if name else MODEL_NAMES)
        for row in registry.list_versions(settings, n)
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        click.echo("no registered models yet; run `recsys train text` / `recsys train ranker`")
        return
    for row in rows:
        metrics = ", ".join(
            f"{k}={v:.4f}"
            for k, v in sorted(row["metrics"].items())
            if k.startswith(("val_", "test_"))
        )
        aliases = ",".join(row["aliases"]) or "-"
        click.echo(
            f"{row['name']:12s} v{row['version']:<4s} aliases={aliases:10s} "
            f"run={row['run_id']}  {metrics}"
        )


@models.command("promote")
@click.argument("name", type=click.Choice(MODEL_NAMES))
@click.argument("version")
@click.option(
    "--alias",
    default=rules.CHAMPION_ALIAS,
    show_default=True,
    help="The alias to move, e.g. 'challenger' for online interleaving "
    "(serving.interleave_challenger).",
)
@click.pass_context
def promote(ctx: click.Context, name: str, version: str, alias: str) -> None:
    """Point the alias (default `champion`) of NAME at VERSION (serving picks it up on reload)."""
    ref = registry.promote(settings_from(ctx), name, version, alias)
    click.echo(f"{ref.name} version {ref.version} is now {alias}")


@models.command("unalias")
@click.argument("name", type=click.Choice(MODEL_NAMES))
@click.argument("alias")
@click.pass_context
def unalias(ctx: click.Context, name: str, alias: str) -> None:
    """Remove ALIAS from NAME (e.g. end an interleaving test: `unalias ranker challenger`)."""
    if alias == rules.CHAMPION_ALIAS:
        raise click.UsageError(
            f"the {rules.CHAMPION_ALIAS} alias is what serving loads; promote another version "
            "instead of removing it"
        )
    if not registry.remove_alias(settings_from(ctx), name, alias):
        raise click.ClickException(f"no version of {name} carries the alias {alias!r}")
    click.echo(f"removed the alias {alias} of {name}")


@models.command("compare")
@click.argument("name", type=click.Choice(MODEL_NAMES))
@click.argument("versions", nargs=-1, required=True)
@click.pass_context
def compare(ctx: click.Context, name: str, versions: tuple[str, ...]) -> None:
    """Side-by-side metrics of several versions of NAME."""
    settings = settings_from(ctx)
    by_version = {row["version"]: row for row in registry.list_versions(settings, name)}
    missing = [v for v in versions if v not in by_version]
    if missing:
        raise click.ClickException(
            f"{name} has no version(s) {', '.join(missing)}; see `recsys models list {name}`"
        )
    keys = sorted({k for v in versions for k in by_version[v]["metrics"]})
    click.echo("metric".ljust(28) + "".join(f"v{v}".rjust(12) for v in versions))
    for key in keys:
        cells = "".join(
            (
                f"{by_version[v]['metrics'][key]:.4f}" if key in by_version[v]["metrics"] else "-"
            ).rjust(12)
            for v in versions
        )
        click.echo(key.ljust(28) + cells)
