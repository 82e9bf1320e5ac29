"""The ``recsys`` command line.  Subcommands live in their own modules and load lazily, so
``recsys ingest`` never imports torch and ``recsys`` never imports Flask until ``serve``."""

from __future__ import annotations

import importlib
import logging
import sys
from dataclasses import dataclass
from typing import Any

import click

from recsys.core.config import Settings, load_settings
from recsys.core.errors import RecsysError


@dataclass(frozen=True)
class Lazy:
    """A subcommand by import path, with the one line ``--help`` lists for it, so that listing
    the commands imports none of them (tests/unit/test_cli_lazy.py checks the line matches)."""

    target: str  # "module:attribute" of a click command or group
    help: str


_COMMANDS = {
    "ingest": Lazy(
        "recsys.cli.ingest:ingest",
        "Load events and items into the DuckDB store (validated; bad rows -> quarantine).",
    ),
    "train": Lazy("recsys.cli:train", "Train the text model or the ranker (each an MLflow run)."),
    "score": Lazy(
        "recsys.cli.text:score",
        "Embed the catalog and every user; write embeddings and top-N text scores to DuckDB.",
    ),
    "evaluate": Lazy(
        "recsys.cli.evaluate:evaluate",
        "Evaluate on the split (full ranking; impression logs add per-impression metrics on the "
        "held-out served lists) and write report.json, report.md and plots; or, with --online, "
        "the interleaving win rate of a challenger over the champion.",
    ),
    "serve": Lazy(
        "recsys.cli.serve:serve",
        "Serve the HTTP API (gunicorn) and ingest posted events (one writer process).",
    ),
    "models": Lazy(
        "recsys.cli.models:models", "Inspect and promote registered models (MLflow registry)."
    ),
    "demo": Lazy(
        "recsys.cli.demo:demo",
        "Ingest MovieLens + movie text, train text model and ranker, evaluate, promote, serve.",
    ),
    "features": Lazy(
        "recsys.cli.features:features",
        "Compute features for REQUESTS_FILE (CSV or Parquet with user_id, item_id, as_of).",
    ),
}
_TRAIN_COMMANDS = {
    "text": Lazy(
        "recsys.cli.text:train_text",
        "Fine-tune the two-tower BERT text scorer on protocol v1 (one MLflow run).",
    ),
    "ranker": Lazy(
        "recsys.cli.ranker:train_ranker",
        "Train the ranker (and its no-text ablation) on the store; register it as `ranker`.",
    ),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when invoked (click's documented lazy
    subcommand pattern), so ``recsys --help`` and ``recsys ingest`` never import torch, MLflow,
    LightGBM or Flask; ``--help`` lists them from their ``Lazy.help`` lines."""

    def __init__(self, *args: Any, lazy: dict[str, Lazy] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            return load_command(self.lazy[cmd_name])
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = []
        for name in names:
            if name in self.lazy:
                # a bare Command only to shorten the line the way click shortens command help
                short = click.Command(name, help=self.lazy[name].help).get_short_help_str(limit)
                rows.append((name, short))
                continue
            cmd = super().get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RecsysError as exc:
            logging.getLogger("recsys").debug("command failed", exc_info=True)
            raise click.ClickException(str(exc)) from exc


def load_command(lazy: Lazy) -> click.Command:
    """Import the module that defines ``lazy.target`` and return its click command."""
    module, _, attr = lazy.target.partition(":")
    cmd = getattr(importlib.import_module(module), attr)
    if not isinstance(cmd, click.Command):
        raise TypeError(f"{lazy.target} is not a click command")
    return cmd


def settings_from(ctx: click.Context, **overrides: Any) -> Settings:
    """The command's settings: the group's resolved settings plus this command's flags."""
    base: Settings = ctx.find_root().obj
    return base.override({k: v for k, v in overrides.items() if v is not None}, "command line")


@click.group(
    cls=LazyGroup, lazy=_COMMANDS, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.option(
    "--home",
    type=click.Path(file_okay=False),
    help="Where everything is written (RECSYS_HOME, default ./.recsys).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    help="Source data directory (RECSYS_DATA_DIR, default ../shared/data).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="TOML settings file (RECSYS_CONFIG).",
)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Device for the text model."
)
@click.option(
    "--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False)
)
@click.version_option(package_name="recsys-text")
@click.pass_context
def main(
    ctx: click.Context,
    home: str | None,
    data_dir: str | None,
    config_file: str | None,
    device: str | None,
    log_level: str | None,
) -> None:
    """Personalized recommendations with text-aware ranking."""
    try:
        settings = load_settings(
            config_file,
            overrides={
                "home": home,
                "data_dir": data_dir,
                "device": device,
                "log_level": log_level.upper() if log_level else None,
            },
        )
    except RecsysError as exc:
        raise click.ClickException(str(exc)) from exc
    configure_logging(settings.log_level)
    ctx.obj = settings


@main.group(cls=LazyGroup, lazy=_TRAIN_COMMANDS)
def train() -> None:
    """Train the text model or the ranker (each an MLflow run)."""


def configure_logging(level: str) -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_recsys", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
        handler._recsys = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("urllib3", "filelock", "alembic", "git", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
