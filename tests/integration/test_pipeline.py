"""End to end on tiny data: train the ranker (MLflow), evaluate protocol v1, serve it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import duckdb
import mlflow
import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from feature_store.db import connect
from feature_store.splits import materialize_protocol_split
from recsys.algorithms.ranking import assemble
from recsys.cli import main
from recsys.core import rules
from recsys.core.config import Settings
from recsys.core.errors import ModelNotReadyError
from recsys.pipeline import explain
from recsys.pipeline.loader import load_recommender
from recsys.pipeline.recommender import Recommendation, RecommendationResult
from tests.factories import GENRES, load_into_store, make_catalog, make_events
from tests.unit.test_ranker import N_ITEMS, small_settings
from training import registry
from training.ranker import state as serving_state
from training.ranker.run import train_and_log

pytestmark = pytest.mark.integration


def _write_text_model(settings: Settings, con: duckdb.DuckDBPyConnection) -> str:
    """A registered text-scorer champion whose embeddings are one-hot genres (user: liked genre)."""
    with registry.start_run(settings, "fake-text") as run:
        mlflow.log_text("genre one-hot vectors for tests", "model/README.txt")
    ref = registry.register(settings, rules.TEXT_MODEL_NAME, run.info.run_id, "model")
    registry.promote(settings, ref.name, ref.version)
    onehot = lambda g: [1.0 if k == g else 0.0 for k in range(len(GENRES))]  # noqa: E731
    con.executemany(
        "INSERT INTO item_embeddings VALUES (?, ?, ?)",
        [(f"i{k}", ref.version, onehot(k % len(GENRES))) for k in range(N_ITEMS)],
    )
    users = [r[0] for r in con.execute("SELECT DISTINCT user_id FROM events").fetchall()]
    con.executemany(
        "INSERT INTO user_embeddings VALUES (?, ?, ?, NULL, ?)",
        [
            (u, ref.version, scope, onehot(int(u[1:]) % len(GENRES)))
            for u in users
            for scope in ("fit_v1", "train_v1", "live")
        ],
    )
    return ref.version


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Settings, duckdb.DuckDBPyConnection, dict]:
    settings = small_settings(tmp_path_factory.mktemp("pipe") / "home")
    con = connect(settings.db_path)
    load_into_store(
        con, make_catalog(N_ITEMS), make_events(n_users=30, n_items=N_ITEMS, events_per_user=24)
    )
    materialize_protocol_split(con)
    version = _write_text_model(settings, con)
    # forced: these tests exercise a ranker with text features, whether or not the genre
    # vectors beat the no-text ablation on 30 users (tests/unit/test_promotion.py: the gates)
    summary = train_and_log(settings, con, force=True)
    assert summary["text_model_version"] == version and summary["candidate"] == "with_text"
    return settings, con, summary


def test_training_registers_and_promotes_with_artifacts(trained: tuple) -> None:
    settings, _, summary = trained
    assert summary["promoted"]
    ref = registry.champion(settings, rules.RANKER_MODEL_NAME)
    assert ref is not None and ref.version == summary["version"]
    run = registry.client(settings).get_run(ref.run_id)
    assert {"val_ndcg_at_10", "no_text_val_ndcg_at_10", "val_candidate_recall_at_20"} <= set(
        run.data.metrics
    )
    arts = {a.path for a in registry.client(settings).list_artifacts(ref.run_id, "importance")}
    assert "importance/ranker_importance.png" in arts and "importance/ranker_importance.csv" in arts
    _, path = registry.download(settings, rules.RANKER_MODEL_NAME)
    assert (Path(path) / "ranker.txt").is_file() and (
        Path(path) / "no_text" / "ranker.txt"
    ).is_file()
    # the generators' serving state is published beside the ranker, complete and loadable
    arrays, manifest = serving_state.load_state(Path(path) / serving_state.STATE_DIR)
    assert {"als/item_factors", "item_knn/similarity/data", "covisit/matrix/data"} <= set(arrays)
    assert manifest["meta"]["events"] == "events" and manifest["meta"]["n_users"] == 30


def test_recommender_known_user_explained(trained: tuple) -> None:
    settings, con, summary = trained
    rec = load_recommender(settings, con)
    assert rec.model_versions == {
        "ranker": summary["version"],
        "text-scorer": summary["text_model_version"],
    }
    assert rec.known_user("u1") and not rec.known_user("ghost")
    result = rec.recommend("u1", 5, explain=True, con=con.cursor())
    assert isinstance(result, RecommendationResult) and not result.cold_start
    assert [r.rank for r in result.items] == [1, 2, 3, 4, 5]
    assert all(isinstance(r, Recommendation) and r.title for r in result.items)
    assert all(r.contributions is not None and len(r.contributions) == 5 for r in result.items)
    scores = [r.score for r in result.items]
    assert scores == sorted(scores, reverse=True)
    seen = set(con.execute("SELECT item_id FROM events WHERE user_id = 'u1'").pl()["item_id"])
    assert not seen & {r.item_id for r in result.items}
    comedy = rec.recommend("u1", 3, genre="Comedy", con=con.cursor())
    assert all("Comedy" in r.title for r in comedy.items)
    # readable reasons beside the raw contributions; the 0-1 score follows the raw one
    # every item that some signal lifted says why (an item whose shown contributions all
    # lowered its score -- it ranks here only because the rest scored lower -- may say nothing)
    lifted = [
        r
        for r in result.items
        if any(v > 0 and explain.feature_kind(k) for k, v in (r.contributions or {}).items())
    ]
    assert lifted and lifted[0] is result.items[0]
    assert all(r.reasons and all(isinstance(x, str) for x in r.reasons) for r in lifted)
    text_reasons = [x for r in result.items for x in r.reasons if "text score" in x]
    pattern = re.compile(r"matches your interest in [A-Za-z, -]+: text score -?[01]\.\d\d")
    assert all(pattern.fullmatch(x) for x in text_reasons), text_reasons
    liked = [x for r in result.items for x in r.reasons if x.startswith("because you liked *")]
    titles = set(con.execute("SELECT title FROM items").pl()["title"])
    assert all(x.removeprefix("because you liked *").rstrip("*") in titles for x in liked)
    units = [r.unit_score for r in result.items]
    assert all(u is not None and 0 < u < 1 for u in units) and units == sorted(units, reverse=True)
    assert rec.genres() == sorted(GENRES)


def test_recommender_cold_start_and_rank(trained: tuple) -> None:
    settings, con, _ = trained
    rec = load_recommender(settings, con)
    cold = rec.recommend(None, 4, history=["i0", "i6"])  # two Action items
    assert cold.cold_start and len(cold.items) == 4
    assert "i0" not in {r.item_id for r in cold.items}
    ranked = rec.rank(["i1", "i2", "nope", "i3"], 2, user_id="u1", explain=True, con=con.cursor())
    assert ranked.unknown_items == ("nope",)
    assert len(ranked.items) == 2 and {r.item_id for r in ranked.items} <= {"i1", "i2", "i3"}
    anonymous = rec.rank(["i1", "i2"], 5, history=["i0"], con=con.cursor())
    assert anonymous.cold_start and len(anonymous.items) == 2


def test_no_champion_says_what_to_run(
    settings: Settings, store: duckdb.DuckDBPyConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ModelNotReadyError, match="recsys train ranker"):
        load_recommender(settings, store)


def _as_tuples(result: RecommendationResult) -> list[tuple[str, float]]:
    return [(r.item_id, r.score) for r in result.items]


def test_precomputed_requests_equal_the_computed_ones(trained: tuple) -> None:
    """The load-time per-user candidates and vectors give exactly the per-request values."""
    settings, con, _ = trained
    fast = load_recommender(settings, con)
    slow = load_recommender(settings, con, precompute=False)
    assert fast.precomputed and not slow.precomputed
    users = [str(u) for u in fast.data.user_ids]
    items = [str(i) for i in fast.data.item_ids]
    for user in users:
        cands = fast.candidates(user)
        expected = slow.blender.frame([user], as_of=[slow.clock])
        assert cands.equals(expected)
        got, want = fast.user_vector(user), slow.user_vector(user)
        assert (got is None and want is None) or np.array_equal(got, want)
        assert _as_tuples(fast.recommend(user, 10)) == _as_tuples(slow.recommend(user, 10))
        assert _as_tuples(fast.recommend(user, 5, exclude_seen=False)) == _as_tuples(
            slow.recommend(user, 5, exclude_seen=False)
        )
        some = items[int(user[1:]) % 7 :: 3]
        assert _as_tuples(fast.rank(some, 8, user_id=user)) == _as_tuples(
            slow.rank(some, 8, user_id=user)
        )
    # the request's feature rows are those training's assemble builds for the same candidates
    user = users[0]
    cands = fast.candidates(user).with_columns(
        pl.lit(fast.clock).cast(pl.Datetime("us")).alias("as_of")
    )
    kwargs = {
        "events": "events",
        "text": fast.text,
        "covisit_window_days": settings.ranker.covisit_window_days,
    }
    served = assemble(
        con.cursor(),
        cands,
        vectors={user: fast.user_vector(user)},
        snapshot=fast.snapshot,
        **kwargs,
    )
    assert served.equals(assemble(con.cursor(), cands, **kwargs))
    # text scores: the one-user shortcut gives what the per-user group_by gives in a batch
    both = pl.concat([fast.candidates(u) for u in users[:3]])
    batch = fast.text.scores(both)
    singles = np.concatenate([fast.text.scores(fast.candidates(u)) for u in users[:3]])
    assert np.array_equal(batch, singles, equal_nan=True) and np.isfinite(batch).any()


def test_two_loads_give_identical_results(trained: tuple) -> None:
    settings, con, _ = trained
    first, second = load_recommender(settings, con), load_recommender(settings, con)
    for user in [str(u) for u in first.data.user_ids]:
        assert first.candidates(user).equals(second.candidates(user))
        assert _as_tuples(first.recommend(user, 10)) == _as_tuples(second.recommend(user, 10))


def test_model_artifacts_are_cached_per_version(trained: tuple) -> None:
    settings, con, summary = trained
    load_recommender(settings, con, precompute=False)
    cache = settings.home / "serving" / "models" / rules.RANKER_MODEL_NAME
    version_dir = cache / summary["version"]
    assert (version_dir / "ranker.txt").is_file()
    stamp = (version_dir / "ranker.txt").stat().st_mtime_ns
    load_recommender(settings, con, precompute=False)
    assert [p.name for p in cache.iterdir()] == [summary["version"]]  # no leftover downloads
    assert (version_dir / "ranker.txt").stat().st_mtime_ns == stamp  # reused, not re-downloaded


def test_evaluate_cli_writes_report(trained: tuple, tmp_path: Path) -> None:
    settings, con, _ = trained
    con.execute("CHECKPOINT")
    con.close()  # the CLI opens the store itself
    out = tmp_path / "report"
    result = CliRunner().invoke(
        main,
        [
            "--home",
            str(settings.home),
            "evaluate",
            "--output",
            str(out),
            "--systems",
            "popularity,item_knn,als,text_only,ranker_no_text,ranker",
        ],
        env={"RECSYS_RANKER__NUM_CANDIDATES": "20", "RECSYS_RANKER__MIN_DATA_IN_LEAF": "2"},
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["protocol"].endswith(
        "per-user time split (each user's last 20% of events are test) = protocol v1"
    )
    assert report["task_preset"] == "ratings"
    assert set(report["systems"]) == {
        "popularity",
        "item_knn",
        "als",
        "text_only",
        "ranker_no_text",
        "ranker",
    }
    for m in report["systems"].values():
        assert {
            "ndcg@10",
            "recall@10",
            "recall@50",
            "mrr@10",
            "coverage@10",
            "cold_ndcg@10",
            "users",
        } <= set(m)
        assert 0.0 <= m["ndcg@10"] <= 1.0 and m["users"] == report["systems"]["popularity"]["users"]
    assert 0.0 < report["val_candidate_recall@20"] <= 1.0
    assert 0.0 < report["candidate_recall@20"] <= 1.0
    md = (out / "report.md").read_text()
    assert md.startswith("# Offline evaluation") and "store fingerprint" in md
    assert report["data_fingerprint"] and report["date"].endswith("UTC")
    models = {(m["name"], m["alias"]): m["version"] for m in report["models"]}
    assert models[("ranker", "champion")] == registry.champion(settings, "ranker").version
    effect = report["text_effect"]["slices"]["overall"]
    assert effect["low"] <= effect["mean"] <= effect["high"] and effect["users"] > 0
    assert "Does text help? ranker - ranker_no_text" in md
    assert (out / "cold_slice.png").stat().st_size > 0
    assert (out / "metrics_by_system.png").stat().st_size > 0 and (
        out / "ndcg_by_history.png"
    ).is_file()
