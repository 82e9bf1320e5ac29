"""Promotion gates (training.promotion): refuse, accept, --force, and the ranker's ablation rule."""

from __future__ import annotations

from pathlib import Path

import duckdb
import mlflow
import pytest

from feature_store.db import connect
from feature_store.splits import materialize_protocol_split
from recsys.core import rules
from recsys.core.config import Settings
from recsys.pipeline.loader import load_recommender
from tests.factories import load_into_store, make_catalog, make_events
from tests.integration.test_pipeline import _write_text_model
from tests.unit.test_ranker import N_ITEMS, small_settings
from training import promotion, registry
from training.ranker import run
from training.ranker.model import RankerModel
from training.ranker.run import choose_candidate
from training.ranker.train import FitResult

TEXT = rules.TEXT_MODEL_NAME


def _text_version(settings: Settings, ndcg: float) -> tuple[registry.ModelRef, dict[str, float]]:
    """A registered text-scorer version whose run logged val NDCG@10 = ``ndcg``."""
    metrics = {"val_ndcg@10": ndcg, "zeroshot_val_ndcg@10": 0.30, "tfidf_val_ndcg@10": 0.40}
    with registry.start_run(settings, "text") as run:
        mlflow.log_text("a text model", "model/README.txt")
        registry.log_metrics(metrics)
    return registry.register(settings, TEXT, run.info.run_id, "model"), metrics


def _tags(settings: Settings, ref: registry.ModelRef) -> dict[str, str]:
    return dict(registry.client(settings).get_run(ref.run_id).data.tags)


def test_text_gate_refuses_accepts_and_forces(settings: Settings) -> None:
    below_tfidf, m = _text_version(settings, 0.35)  # beats zero-shot (0.30), not TF-IDF (0.40)
    decision = promotion.gate_text_model(settings, below_tfidf, m)
    assert not decision.promote and decision.label == "not promoted"
    assert decision.reason == (
        "val_ndcg@10 0.3500 does not beat the TF-IDF content profile (0.4000)"
    )
    assert registry.champion(settings, TEXT) is None  # a text model is optional: none is fine
    tags = _tags(settings, below_tfidf)
    assert tags[promotion.DECISION_TAG] == "not promoted"
    assert tags[promotion.REASON_TAG] == decision.reason

    good, m = _text_version(settings, 0.50)
    decision = promotion.gate_text_model(settings, good, m)
    assert decision.promote and decision.label == "promoted"
    assert decision.reason == (
        "val_ndcg@10 0.5000 beats the zero-shot base model (0.3000), "
        "the TF-IDF content profile (0.4000)"
    )
    assert registry.champion(settings, TEXT).version == good.version

    # beats both baselines but not the champion: refused, champion kept
    weaker, m = _text_version(settings, 0.45)
    decision = promotion.gate_text_model(settings, weaker, m)
    assert not decision.promote
    assert decision.reason == (
        f"val_ndcg@10 0.4500 does not beat champion version {good.version} (0.5000)"
    )
    assert registry.champion(settings, TEXT).version == good.version

    # --force promotes and keeps what the gates said
    decision = promotion.gate_text_model(settings, weaker, m, force=True)
    assert decision.promote and decision.label == "forced"
    assert decision.reason.startswith("forced with --force (val_ndcg@10 0.4500 does not beat")
    assert registry.champion(settings, TEXT).version == weaker.version
    assert _tags(settings, weaker)[promotion.DECISION_TAG] == "forced"
    version = registry.client(settings).get_model_version(TEXT, weaker.version)
    assert version.tags[promotion.DECISION_TAG] == "forced"

    best, m = _text_version(settings, 0.9)
    decision = promotion.gate_text_model(settings, best, m, promote=False)
    assert not decision.promote and decision.reason == "registered only (--no-promote)"


def _fit(ndcg: float) -> FitResult:
    return FitResult(RankerModel.__new__(RankerModel), {"val_ndcg@10": ndcg})


def test_ranker_candidate_is_the_ablation_when_text_does_not_help() -> None:
    product, ablation = _fit(0.20), _fit(0.25)
    chosen, why = choose_candidate(product, ablation, "3")
    assert chosen is ablation
    assert "did not beat the no-text ablation on the holdout (val_ndcg@10 0.2000 vs 0.2500)" in why
    chosen, why = choose_candidate(product, ablation, "3", force=True)
    assert chosen is product and "kept with --force" in why
    chosen, why = choose_candidate(_fit(0.30), ablation, "3")
    assert chosen.metrics["val_ndcg@10"] == 0.30 and "beat the no-text ablation" in why
    chosen, why = choose_candidate(product, ablation, None)
    assert chosen is product and why.startswith("no text-scorer champion")


@pytest.fixture
def ranker_store(tmp_path: Path) -> tuple[Settings, duckdb.DuckDBPyConnection]:
    settings = small_settings(tmp_path / "home")
    con = connect(settings.db_path)
    load_into_store(
        con, make_catalog(N_ITEMS), make_events(n_users=30, n_items=N_ITEMS, events_per_user=24)
    )
    materialize_protocol_split(con)
    _write_text_model(settings, con)
    return settings, con


def test_ranker_whose_text_loses_registers_the_ablation_and_serving_still_has_a_model(
    ranker_store: tuple[Settings, duckdb.DuckDBPyConnection], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = run.train_both

    def text_loses(*args: object, **kwargs: object) -> tuple[FitResult, FitResult]:
        product, ablation = real(*args, **kwargs)  # type: ignore[arg-type]
        product.metrics["val_ndcg@10"] = ablation.metrics["val_ndcg@10"] - 0.01
        return product, ablation

    monkeypatch.setattr(run, "train_both", text_loses)
    settings, con = ranker_store
    summary = run.train_and_log(settings, con)
    assert summary["candidate"] == "no_text" and summary["text_model_version"] is None
    assert summary["promoted"]  # the first ranker: serving must end with a champion
    assert "did not beat the no-text ablation" in summary["reason"]
    assert set(summary["baselines"]) == {"popularity", "item_knn", "als", "tfidf"}
    ref = registry.champion(settings, rules.RANKER_MODEL_NAME)
    assert ref is not None and ref.version == summary["version"]
    tags = _tags(settings, ref)
    assert tags[promotion.REASON_TAG] == summary["reason"] and tags["candidate"] == "no_text"
    _, path = registry.download(settings, rules.RANKER_MODEL_NAME)
    model = RankerModel.load(path)
    assert not model.uses_text and (Path(path) / "with_text" / "ranker.txt").is_file()
    assert RankerModel.load(Path(path) / "with_text").uses_text
    rec = load_recommender(settings, con)
    assert rec.model_versions["ranker"] == ref.version
    assert len(rec.recommend("u1", 5, con=con.cursor()).items) == 5

    # a second ranker, no better than the champion: refused, champion kept, reason recorded
    again = run.train_and_log(settings, con)
    assert not again["promoted"] and again["decision"] == "not promoted"
    assert f"does not beat champion version {ref.version}" in again["reason"]
    assert registry.champion(settings, rules.RANKER_MODEL_NAME).version == ref.version
    con.close()
