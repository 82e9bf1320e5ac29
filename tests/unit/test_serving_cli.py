"""``recsys serve`` hands its resolved settings to gunicorn through RECSYS_* variables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from recsys.cli import main
from recsys.cli.serve import settings_env
from recsys.core.config import Settings, load_settings


def test_settings_survive_the_trip_to_gunicorn(settings: Settings, tmp_path: Path) -> None:
    custom = settings.replace(
        **{
            "serving.api_key": "k3y",
            "serving.cors_origins": "https://a.example,https://b.example",
            "serving.workers": 3,
            "serving.event_flush_seconds": 0.25,
            "text.use_lora": True,
            "data_dir": str(tmp_path / "data"),
        }
    )
    env = settings_env(custom)
    assert env["RECSYS_SERVING__API_KEY"] == "k3y" and env["RECSYS_TEXT__USE_LORA"] == "true"
    again = load_settings(environ=env)
    assert again.to_dict() == custom.replace(home=str(Path(custom.home).resolve())).to_dict()


def test_serve_help_lists_its_options() -> None:
    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0
    for option in ("--host", "--port", "--workers", "--dev", "--writer-only"):
        assert option in result.output


def test_recsys_cli_does_not_import_flask() -> None:
    code = (
        "import sys, recsys.cli; recsys.cli.main(['--help'], standalone_mode=False); "
        "print('flask' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
