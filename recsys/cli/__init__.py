"""The ``recsys`` command line.  Subcommands live in their own modules and load lazily, so
``recsys ingest`` never imports torch and ``recsys`` never imports Flask until ``serve``."""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from recsys.core.config import Settings, load_settings
from recsys.core.errors import RecsysError

# name -> "module:attribute" of a click command or group
_COMMANDS = {
    "ingest": "recsys.cli.ingest:ingest",
    "train": "recsys.cli:train",
    "score": "recsys.cli.text:score",
    "evaluate": "recsys.cli.evaluate:evaluate",
    "serve": "recsys.cli.serve:serve",
    "models": "recsys.cli.models:models",
    "demo": "recsys.cli.demo:demo",
    "features": "recsys.cli.features:features",
}
_TRAIN_COMMANDS = {
    "text": "recsys.cli.text:train_text",
    "ranker": "recsys.cli.ranker:train_ranker",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when used."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            module, _, attr = self.lazy[cmd_name].partition(":")
            cmd = getattr(importlib.import_module(module), attr)
            if not isinstance(cmd, click.Command):
                raise TypeError(f"{self.lazy[cmd_name]} is not a click command")
            return cmd
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RecsysError as exc:
            logging.getLogger("recsys").debug("command failed", exc_info=True)
            raise click.ClickException(str(exc)) from exc


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
