"""``recsys demo``: the main job end to end on the data directory, then the server.

Each step runs as its own ``recsys`` process (so it releases the DuckDB write lock and its
memory when done) and is skipped when its inputs did not change since it last succeeded: the
state lives in ``<home>/demo-state.json`` as one input key per step.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import click

from recsys.cli import settings_from
from recsys.core import compat
from recsys.core.config import Settings
from recsys.core.rules import TEXT_MODEL_NAME
from training import registry

log = logging.getLogger(__name__)

DATA_FILES = (
    "movielens-small/ratings.csv",
    "movielens-small/movies.csv",
    "movielens-small/tags.csv",
    "movielens-small/links.csv",
    "movie-text/tmdb_5000_movies.csv",
    "movie-text/movies_extrainfos.dat",
)
# The per-pair model's CPU cap (fine-tuning runs ~4 pairs/s on 2 cores); the history tower
# (the default text.model) trains on every example with its own defaults.
CPU_MAX_PAIRS = 2000
CPU_EPOCHS = 1


@dataclass(frozen=True)
class Step:
    name: str
    args: tuple[str, ...]
    key: str


def _digest(*parts: object) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _data_key(data_dir: Path) -> str:
    h = hashlib.sha256()
    for rel in DATA_FILES:
        path = data_dir / rel
        if path.is_file():
            h.update(rel.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def plan_steps(
    settings: Settings, max_pairs: int, report_dir: Path, epochs: int | None = None
) -> list[Step]:
    """The demo's steps with input keys chained so a change re-runs everything downstream.

    ``max_pairs`` 0 and ``epochs`` None leave the text model's own defaults (``text.*``)."""
    ingest = _digest("ingest", _data_key(settings.data_dir))
    text = _digest(ingest, settings.text, max_pairs, epochs, settings.device, settings.seed)
    score = _digest(text, "score")
    ranker = _digest(score, settings.ranker, settings.seed)
    evaluate = _digest(ranker, "evaluate", str(report_dir))
    text_args: tuple[str, ...] = ("train", "text")
    if max_pairs > 0:
        text_args += ("--max-pairs", str(max_pairs))
    if epochs is not None:
        text_args += ("--epochs", str(epochs))
    return [
        Step("ingest", ("ingest", "movielens"), ingest),
        Step("train text", text_args, text),
        Step("score", ("score",), score),
        Step("train ranker", ("train", "ranker"), ranker),
        Step("evaluate", ("evaluate", "--output", str(report_dir)), evaluate),
    ]


