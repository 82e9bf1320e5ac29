"""The text model on the real MovieLens data: ingest with the real adapter, fine-tune the real
MiniLM for a few steps, register, reload and reproduce the validation metric; batch-score the
whole real catalog with a tiny BERT that uses MiniLM's real vocabulary (to stay fast)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from feature_store.adapters.movielens import ingest_movielens
from recsys.algorithms.text_index import TextIndex
from recsys.core import rules
from tests.tiny_bert import write_tiny_bert
from training import registry
from training.text import model as tm
from training.text.evaluate import build_eval_set, evaluate_encoder
from training.text.scoring import score_store
from training.text.texts import item_texts, user_texts
from training.text.train import train_text_model

pytestmark = pytest.mark.integration


@pytest.fixture
def movielens(store, real_data_dir):
    ingest_movielens(store, real_data_dir, progress=False)
    return store


def test_real_minilm_trains_registers_and_reproduces(movielens, settings) -> None:
    settings = settings.replace(
        **{
            "device": "cpu",
            "text.model": "pairs",  # the per-pair model (a real-catalog tower run is minutes)
            "text.epochs": 1,
            "text.batch_size": 16,
            "text.eval_users": 12,
            "text.eval_item_pool": 60,
            "text.eval_negatives": 20,
            "text.max_user_tokens": 64,
            "text.max_item_tokens": 32,
        }
    )
    # 32 pairs do not make a model that beats TF-IDF: forced past the promotion gate
    result = train_text_model(settings, movielens, max_pairs=32, progress=False, force=True)
    m = result.metrics
    assert m["val_users"] == 12 and 0.0 < m["val_auc"] < 1.0 and 0.0 < m["tfidf_val_auc"] < 1.0
    assert result.promoted
    ref, local = registry.download(settings, rules.TEXT_MODEL_NAME)
    assert ref.version == result.model_version
    encoder = tm.load_encoder(local, tm.resolve_device("cpu"))
    again = evaluate_encoder(
        encoder,
        build_eval_set(movielens, settings),
        item_texts(movielens),
        tm.read_meta(local, settings),
    )
    assert again["val_auc"] == pytest.approx(m["val_auc"], abs=1e-5)


def test_real_catalog_texts_and_scoring(movielens, settings, tmp_path: Path) -> None:
    texts = item_texts(movielens)
    assert len(texts) == 9742 and all(t.strip() for t in texts.values())
    assert texts["1"].startswith("Toy Story (1995) Genres: Adventure")
    users = user_texts(movielens, None, "events")
    (engaged,) = movielens.execute(
        "SELECT count(DISTINCT user_id) FROM events WHERE value >= 4 OR event_type = 'tag'"
    ).fetchone()
    assert len(users) == engaged and all("Liked:" in t or "My tags:" in t for t in users.values())

    vocab = (tm.default_base_model_dir() / "vocab.txt").read_text(encoding="utf-8").splitlines()
    model_dir = write_tiny_bert(tmp_path / "tiny", vocab, hidden=16)
    summary = score_store(
        settings.replace(device="cpu"),
        movielens,
        model_dir,
        "1",
        ("train_v1",),
        batch_size=512,
        progress=False,
    )
    (train_users,) = movielens.execute(
        "SELECT count(DISTINCT user_id) FROM events_train_v1 WHERE value >= 4 OR event_type = 'tag'"
    ).fetchone()
    assert summary.items == 9742 and summary.users["train_v1"] == train_users
    assert summary.scores["train_v1"] == train_users * settings.ranker.num_candidates
    leaked = movielens.execute(
        "SELECT count(*) FROM text_scores JOIN events_train_v1 e USING (user_id, item_id)"
    ).fetchone()
    assert leaked == (0,)
    index = TextIndex.load(movielens, "1", scope="train_v1")
    assert index.dim == 16 and len(index.item_ids) == 9742
    np.testing.assert_allclose(np.linalg.norm(index.item_matrix, axis=1), 1.0, rtol=1e-4)
