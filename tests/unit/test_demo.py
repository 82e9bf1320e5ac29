import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from recsys.cli import demo as demo_mod
from recsys.cli import main
from recsys.core.config import Settings


@pytest.fixture(autouse=True)
def _text_champion(monkeypatch: pytest.MonkeyPatch) -> None:
    """The steps are not run here, so no text model is ever promoted: pretend one was."""
    monkeypatch.setattr(demo_mod, "_has_text_champion", lambda settings: True)


def test_score_is_skipped_when_no_text_model_was_promoted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(
        demo_mod, "_run", lambda settings, args, extra_env=None: calls.append(tuple(args))
    )
    monkeypatch.setattr(demo_mod, "_has_text_champion", lambda settings: False)
    home = tmp_path / "h"
    args = ["--home", str(home), "--data-dir", str(tmp_path), "--device", "cpu", "demo"]
    result = CliRunner().invoke(main, [*args, "--no-serve", "--max-pairs", "500"])
    assert result.exit_code == 0, result.output
    assert [c[0] for c in calls] == ["ingest", "train", "train", "evaluate", "models"]
    assert "score: skipped: no text-scorer champion" in result.output
    assert "score" not in json.loads((home / "demo-state.json").read_text())


def _keys(settings: Settings) -> dict[str, str]:
    return {s.name: s.key for s in demo_mod.plan_steps(settings, 1000, Path("r"))}


def test_changed_inputs_rerun_only_downstream_steps(settings: Settings) -> None:
    base = _keys(settings)
    ranker_changed = _keys(settings.replace(**{"ranker.num_leaves": 63}))
    assert [n for n in base if base[n] != ranker_changed[n]] == ["train ranker", "evaluate"]
    text_changed = _keys(settings.replace(**{"text.epochs": 5}))
    assert [n for n in base if base[n] != text_changed[n]] == [
        "train text",
        "score",
        "train ranker",
        "evaluate",
    ]


def test_data_change_reruns_everything(tmp_path: Path, settings: Settings) -> None:
    data = tmp_path / "data" / "movielens-small"
    data.mkdir(parents=True)
    (data / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,1\n")
    s = settings.replace(data_dir=str(tmp_path / "data"))
    before = _keys(s)
    (data / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,5.0,1\n")
    after = _keys(s)
    assert all(before[n] != after[n] for n in before)


def test_second_run_skips_unchanged_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(
        demo_mod, "_run", lambda settings, args, extra_env=None: calls.append(tuple(args))
    )
    args = [
        "--home",
        str(tmp_path / "h"),
        "--data-dir",
        str(tmp_path),
        "--device",
        "cpu",
        "demo",
        "--no-serve",
        "--max-pairs",
        "500",
    ]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert [c[:2] for c in calls[:5]] == [
        ("ingest", "movielens"),
        ("train", "text"),
        ("score",),
        ("train", "ranker"),
        ("evaluate", "--output"),
    ]
    calls.clear()
    second = CliRunner().invoke(main, args)
    assert second.exit_code == 0, second.output
    assert second.output.count("inputs unchanged, skipped") == 5
    assert calls == [("models", "list")]


def test_failed_step_stops_and_is_not_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail_on_score(settings: Settings, args: tuple[str, ...], extra_env: object = None) -> None:
        if args[0] == "score":
            raise demo_mod.click.ClickException("step `recsys score` failed (exit 1)")

    monkeypatch.setattr(demo_mod, "_run", fail_on_score)
    home = tmp_path / "h"
    result = CliRunner().invoke(
        main,
        [
            "--home",
            str(home),
            "--data-dir",
            str(tmp_path),
            "--device",
            "cpu",
            "demo",
            "--no-serve",
            "--max-pairs",
            "500",
        ],
    )
    assert result.exit_code == 1 and "recsys score" in result.output
    state = (home / "demo-state.json").read_text()
    assert "train text" in state and '"score"' not in state


def test_text_step_uses_the_tower_defaults_and_caps_only_the_pair_model(
    settings: Settings,
) -> None:
    tower = demo_mod.plan_steps(settings, 0, Path("r"))
    assert settings.text.model == "tower"
    assert [s.args for s in tower if s.name == "train text"] == [("train", "text")]
    pairs = demo_mod.plan_steps(settings.replace(**{"text.model": "pairs"}), 2000, Path("r"), 1)
    assert [s.args for s in pairs if s.name == "train text"] == [
        ("train", "text", "--max-pairs", "2000", "--epochs", "1")
    ]