def _command(
    settings: Settings, args: Sequence[str], extra_env: dict[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of one ``recsys`` step on this demo's home."""
    cmd = [
        sys.executable,
        "-m",
        "recsys",
        "--home",
        str(settings.home),
        "--data-dir",
        str(settings.data_dir),
        "--device",
        settings.device,
        *args,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(extra_env or {})}
    return cmd, env


def _run(settings: Settings, args: Sequence[str], extra_env: dict[str, str] | None = None) -> None:
    cmd, env = _command(settings, args, extra_env)
    result = subprocess.run(cmd, env=env, check=False)
    if result.returncode != 0:
        raise click.ClickException(
            f"step `recsys {' '.join(args)}` failed (exit {result.returncode}); "
            "see its messages above"
        )


def _has_text_champion(settings: Settings) -> bool:
    """Whether a text-scorer version holds the champion alias (there is something to score)."""
    return registry.champion(settings, TEXT_MODEL_NAME) is not None


def _cuda_available() -> bool:
    try:
        torch = compat.torch()
    except ImportError:  # MissingDependencyError is one
        return False
    return bool(torch.cuda.is_available())


def _print_report(report_dir: Path) -> None:
    report = report_dir / "report.md"
    if report.is_file():
        click.echo(report.read_text(encoding="utf-8"))
    else:
        click.echo(f"(no report found at {report})")


def _demo_api_key(settings: Settings) -> str:
    """The configured API key, or one generated once for this home (kept in <home>/demo-api-key)."""
    if settings.serving.api_key.get_secret_value():
        return settings.serving.api_key.get_secret_value()
    path = settings.home / "demo-api-key"
    if not path.is_file():
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


def _curl_examples(host: str, port: int, api_key: str) -> str:
    base = f"http://{host}:{port}"
    return "\n".join(
        [
            "Try it (in another terminal):",
            f"  curl -s '{base}/v1/users/1/recommendations?k=5' | python -m json.tool",
            f"  curl -s '{base}/v1/users/1/recommendations?k=5&explain=true' | python -m json.tool",
            f"  curl -s -X POST {base}/v1/rank -H 'Content-Type: application/json' \\",
            '       -d \'{"history": ["1", "260", "1196"], '
            '"candidates": ["2571", "318", "4993"], "k": 3}\'',
            f"  curl -s -X POST {base}/v1/events -H 'Content-Type: application/json' \\",
            f"       -H 'X-API-Key: {api_key}' \\",
            '       -d \'{"events": [{"event_id": "demo-1", "user_id": "1", "item_id": "318",'
            ' "event_type": "click", "ts": "2026-01-01T12:00:00Z"}]}\'',
            f"  curl -s {base}/readyz; curl -s {base}/metrics | head",
            f"  open {base}/docs for the API reference (OpenAPI at {base}/openapi.json)",
        ]
    )


@click.command()
@click.option(
    "--max-pairs",
    type=click.IntRange(min=100),
    default=None,
    help="Text-model training example cap (default: none; with text.model = pairs on CPU "
    f"{CPU_MAX_PAIRS} pairs and {CPU_EPOCHS} epoch).",
)
@click.option(
    "--force", is_flag=True, help="Re-run every step even when its inputs did not change."
)
@click.option(
    "--serve/--no-serve", default=True, show_default=True, help="Start the server at the end."
)
@click.option(
    "--port", type=click.IntRange(1, 65535), default=None, help="Server port (default 8000)."
)
@click.pass_context
def demo(
    ctx: click.Context, max_pairs: int | None, force: bool, serve: bool, port: int | None
) -> None:
    """Ingest MovieLens + movie text, train text model and ranker, evaluate, promote, serve."""
    settings = settings_from(ctx)
    settings.home.mkdir(parents=True, exist_ok=True)
    cuda = settings.device == "cuda" or (settings.device == "auto" and _cuda_available())
    # the history tower learns from the whole log within the CPU budget: its defaults as they
    # are; the per-pair model is capped on CPU
    capped = not cuda and settings.text.model == "pairs"
    pairs = max_pairs if max_pairs is not None else (CPU_MAX_PAIRS if capped else 0)
    epochs = CPU_EPOCHS if capped else None
    report_dir = settings.reports_dir / "demo"
    state_path = settings.home / "demo-state.json"
    state: dict[str, str] = json.loads(state_path.read_text()) if state_path.is_file() else {}
    click.echo(
        f"recsys demo: home={settings.home} data={settings.data_dir} "
        f"device={'cuda' if cuda else 'cpu'} text pairs cap={pairs or 'none'}"
    )
    timings: list[tuple[str, float, str]] = []
    steps = plan_steps(settings, pairs, report_dir, epochs)
    for number, step in enumerate(steps, start=1):
        header = f"[{number}/{len(steps)}] {step.name}"
        if not force and state.get(step.name) == step.key:
            click.echo(f"{header}: inputs unchanged, skipped")
            timings.append((step.name, 0.0, "skipped"))
            continue
        if step.name == "score" and not _has_text_champion(settings):
            # not recorded as done: the next demo run checks again
            click.echo(
                f"{header}: skipped: no text-scorer champion (the text model did not pass its "
                "promotion gate; `recsys models list text-scorer` shows why), so the ranker "
                "trains without text features"
            )
            timings.append((step.name, 0.0, "no text model"))
            continue
        click.echo(f"{header}: recsys {' '.join(step.args)}")
        start = time.perf_counter()
        _run(settings, step.args)
        timings.append((step.name, time.perf_counter() - start, "ran"))
        state[step.name] = step.key
        state_path.write_text(json.dumps(state, indent=2))
    _run(settings, ("models", "list"))
    click.echo("\nStep timings:")
    for name, seconds, what in timings:
        click.echo(f"  {name:14s} {seconds:8.1f} s  {what}")
    click.echo(f"  {'total':14s} {sum(t for _, t, _ in timings):8.1f} s\n")
    _print_report(report_dir)
    if not serve:
        return
    host, bind_port = "127.0.0.1", port or settings.serving.port
    api_key = _demo_api_key(settings)
    click.echo(_curl_examples(host, bind_port, api_key))
    click.echo(f"\nStarting the server on http://{host}:{bind_port} (Ctrl-C stops it)...")
    sys.stdout.flush()
    # The server replaces this process, so Ctrl-C / SIGTERM reach it directly (no orphan).
    cmd, env = _command(
        settings,
        ("serve", "--host", host, "--port", str(bind_port)),
        extra_env={"RECSYS_SERVING__API_KEY": api_key},
    )
    os.execve(sys.executable, cmd, env)
