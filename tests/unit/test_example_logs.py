"""`recsys ingest example`: seeded synthetic logs that the ingest commands accept."""

from __future__ import annotations

import csv
from pathlib import Path

from click.testing import CliRunner

from recsys.cli import main
from recsys.cli.example_logs import make_world


def _example(tmp_path: Path, *args: str) -> str:
    result = CliRunner().invoke(
        main, ["--home", str(tmp_path / "home"), "ingest", "example", *args]
    )
    assert result.exit_code == 0, result.output
    return result.output


def test_events_example_is_seeded_and_follows_the_contract(tmp_path: Path) -> None:
    for name in ("a", "b"):
        _example(tmp_path, "events", str(tmp_path / name), "--users", "6", "--items", "16")
    for f in ("items.csv", "events.csv"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    with (tmp_path / "a" / "items.csv").open(encoding="utf-8") as f:
        items = list(csv.DictReader(f))
    assert len(items) == 16 and set(items[0]) == {
        "item_id",
        "title",
        "description",
        "category",
        "tags",
    }
    with (tmp_path / "a" / "events.csv").open(encoding="utf-8") as f:
        events = list(csv.DictReader(f))
    assert {e["user_id"] for e in events} == {f"V{u}" for u in range(6)}
    assert {e["event_type"] for e in events} <= {"click", "purchase"}
    clicked = {(e["user_id"], e["item_id"]) for e in events if e["event_type"] == "click"}
    assert all(
        (e["user_id"], e["item_id"]) in clicked for e in events if e["event_type"] == "purchase"
    )


def test_mind_example_lists_have_a_click_and_known_news(tmp_path: Path) -> None:
    out = _example(tmp_path, "mind", str(tmp_path / "m"), "--users", "5", "--items", "20")
    assert "recsys ingest mind" in out
    news = {line.split("\t")[0] for line in (tmp_path / "m" / "news.tsv").read_text().splitlines()}
    assert len(news) == 20
    for line in (tmp_path / "m" / "behaviors.tsv").read_text().splitlines():
        shown = [pair.rsplit("-", 1) for pair in line.split("\t")[4].split()]
        assert 5 <= len(shown) <= 15 and any(label == "1" for _, label in shown)
        assert {n for n, _ in shown} <= news


def test_interest_drives_clicks() -> None:
    world = make_world(50, 80, seed=1)
    favourite = world.interest.argmax(axis=1)
    on = [
        world.click_probability(u, (world.item_category == favourite[u]).nonzero()[0]).mean()
        for u in range(50)
    ]
    off = [
        world.click_probability(u, (world.item_category != favourite[u]).nonzero()[0]).mean()
        for u in range(50)
    ]
    assert sum(a > b for a, b in zip(on, off, strict=True)) == 50


def test_bad_shape_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["ingest", "example", "ratings", str(tmp_path)])
    assert result.exit_code == 2 and "ratings" in result.output
