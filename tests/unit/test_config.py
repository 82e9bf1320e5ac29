from pathlib import Path

import pytest

from recsys.core.config import load_settings
from recsys.core.errors import ConfigError


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
        ({"RECSYS_DEVICE": "tpu"}, "device must be one of"),
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
    import os

    from training import registry

    before = os.environ.get("MLFLOW_TRACKING_URI")
    for name in ("a", "b"):
        # re-read the live environment each time, as a second CLI invocation would
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI" or v != before}
        s = load_settings(overrides={"home": str(tmp_path / name)}, environ=env)
        with registry.start_run(s, "t"):
            pass
        assert (tmp_path / name / "mlflow.db").is_file()
    assert os.environ.get("MLFLOW_TRACKING_URI") == before
