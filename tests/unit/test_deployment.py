"""The container files stay runnable: compose.yaml and the Dockerfile parse, every command they
run (and every command compose.yaml's header tells operators to run) is a real CLI command with
real options, the home is one named volume that the API and the MLflow UI share at the path the
image's RECSYS_HOME names, and the image pins the Makefile's CPU torch.  No Docker daemon needed;
``test_image_builds`` builds the image where one is reachable."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner
from mlflow.cli import cli as mlflow_cli

from recsys.cli import main as recsys_cli
from recsys.core.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _dockerfile() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` per instruction, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in instructions:
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def check_cli(argv: list[str]) -> None:
    """Parse ``argv`` with the real click command it names (``recsys ...`` or ``mlflow ...``):
    with ``--help`` appended click parses every option, then prints the help instead of running;
    a missing command or an unknown option fails with click's usage error."""
    commands = {"recsys": recsys_cli, "mlflow": mlflow_cli}
    if argv[0] not in commands:
        raise AssertionError(f"unexpected program {argv[0]!r}")
    command = commands[argv[0]]
    result = CliRunner().invoke(command, [*argv[1:], "--help"], prog_name=argv[0])
    if result.exit_code != 0 or "Usage:" not in result.output:
        raise click.UsageError(f"{' '.join(argv)}: {result.output or result.exception}")


def test_check_cli_rejects_what_the_cli_rejects() -> None:
    with pytest.raises(click.UsageError):
        check_cli(["recsys", "serve", "--no-such-flag"])
    with pytest.raises(click.UsageError):
        check_cli(["recsys", "trian", "ranker"])
    check_cli(["recsys", "train", "ranker", "--no-promote"])


def test_compose_services_run_real_commands() -> None:
    services = _compose()["services"]
    assert set(services) == {"api", "mlflow"}
    api, ui = services["api"]["command"], services["mlflow"]["command"]
    assert api[:2] == ["recsys", "serve"] and "--dev" not in api  # gunicorn + writer
    assert ui[:2] == ["mlflow", "server"]
    for argv in (api, ui):
        check_cli([str(a) for a in argv])


def test_compose_header_commands_are_real() -> None:
    header = [
        ln.split("docker compose ", 1)[1]
        for ln in (ROOT / "compose.yaml").read_text(encoding="utf-8").splitlines()
        if ln.startswith("#") and ("docker compose run" in ln or "docker compose exec" in ln)
    ]
    argvs = [shlex.split(h.split("#")[0])[2:] for h in header]
    argvs = [a[1:] if a[0] == "api" else a for a in argvs]  # `exec api ...`
    assert len(argvs) >= 5
    for argv in argvs:
        check_cli(argv)


def test_home_is_one_named_volume_shared_by_api_and_ui() -> None:
    compose = _compose()
    env = _env(_dockerfile())
    home = env["RECSYS_HOME"]
    assert set(compose["volumes"]) == {"recsys-home"}
    for name in ("api", "mlflow"):
        mounts = compose["services"][name]["volumes"]
        assert f"recsys-home:{home}" in mounts, name
    assert compose["services"]["api"]["environment"]["RECSYS_HOME"] == home
    ui = compose["services"]["mlflow"]["command"]
    store = ui[ui.index("--backend-store-uri") + 1]
    artifacts = ui[ui.index("--default-artifact-root") + 1]
    # the paths `recsys` itself uses under that home (recsys.core.config.Settings)
    settings = Settings(home=Path(home))
    assert store == settings.tracking_uri
    assert artifacts == settings.artifact_root


def test_api_key_is_required_not_baked_in() -> None:
    api_env = _compose()["services"]["api"]["environment"]
    assert api_env["RECSYS_SERVING__API_KEY"].startswith("${RECSYS_API_KEY:?")
    assert "API_KEY" not in (ROOT / "Dockerfile").read_text(encoding="utf-8")


def test_dockerfile_cpu_torch_offline_non_root() -> None:
    instructions = _dockerfile()
    words = [w for w, _ in instructions]
    assert instructions[0] == ("FROM", "python:3.11-slim")
    env = _env(instructions)
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
    runs = " ".join(rest for w, rest in instructions if w == "RUN")
    pin = re.search(r"torch==([\w.+]+)", (ROOT / "Makefile").read_text(encoding="utf-8"))
    assert pin is not None
    assert f"--index-url https://download.pytorch.org/whl/cpu torch=={pin.group(1)}" in runs
    users = [rest for w, rest in instructions if w == "USER"]
    assert users and users[-1] not in {"root", "0"}
    # the last USER comes before the command, after every RUN that needs root
    assert max(i for i, w in enumerate(words) if w == "RUN") < words.index("USER")
    cmd = json.loads(next(rest for w, rest in instructions if w == "CMD"))
    check_cli(cmd)
    volume = json.loads(next(rest for w, rest in instructions if w == "VOLUME"))
    assert volume == [env["RECSYS_HOME"]]


def test_dockerignore_lets_the_packages_in() -> None:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    copied = [rest.split()[0] for w, rest in _dockerfile() if w == "COPY"]
    for src in copied:
        assert f"!{src.rstrip('/')}/" in lines or f"!{src}" in lines, src


def _docker_daemon() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _docker_daemon(), reason="no Docker daemon reachable")
def test_image_builds() -> None:
    subprocess.run(["docker", "build", "-t", "recsys-text:test", str(ROOT)], check=True)
    out = subprocess.run(
        ["docker", "run", "--rm", "recsys-text:test", "recsys", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "serve" in out.stdout
