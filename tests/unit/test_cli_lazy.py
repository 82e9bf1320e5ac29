"""The CLI loads a subcommand's module only when that subcommand runs: listing commands and
``recsys ingest`` stay free of torch, MLflow, LightGBM and Flask (docs/layout.md, Imports)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from recsys.cli import _COMMANDS, _TRAIN_COMMANDS, Lazy, LazyGroup, load_command, main
from tests.conftest import REPO_ROOT

HEAVY = ("torch", "mlflow", "lightgbm", "transformers", "flask")
_PROBE = (
    "import sys\n"
    "from click.testing import CliRunner\n"
    "from recsys.cli import main\n"
    "result = CliRunner().invoke(main, sys.argv[1:])\n"
    "assert result.exit_code == 0, result.output\n"
    f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))\n"
)


def _heavy_modules_after(args: list[str], home: Path) -> set[str]:
    """The heavy modules a fresh interpreter holds after ``recsys ARGS``."""
    env = {**os.environ, "RECSYS_HOME": str(home), "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.split())


@pytest.mark.parametrize(
    ("args", "allowed"),
    [
        (["--help"], set()),
        (["ingest", "--help"], set()),
        (["train", "--help"], set()),
        (["serve", "--help"], {"flask"}),  # the app, not the text model
    ],
)
def test_help_imports_no_heavy_library(args: list[str], allowed: set[str], tmp_path: Path) -> None:
    assert _heavy_modules_after(args, tmp_path) <= allowed


@pytest.mark.parametrize(
    ("name", "lazy"), [*_COMMANDS.items(), *(("train " + n, c) for n, c in _TRAIN_COMMANDS.items())]
)
def test_listed_help_is_the_commands_own(name: str, lazy: Lazy) -> None:
    assert lazy.help == load_command(lazy).get_short_help_str(limit=10_000), name


def test_group_help_lists_every_command_without_loading_it() -> None:
    group = LazyGroup("g", lazy={"later": Lazy("no_such_module_anywhere:cmd", "Runs later.")})
    result = CliRunner().invoke(group, ["--help"])
    assert result.exit_code == 0, result.output
    assert "later  Runs later." in result.output


def test_a_lazy_target_that_is_not_a_command_is_refused() -> None:
    with pytest.raises(TypeError, match="is not a click command"):
        load_command(Lazy("recsys.cli:settings_from", "not a command"))


def test_a_nested_lazy_group_lists_and_loads_its_commands(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--home", str(tmp_path), "train", "--help"])
    assert result.exit_code == 0, result.output
    assert "ranker" in result.output and "text" in result.output
    assert isinstance(load_command(_COMMANDS["ingest"]), click.Group)
