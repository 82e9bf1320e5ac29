"""The whole job from the CLI on logs that are not MovieLens ratings (issue 11).

ingest -> train text -> score -> train ranker -> evaluate -> serve + one request, on

- a MIND-style impression log (tests/log_factories.py writes it in the layout of
  tests/fixtures/mind, whose four lines are too few to train on), split at a global time cut:
  the report adds per-impression metrics on the held-out lists;
- a generic CSV log with no ratings and no served lists (``purchase`` events; items with a
  title, a description and a category), split per user in time.

Tiny settings keep it quick: a 2-layer BERT written from the items' own words
(tests/tiny_bert.py), one epoch on 96 pairs, 20 candidates, 30 boosting rounds.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from recsys.cli import main
from tests.integration.test_server import running_server
from tests.log_factories import impression_lines, item_rows, write_event_log, write_mind
from tests.tiny_bert import vocab_from_texts, write_tiny_bert

pytestmark = pytest.mark.integration

SETTINGS = """
[split]
kind = "{split}"
[ranker]
num_candidates = 20
min_data_in_leaf = 2
num_boost_round = 30
early_stopping_rounds = 5
num_leaves = 7
[text]
model = "pairs"
base_model = "{bert}"
epochs = 1
max_pairs = 96
batch_size = 16
eval_users = 0
score_batch_size = 64
"""


def _home(tmp_path: Path, split: str) -> tuple[Path, dict[str, str]]:
    bert = tmp_path / "bert"
    texts = [f"{r['title']} {r['description']} {r['category']}" for r in item_rows(40)]
    write_tiny_bert(bert, vocab_from_texts(texts + ["category news tags genres"]))
    config = tmp_path / "recsys.toml"
    config.write_text(SETTINGS.format(split=split, bert=bert), encoding="utf-8")
    return tmp_path / "home", {"RECSYS_CONFIG": str(config)}


def _run(home: Path, env: dict[str, str], *args: str) -> str:
    result = CliRunner().invoke(main, ["--home", str(home), *args], env=env)
    assert result.exit_code == 0, f"recsys {' '.join(args)}:\n{result.output}"
    return result.output


def _job(home: Path, env: dict[str, str], out: Path) -> dict:
    _run(home, env, "train", "text", "--force")  # a tiny BERT need not beat TF-IDF
    _run(home, env, "score")
    _run(home, env, "train", "ranker")
    _run(home, env, "evaluate", "--output", str(out))
    report = json.loads((out / "report.json").read_text())
    systems = report["systems"]
    assert {"popularity", "text_only", "ranker_no_text", "ranker"} <= set(systems)
    assert all(m["users"] > 0 for m in systems.values())
    return report


def _serve_one(home: Path, env: dict[str, str], user: str) -> None:
    with running_server(home, home, workers=1, env=env, need_models=True) as server:
        resp = httpx.get(f"{server.base_url}/v1/users/{user}/recommendations?k=5", timeout=30)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert len(body["items"]) == 5 and not body["cold_start"]
    assert all(item["item_id"].startswith("N") for item in body["items"])


def test_impression_log_end_to_end(tmp_path: Path) -> None:
    home, env = _home(tmp_path, "global_time")
    mind = write_mind(tmp_path / "mind")
    _run(home, env, "ingest", "mind", str(mind))
    report = _job(home, env, tmp_path / "report")
    lists = report["impressions"]
    # held out: the lists of the log's last day (split.test_days = 1), all with a click
    times = [when for _, _, when, _, _ in impression_lines()]
    assert lists["lists"] == sum(t >= max(times) - timedelta(days=1) for t in times)
    ranked = lists["systems"]
    assert {"popularity", "tfidf", "text_only", "ranker_no_text", "ranker"} == set(ranked)
    assert all(m["impressions"] > 0 for m in ranked.values())
    # users click their topic and the items' words name it: TF-IDF is far above chance
    assert ranked["tfidf"]["auc"] > 0.7
    assert "Per-impression metrics" in (tmp_path / "report" / "report.md").read_text()
    _serve_one(home, env, "U3")


def test_purchase_log_end_to_end(tmp_path: Path) -> None:
    home, env = _home(tmp_path, "user_time")
    items, events = write_event_log(tmp_path / "log", "purchase")
    _run(home, env, "ingest", "items", str(items))
    out = _run(home, env, "ingest", "events", str(events))
    assert "quarantined 0" in out
    report = _job(home, env, tmp_path / "report")
    assert "impressions" not in report  # no served lists: full ranking only
    assert "task events" in report["task"]
    _serve_one(home, env, "V2")
