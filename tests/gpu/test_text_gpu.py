"""The text model on CUDA: bf16 autocast training and embedding (skipped without a GPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.factories import load_into_store, make_catalog, make_events
from tests.tiny_bert import vocab_from_texts, write_tiny_bert
from training import registry
from training.text import model as tm
from training.text.scoring import score_store
from training.text.texts import item_summaries, item_texts
from training.text.train import train_text_model

pytestmark = pytest.mark.gpu


def test_training_and_embedding_on_cuda(store, settings, tmp_path: Path) -> None:
    load_into_store(store, make_catalog(30), make_events(12, 30, 15))
    texts = [
        *item_texts(store).values(),
        *item_summaries(store).with_overview.values(),
        "My tags: Liked: Genres: Keywords: Tags: Director:",
    ]
    model_dir = write_tiny_bert(tmp_path / "tiny", vocab_from_texts(texts))
    cuda = settings.replace(
        **{
            "device": "cuda",
            "text.base_model": str(model_dir),
            "text.epochs": 1,
            "text.batch_size": 16,
        }
    )
    result = train_text_model(cuda, store, progress=False)
    assert 0.0 <= result.metrics["val_auc"] <= 1.0
    encoder = tm.load_encoder(result.model_dir, tm.resolve_device("cuda"))
    assert encoder.device.type == "cuda"
    vecs = encoder.encode(list(item_texts(store).values()), 64, batch_size=8)
    assert vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-3)


def test_history_tower_fine_tunes_every_layer_and_scores_on_cuda(
    store, settings, tmp_path: Path
) -> None:
    load_into_store(store, make_catalog(30), make_events(12, 30, 15))
    texts = [*item_texts(store).values(), *item_summaries(store).short.values()]
    model_dir = write_tiny_bert(tmp_path / "tiny", vocab_from_texts(texts))
    cuda = settings.replace(
        **{
            "device": "cuda",
            "text.model": "tower",
            "text.base_model": str(model_dir),
            "text.tower_batch_size": 16,
            "ranker.num_candidates": 5,
        }
    )
    plans: list = []
    # forced past the promotion gate (a tiny BERT is not expected to beat TF-IDF)
    result = train_text_model(cuda, store, progress=False, on_plan=plans.append, force=True)
    assert plans[0].top_layers == plans[0].total_layers  # end to end on CUDA
    base = tm.load_encoder(model_dir, tm.resolve_device("cpu"))
    tuned = tm.load_encoder(result.model_dir, tm.resolve_device("cpu"))
    first = "encoder.layer.0.output.dense.weight"
    assert not np.allclose(
        base.backbone.state_dict()[first].numpy(), tuned.backbone.state_dict()[first].numpy()
    )
    ref, local = registry.download(cuda, registry.TEXT_MODEL_NAME)
    summary = score_store(cuda, store, local, ref.version, progress=False)
    assert summary.items == 30 and summary.users["train_v1"] > 0
