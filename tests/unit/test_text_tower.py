"""The history-tower text model on tiny data with a tiny BERT: known answers for the towers and
the loss, the plan, and the run end to end (MLflow, registration, scoring, int8 vs fp32)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch

from feature_store.embeddings import read_embeddings
from recsys.core.config import Settings
from recsys.core.errors import TrainingError
from tests.factories import load_into_store, make_catalog, make_events
from tests.tiny_bert import vocab_from_texts, write_tiny_bert
from training import registry
from training.text import model as tm
from training.text import tower as tw
from training.text.item_vectors import load_item_vectors
from training.text.scoring import (
    encode_catalog,
    load_scoring_encoder,
    score_store,
    score_users,
)
from training.text.texts import item_summaries, item_texts
from training.text.tower_run import padded_tokens
from training.text.tower_train import (
    MIN_BUDGET_STEPS,
    HeadScale,
    LowerCache,
    TowerConfig,
    TowerExamples,
    TowerPlan,
    fit_towers,
    pad_histories,
    tower_loss,
)
from training.text.train import train_text_model


@pytest.fixture
def tiny_store(store: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    load_into_store(store, make_catalog(30), make_events(12, 30, 15))
    return store


@pytest.fixture
def tiny_settings(
    settings: Settings, tiny_store: duckdb.DuckDBPyConnection, tmp_path: Path
) -> Settings:
    texts = [*item_texts(tiny_store).values(), *item_summaries(tiny_store).short.values()]
    model_dir = write_tiny_bert(tmp_path / "tiny-bert", vocab_from_texts(texts))
    return settings.replace(
        **{
            "device": "cpu",
            "text.base_model": str(model_dir),
            "text.tower_epochs": 2,
            "text.tower_batch_size": 16,
            "text.bert_items_per_step": 4,
            "text.eval_negatives": 10,
            "text.score_batch_size": 8,
            "ranker.num_candidates": 5,
        }
    )


def _tiny_bert_layers(tmp_path: Path) -> tm.TwoTowerEncoder:
    path = write_tiny_bert(tmp_path / "bert", vocab_from_texts(["alpha beta gamma delta"]))
    return tm.load_encoder(path, torch.device("cpu"))


def test_cache_plus_top_layer_equals_the_full_encoder(tmp_path: Path) -> None:
    encoder = _tiny_bert_layers(tmp_path).eval()
    texts = ["alpha beta", "gamma delta alpha beta gamma", "delta"]
    batch = encoder.tokenizer(
        texts, max_length=8, truncation=True, padding="max_length", return_tensors="pt"
    )
    ids, mask = batch["input_ids"], batch["attention_mask"]
    cache = tw.build_lower_cache(encoder.backbone, ids, mask, n_lower=1)
    tower = tw.ItemTower(list(encoder.backbone.encoder.layer)[1:], encoder.dim).eval()
    hidden, m = cache.batch([0, 1, 2])
    with torch.inference_mode():
        ours = tower(hidden, m).numpy()
    full = encoder.encode(texts, 8)  # identity projection: the plain mean-pooled encoder
    np.testing.assert_allclose(ours, full, atol=2e-3)
    # the saved-model path (whole backbone + projection) gives the same vectors
    again = tw.encode_items(encoder.backbone, tower.proj, ids, mask)
    np.testing.assert_allclose(again, full, atol=1e-4)


def test_user_tower_learns_to_rank_the_item_matching_the_history_first() -> None:
    # 8 items in 2 clusters of 4; users who liked cluster-A items go on to like item 0,
    # cluster-B histories lead to item 4.  After a few steps item 0 ranks first for an A history.
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    dim = 8
    centers = np.eye(dim, dtype=np.float32)[:2] * 3
    pooled = np.stack([centers[k // 4] + rng.normal(0, 0.3, dim) for k in range(8)])
    hidden = torch.from_numpy(pooled[:, None, :].repeat(2, 1)).half()
    cache = LowerCache(hidden, torch.ones((8, 2), dtype=torch.int64))
    item_tower, user_tower = tw.ItemTower([], dim), tw.UserTower(dim)
    hist = [[1, 2, 3], [5, 6, 7]] * 40
    targets = [0, 4] * 40
    ex = TowerExamples(
        tw_pad(hist), np.array(targets), np.ones(len(targets), np.float32), {"positive": 80}
    )
    cfg = TowerConfig(
        epochs=15,
        batch_size=16,
        bert_items=0,
        lr=0.05,
        bert_lr=0.0,
        weight_decay=0.0,
        temperature=0.1,
        label_weight=0.0,
        seed=0,
    )

    def validate(table: np.ndarray, users: tw.UserTower) -> dict[str, float]:
        vec = tw.user_vectors(users, table, [[1, 2, 3]], 3)[0]
        return {"val_ndcg@10": float(np.argmax(table @ vec) == 0)}

    history, _, _ = fit_towers(item_tower, user_tower, cache, ex, cfg, validate=validate)
    assert history[-1]["val_ndcg@10"] == 1.0
    table = item_tower.project(tw.mean_pool(hidden.float(), cache.mask)).detach().numpy()
    scores = table @ tw.user_vectors(user_tower, table, [[1, 2, 3], [5, 6, 7]], 3).T
    assert int(np.argmax(scores[:, 0])) == 0 and int(np.argmax(scores[:, 1])) == 4


def tw_pad(hist: list[list[int]]) -> np.ndarray:
    return pad_histories(hist, 3)


def test_examples_cap_keeps_order_and_needs_a_positive() -> None:
    ex = TowerExamples(
        tw_pad([[0], [1], [2], [3]]),
        np.array([5, 6, 7, 8]),
        np.array([1, 0, 1, 0], np.float32),
        {"positive": 2, "low_rating": 2},
    )
    small = ex.subset(np.array([2, 1]))
    assert small.target.tolist() == [6, 7] and small.kinds == {"positive": 1, "negative": 1}
    with pytest.raises(TrainingError, match="raise --max-pairs"):
        ex.subset(np.array([1, 3]))


def test_loss_known_answer() -> None:
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    catalog = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    head = HeadScale(1.0)
    loss = tower_loss(users, catalog, np.array([0, 2]), torch.tensor([1.0, 0.0]), head, 1.0, 0.0)
    # only row 0 is a positive: softmax of logits [1, 0, -1] at index 0
    expected = -np.log(np.exp(1) / (np.exp(1) + 1 + np.exp(-1)))
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)


def test_train_plan_score_int8_matches_fp32(tiny_store, tiny_settings) -> None:
    plans: list = []
    tower = replace(tiny_settings, text=replace(tiny_settings.text, model="tower"))
    result = train_text_model(tower, tiny_store, progress=False, on_plan=plans.append, force=True)
    assert len(plans) == 1 and plans[0].examples > 0 and plans[0].estimate_seconds > 0
    assert "top 1 of 2 BERT layers" in plans[0].describe()
    m = result.metrics
    for key in ("val_auc", "val_ndcg@10", "zeroshot_val_auc", "tfidf_val_ndcg@10"):
        assert 0.0 <= m[key] <= 1.0
    assert result.promoted and (result.model_dir / "towers.safetensors").is_file()
    base = tm.load_encoder(Path(tiny_settings.text.base_model), torch.device("cpu"))
    saved = tm.load_encoder(result.model_dir, torch.device("cpu"))
    # the top layer was fine-tuned, the lower one was not
    top_base = base.backbone.encoder.layer[1].output.dense.weight
    top_saved = saved.backbone.encoder.layer[1].output.dense.weight
    assert not torch.allclose(top_base, top_saved)
    assert torch.equal(
        base.backbone.encoder.layer[0].output.dense.weight,
        saved.backbone.encoder.layer[0].output.dense.weight,
    )
    ref, local = registry.download(tiny_settings, registry.TEXT_MODEL_NAME)
    summary = score_store(tiny_settings, tiny_store, local, ref.version, progress=False)
    assert summary.items == 30 and summary.users["train_v1"] > 0
    encoder = load_scoring_encoder(local, torch.device("cpu"))
    meta = tm.read_meta(local, tiny_settings)
    texts = list(item_texts(tiny_store).values())
    fp32 = encode_catalog(encoder, meta, texts, 8, False, quantize=False)
    int8 = encode_catalog(encoder, meta, texts, 8, False, quantize=True)
    assert np.abs((fp32 * int8).sum(1) - 1.0).max() < 0.05
    # scoring reused the vectors saved at training (the kept epoch's table) for every item
    ids = sorted(item_texts(tiny_store))
    item_text = item_texts(tiny_store)
    saved_vectors = load_item_vectors(local, ids, [item_text[i] for i in ids])
    assert saved_vectors is not None and saved_vectors[1].all()
    stored = read_embeddings(tiny_store, ref.version, "train_v1", users=False)
    assert list(stored.item_ids) == ids
    assert np.allclose(stored.item_matrix, saved_vectors[0], atol=1e-6)
    # the fp32 encoder agrees with them (training cached the lower layers through int8)
    fp32_sorted = encode_catalog(encoder, meta, [item_text[i] for i in ids], 8, False, False)
    assert np.abs((fp32_sorted * saved_vectors[0]).sum(1) - 1.0).max() < 0.05

    # chunked scoring (5 users at a time) writes the rows of one pass, replacing them
    def written() -> list[tuple]:
        return tiny_store.execute(
            "SELECT user_id, item_id, score FROM text_scores WHERE scope = 'train_v1' "
            "ORDER BY user_id, item_id"
        ).fetchall()

    one_pass = written()
    n_users, n_scores = score_users(
        tiny_store,
        tiny_settings,
        encoder,
        meta,
        ref.version,
        "train_v1",
        ids,
        stored.item_matrix,
        chunk_users=5,
    )
    chunked = written()
    assert (n_users, n_scores) == (summary.users["train_v1"], summary.scores["train_v1"])

    # per user the same top-N scores (an item may swap with one tied within float error)
    def by_user(rows: list[tuple]) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for user, _, score in rows:
            out.setdefault(user, []).append(score)
        return {u: sorted(v) for u, v in out.items()}

    assert by_user(chunked).keys() == by_user(one_pass).keys()
    for user, scores in by_user(chunked).items():
        np.testing.assert_allclose(scores, by_user(one_pass)[user], atol=1e-5)
    assert len({r[:2] for r in chunked} ^ {r[:2] for r in one_pass}) <= 4
    # an item whose text changed is not reused
    changed = load_item_vectors(local, ids, ["new text"] + [item_text[i] for i in ids[1:]])
    assert changed is not None and not changed[1][0] and changed[1][1:].all()


def _plan(**kw: float) -> TowerPlan:
    base = dict(
        examples=1000,
        items=100,
        epochs=6,
        steps_per_epoch=10,
        batch_size=100,
        top_layers=1,
        total_layers=6,
        device="cpu",
        cache_seconds=30.0,
        step_seconds=2.0,
        table_seconds=10.0,
    )
    return TowerPlan(**{**base, **kw})  # type: ignore[arg-type]


def test_plan_fits_epochs_to_the_budget() -> None:
    plan = _plan()  # fixed 40 s (cache + first table), 30 s per epoch (10 x 2 s + 10 s table)
    assert (plan.fixed_seconds, plan.epoch_seconds, plan.estimate_seconds) == (40.0, 30.0, 220.0)
    fitted = plan.fit_budget(200.0, max_epochs=8)
    assert fitted.epochs == 5 and fitted.estimate_seconds == 190.0 <= 200.0
    assert "auto: the most that fit the 200 s budget, at most 8" in fitted.describe()
    assert plan.fit_budget(10_000.0, max_epochs=8).epochs == 8  # capped
    assert plan.fit_budget(50.0, max_epochs=8).epochs == 1  # never zero, even over budget
    assert "auto" not in plan.describe() and "busy" not in plan.describe()
    # epochs follow the idle-machine cost; a busy machine only lengthens the printed estimate
    busy = _plan(slowdown=3.0)
    assert busy.fit_budget(200.0, max_epochs=8).epochs == 5
    assert "busy (3.0x slower while planning): expect about 660 s" in busy.describe()


def test_plan_samples_examples_when_one_epoch_does_not_fit() -> None:
    # 10,000 steps of 2 s do not fit 500 s: one epoch over a sample, (500 - 40 - 10) / 2 steps
    big = _plan(examples=1_000_000, steps_per_epoch=10_000)
    fitted = big.fit_budget(500.0, max_epochs=8)
    assert (fitted.epochs, fitted.steps_per_epoch) == (1, 225)
    assert (fitted.examples, fitted.sampled_from) == (22_500, 1_000_000)
    assert fitted.estimate_seconds == 500.0
    assert "a seeded sample of 1,000,000 examples" in fitted.describe()
    # never fewer than MIN_BUDGET_STEPS steps, even when the cache alone is over budget
    floor = big.fit_budget(30.0, max_epochs=8)
    assert (floor.steps_per_epoch, floor.examples) == (MIN_BUDGET_STEPS, MIN_BUDGET_STEPS * 100)
    # a log whose epoch fits is never sampled
    assert _plan().fit_budget(50.0, max_epochs=8).sampled_from == 0


def test_auto_epochs_follow_the_budget(tiny_store, tiny_settings) -> None:
    plans: list = []
    auto = tiny_settings.replace(
        **{"text.tower_epochs": 0, "text.time_budget_seconds": 1e6, "text.max_auto_epochs": 3}
    )
    result = train_text_model(auto, tiny_store, progress=False, on_plan=plans.append, force=True)
    assert plans[0].epochs == 3 and plans[0].budget_seconds == 1e6
    assert len(result.history) == 3  # the run trained the planned epochs


def test_padded_tokens_counts_what_the_cache_computes() -> None:
    # lengths 3, 1, 2 sorted longest first; batches of 2: [3, 2] padded to 3, [1] -> 6 + 1
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]])
    assert padded_tokens(mask, batch_size=2) == 7
    assert padded_tokens(mask, batch_size=3) == 9
