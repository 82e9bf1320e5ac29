"""The text model pipeline end to end on tiny data with a tiny BERT (no downloads): train, log to
MLflow, register, promote, load back, reproduce the validation metric, batch-score, refresh."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from recsys.algorithms.text_index import TextIndex
from recsys.cli import main
from recsys.core import rules
from recsys.core.config import Settings
from recsys.core.errors import ConfigError, NotFoundError
from tests.factories import load_into_store, make_catalog, make_events
from tests.tiny_bert import vocab_from_texts, write_tiny_bert
from training import registry
from training.text import model as tm
from training.text.evaluate import build_eval_set, evaluate_encoder
from training.text.scoring import refresh_user_embeddings, score_store
from training.text.texts import item_summaries, item_texts
from training.text.train import train_text_model


@pytest.fixture
def tiny_store(store: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    load_into_store(store, make_catalog(30), make_events(12, 30, 15))
    return store


@pytest.fixture
def tiny_settings(
    settings: Settings, tiny_store: duckdb.DuckDBPyConnection, tmp_path: Path
) -> Settings:
    summaries = item_summaries(tiny_store)
    texts = [
        *item_texts(tiny_store).values(),
        *summaries.with_overview.values(),
        "My tags: Liked: Genres: Keywords: Tags: Director:",
    ]
    model_dir = write_tiny_bert(tmp_path / "tiny-bert", vocab_from_texts(texts))
    return settings.replace(
        **{
            "device": "cpu",
            "text.model": "pairs",  # the per-pair model; the history tower: test_text_tower.py
            "text.base_model": str(model_dir),
            "text.epochs": 2,
            "text.batch_size": 16,
            "text.learning_rate": 1e-3,
            "text.eval_negatives": 10,
            "text.score_batch_size": 32,
            "ranker.num_candidates": 5,
        }
    )


def test_train_register_reload_reproduces_val_metric(tiny_store, tiny_settings) -> None:
    # a tiny BERT after 2 epochs does not beat TF-IDF on genre-worded texts: the gate refuses
    # it (tests/unit/test_promotion.py), so the pipeline under test is forced through
    result = train_text_model(tiny_settings, tiny_store, progress=False, force=True)
    assert result.promotion_reason.startswith("forced with --force")
    m = result.metrics
    for key in ("val_auc", "val_ndcg@10", "zeroshot_val_auc", "tfidf_val_auc", "tfidf_val_ndcg@10"):
        assert 0.0 <= m[key] <= 1.0
    assert result.promoted and result.model_version == "1"
    assert len(result.history) in (1, 2) and result.history[0]["train_loss"] > 0
    assert (result.model_dir / "model.safetensors").is_file()
    assert not list(result.model_dir.glob("*.bin"))

    run = registry.client(tiny_settings).get_run(result.run_id)
    assert run.data.params["text.epochs"] == "2" and "data_fingerprint" in run.data.params
    assert run.data.metrics["val_ndcg_at_10"] == pytest.approx(m["val_ndcg@10"])
    ref, local = registry.download(tiny_settings, rules.TEXT_MODEL_NAME)
    assert ref.version == "1" and (local / "tokenizer_config.json").is_file()
    # The registered model, loaded back, reproduces its logged validation AUC.
    encoder = tm.load_encoder(local, tm.resolve_device("cpu"))
    eval_set = build_eval_set(tiny_store, tiny_settings)
    again = evaluate_encoder(
        encoder, eval_set, item_texts(tiny_store), tm.read_meta(local, tiny_settings)
    )
    assert again["val_auc"] == pytest.approx(run.data.metrics["val_auc"], abs=1e-5)

    second = train_text_model(tiny_settings, tiny_store, progress=False, promote=False)
    assert second.model_version == "2" and not second.promoted
    assert registry.champion(tiny_settings, rules.TEXT_MODEL_NAME).version == "1"


def test_score_writes_all_scopes_and_refresh_updates_one_user(tiny_store, tiny_settings) -> None:
    model_dir = Path(tiny_settings.text.base_model)
    summary = score_store(tiny_settings, tiny_store, model_dir, "7", progress=False)
    assert summary.items == 30 and set(summary.users) == {"fit_v1", "train_v1", "live"}
    norms = np.array(
        [
            np.linalg.norm(r[0])
            for r in tiny_store.execute("SELECT embedding FROM item_embeddings").fetchall()
        ]
    )
    np.testing.assert_allclose(norms, 1.0, rtol=1e-4)
    leaked = tiny_store.execute("""
        SELECT count(*) FROM text_scores s JOIN events e USING (user_id, item_id)
        WHERE s.scope = 'live'""").fetchone()
    assert leaked == (0,)
    per_user = tiny_store.execute(
        "SELECT max(n) FROM (SELECT count(*) n FROM text_scores GROUP BY user_id, scope)"
    ).fetchone()
    assert per_user == (5,)
    index = TextIndex.load(tiny_store, scope="fit_v1")
    u0 = index.user_vector("u0")
    ids, scores = index.nearest(u0, 5)
    stored = tiny_store.execute("""SELECT item_id, score FROM text_scores
        WHERE user_id = 'u0' AND scope = 'fit_v1' ORDER BY score DESC""").fetchall()
    fit_items = {
        r[0]
        for r in tiny_store.execute(
            "SELECT item_id FROM events_fit_v1 WHERE user_id = 'u0'"
        ).fetchall()
    }
    np.testing.assert_allclose(
        [s for _, s in stored], index.nearest(u0, 5, exclude=fit_items)[1], rtol=1e-5
    )
    assert len(ids) == 5 and scores[0] >= scores[-1]

    tiny_store.execute("""INSERT INTO events VALUES ('new-1', 'u0', 'i3', 'rate', 5.0, NULL,
        TIMESTAMP '2030-01-01', NULL, NULL, 'test', 'test', NULL)""")
    before = TextIndex.load(tiny_store).user_vector("u0")
    assert refresh_user_embeddings(tiny_store, tiny_settings, model_dir, "7", ["u0"]) == 1
    after = TextIndex.load(tiny_store)
    assert not np.allclose(before, after.user_vector("u0"))
    assert len(after.user_ids) == 12  # the other users' rows are kept
    assert tiny_store.execute(
        "SELECT count(*) FROM text_scores"
        " WHERE user_id = 'u0' AND item_id = 'i3' AND scope = 'live'"
    ).fetchone() == (0,)


def test_cli_train_and_score(tiny_store, tiny_settings, monkeypatch) -> None:
    tiny_store.close()  # the CLI opens the store itself
    env = {
        "RECSYS_HOME": str(tiny_settings.home),
        "RECSYS_TEXT__BASE_MODEL": tiny_settings.text.base_model,
        "RECSYS_TEXT__MODEL": "tower",
        "RECSYS_TEXT__EVAL_NEGATIVES": "10",
        "RECSYS_RANKER__NUM_CANDIDATES": "5",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    runner = CliRunner()
    out = runner.invoke(
        main,
        [
            "--device",
            "cpu",
            "train",
            "text",
            "--max-pairs",
            "40",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--use-lora",
            "--force",
        ],
    )
    assert out.exit_code == 0, out.output
    assert "TF-IDF cosine" in out.output and "promoted to champion" in out.output
    assert "promotion: forced with --force" in out.output
    # the history tower prints its plan and a measured estimate first
    assert out.output.index("plan: ") < out.output.index("estimate: ") < out.output.index("TF-IDF")
    out = runner.invoke(main, ["--device", "cpu", "score", "--scope", "live", "--batch-size", "16"])
    assert out.exit_code == 0, out.output
    assert "wrote 30 item embeddings" in out.output and "live: 12 user embeddings" in out.output
    out = runner.invoke(main, ["score", "--model-version", "99"])
    assert out.exit_code != 0 and "has no version 99" in out.output


def test_score_without_champion(tiny_store, tiny_settings) -> None:
    """Never trained: an error that says to train.  Trained but refused by the gate: a notice
    with the gate's reason and what to do, exit 0 (the rest of the job runs without text)."""
    runner = CliRunner()
    home = ["--home", str(tiny_settings.home), "--device", "cpu"]
    env = {"RECSYS_TEXT__BASE_MODEL": tiny_settings.text.base_model}
    out = runner.invoke(main, [*home, "score"], env=env)
    assert out.exit_code != 0 and "no champion version of model 'text-scorer'" in out.output
    result = train_text_model(tiny_settings, tiny_store, progress=False, promote=False)
    assert not result.promoted
    tiny_store.close()  # the CLI opens the store itself
    out = runner.invoke(main, [*home, "score"], env=env)
    assert out.exit_code == 0, out.output
    assert out.output.startswith("nothing to score: no text-scorer version is champion; the ")
    assert f"version 1, was not promoted ({result.promotion_reason})" in out.output
    assert "`recsys models promote text-scorer 1`" in out.output
    assert "item embeddings" not in out.output


def test_bad_model_dir_and_missing_cuda_are_clear_errors(
    tiny_store, tiny_settings, tmp_path
) -> None:
    bad = tiny_settings.replace(**{"text.base_model": str(tmp_path / "nowhere")})
    with pytest.raises(NotFoundError, match="config.json"):
        train_text_model(bad, tiny_store, progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            train_text_model(tiny_settings.replace(device="cuda"), tiny_store, progress=False)
    assert tm.default_base_model_dir().joinpath("config.json").is_file()
