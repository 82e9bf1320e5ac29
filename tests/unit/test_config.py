import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from recsys.cli import main
from recsys.core.config import load_settings
from recsys.core.errors import ConfigError
from training import registry


def test_defaults_then_toml_then_env_then_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "recsys.toml"
    cfg.write_text(
        'seed = 7\n[text]\nbatch_size = 8\nepochs = 3\n[serving]\ncors_origins = ["http://a"]\n'
    )
    env = {"RECSYS_TEXT__EPOCHS": "5", "RECSYS_HOME": str(tmp_path / "h"), "OTHER": "x"}
    s = load_settings(cfg, overrides={"text.epochs": 9, "seed": None}, environ=env)
    assert s.seed == 7  # TOML; the None override leaves it
    assert s.text.batch_size == 8  # TOML
    assert s.text.epochs == 9  # override beats env beats TOML
    assert s.home == tmp_path / "h"
    assert s.serving.cors_origins == ("http://a",)
    assert s.db_path == tmp_path / "h" / "recsys.duckdb"
    assert s.tracking_uri.startswith("sqlite:///") and s.tracking_uri.endswith("h/mlflow.db")


def test_settings_are_frozen() -> None:
    s = load_settings(environ={})
    with pytest.raises(AttributeError):
        s.seed = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RECSYS_TEXT__BATCHSIZE": "3"}, "unknown setting 'text.batchsize'"),
        ({"RECSYS_TEXT__BATCH_SIZE": "three"}, "'text.batch_size'"),
        ({"RECSYS_TEXT__USE_LORA": "maybe"}, "expected a boolean"),
        ({"RECSYS_DEVICE": "tpu"}, "device.* must be one of auto, cpu, cuda"),
    ],
)
def test_bad_settings_name_the_key(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ=env)


def test_missing_and_broken_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("seed = = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad, environ={})


def test_two_homes_do_not_share_paths(tmp_path: Path) -> None:
    a = load_settings(overrides={"home": str(tmp_path / "a")}, environ={})
    b = load_settings(overrides={"home": str(tmp_path / "b")}, environ={})
    assert {a.db_path, a.tracking_uri, a.artifact_root}.isdisjoint(
        {b.db_path, b.tracking_uri, b.artifact_root}
    )


def test_mlflow_tracking_uri_env_is_folded_in_once() -> None:
    s = load_settings(environ={"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"})
    assert s.tracking_uri == "http://127.0.0.1:5000"
    ours = load_settings(
        environ={"MLFLOW_TRACKING_URI": "http://a", "RECSYS_MLFLOW_TRACKING_URI": "http://b"}
    )
    assert ours.tracking_uri == "http://b"


def test_two_homes_in_one_process_log_to_their_own_stores(tmp_path: Path) -> None:
    before = os.environ.get("MLFLOW_TRACKING_URI")
    for name in ("a", "b"):
        # re-read the live environment each time, as a second CLI invocation would
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI" or v != before}
        s = load_settings(overrides={"home": str(tmp_path / name)}, environ=env)
        with registry.start_run(s, "t"):
            pass
        assert (tmp_path / name / "mlflow.db").is_file()
    assert os.environ.get("MLFLOW_TRACKING_URI") == before


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"RECSYS_SERVING__PORT": "99999"},
            r"'serving.port' \(from environment RECSYS_SERVING__PORT\) = '99999': must be at most"
            " 65535",
        ),
        ({"RECSYS_SERVING__WORKERS": "0"}, r"'serving.workers' .* must be at least 1"),
        (
            {"RECSYS_SERVING__EVENT_FLUSH_SECONDS": "-1"},
            r"'serving.event_flush_seconds' .*RECSYS_SERVING__EVENT_FLUSH_SECONDS.* greater than 0",
        ),
        ({"RECSYS_RANKER__FEATURE_FRACTION": "1.5"}, r"'ranker.feature_fraction' .* at most 1"),
        ({"RECSYS_TEXT__MODEL": "big"}, r"'text.model' .* must be one of pairs, tower"),
        ({"RECSYS_LOG_LEVEL": "loud"}, r"'log_level' .* must be one of DEBUG, INFO"),
        ({"RECSYS_SEED": "-3"}, r"'seed' .* must be at least 0"),
    ],
)
def test_ranges_are_checked_from_the_environment(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ=env)


def test_ranges_are_checked_from_toml_and_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[serving]\nworkers = 0\n")
    with pytest.raises(ConfigError, match=rf"'serving.workers' \(from config file {cfg}\) = 0"):
        load_settings(cfg, environ={})
    with pytest.raises(ConfigError, match=r"'ranker.num_leaves' \(from override\) = 1"):
        load_settings(environ={}, overrides={"ranker.num_leaves": 1})
    with pytest.raises(ConfigError, match=r"\(from command line\)"):
        load_settings(environ={}).override({"serving.port": 70000}, "command line")
    # a section's own cross-field rule names the source too
    with pytest.raises(ConfigError, match=r"split.test_percent .*\(from config file"):
        cfg.write_text("[split]\ntest_percent = 100\n")
        load_settings(cfg, environ={})
    ok = load_settings(environ={"RECSYS_SERVING__PORT": "0", "RECSYS_TEXT__WARMUP_RATIO": "0"})
    assert ok.serving.port == 0 and ok.text.warmup_ratio == 0.0  # the edges are valid


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        ("RECSYS_SERVING__PROT", "did you mean 'serving.port'?"),
        ("RECSYS_SERVNG__WORKERS", "did you mean 'serving.workers'?"),
        ("RECSYS_RANKER__NUM_LEAVE", "did you mean 'ranker.num_leaves'?"),
        ("RECSYS_TEXT__ZZZ_QQQ", "the text settings are: text.base_model, "),
    ],
)
def test_unknown_keys_suggest_the_closest(key: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={key: "1"})
    assert suggestion in str(info.value) and f"(from environment {key})" in str(info.value)
    assert "valid settings" not in str(info.value)  # no wall of 60 keys


def test_the_cli_reports_the_bad_key(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        ["--home", str(tmp_path), "serve", "--writer-only"],
        env={"RECSYS_SERVING__WORKERS": "0"},
    )
    assert result.exit_code != 0
    assert "serving.workers" in result.output and "must be at least 1" in result.output
