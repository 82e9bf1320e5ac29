"""MLflow as data scientists use it, on a real local MLflow store and a tiny trained home:
``models:/ranker@champion`` loads as a LightGBM Booster and as the whole recommender (pyfunc)
that scores ``(user_id, item_id)`` rows exactly as the pipeline does; signature and input example;
the store logged as an input with one fingerprint for ranker and evaluate runs; the run spans the
job with per-iteration curves; interrupted runs end KILLED."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import duckdb
import lightgbm as lgb
import mlflow
import mlflow.lightgbm
import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from feature_store.db import connect
from feature_store.splits import materialize_protocol_split
from recsys.core import rules
from recsys.core.config import Settings
from recsys.evaluation.report import log_to_mlflow
from recsys.pipeline.loader import load_recommender
from recsys.pipeline.pyfunc import model_settings
from serving.modelcheck import ModelVerifier
from tests.factories import load_into_store, make_catalog, make_events
from tests.integration.test_pipeline import _write_text_model
from tests.unit.test_ranker import N_ITEMS, small_settings
from training import registry
from training.ranker.run import train_and_log

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
CHAMPION_URI = f"models:/{rules.RANKER_MODEL_NAME}@{rules.CHAMPION_ALIAS}"


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Settings, duckdb.DuckDBPyConnection, dict[str, Any]]:
    settings = small_settings(tmp_path_factory.mktemp("mlflow-models") / "home")
    con = connect(settings.db_path)
    load_into_store(
        con, make_catalog(N_ITEMS), make_events(n_users=30, n_items=N_ITEMS, events_per_user=24)
    )
    materialize_protocol_split(con)
    _write_text_model(settings, con)
    summary = train_and_log(settings, con)
    con.close()  # from here on every reader (the pyfunc too) opens the store read-only
    return settings, connect(settings.db_path, read_only=True), summary


@pytest.fixture
def tracking(trained: tuple, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """MLflow's own API pointed at the home's store, as a data scientist would."""
    settings = trained[0]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.tracking_uri)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    return settings


def test_champion_loads_as_a_lightgbm_booster(trained: tuple, tracking: Settings) -> None:
    booster = mlflow.lightgbm.load_model(CHAMPION_URI)
    assert isinstance(booster, lgb.Booster)
    _, path = registry.download(tracking, rules.RANKER_MODEL_NAME)
    served = lgb.Booster(model_file=str(path / "ranker.txt"))
    assert booster.feature_name() == served.feature_name()
    assert booster.model_to_string() == served.model_to_string()


def test_champion_loads_as_the_whole_recommender(trained: tuple, tracking: Settings) -> None:
    settings, con, _ = trained
    model = mlflow.pyfunc.load_model(CHAMPION_URI)
    sig = model.metadata.get_input_schema()
    assert sig.input_names() == ["user_id", "item_id"]
    assert model.metadata.get_output_schema().input_names() == ["score"]

    rec = load_recommender(settings, con, precompute=False)
    user = str(rec.data.user_ids[0])
    items = [f"i{k}" for k in range(0, N_ITEMS, 3)]
    rows = pd.DataFrame(
        {"user_id": [user] * len(items) + ["u-new", user], "item_id": [*items, "i1", "nope"]}
    )
    scores = model.predict(rows)["score"].to_numpy()
    expected = {r.item_id: r.score for r in rec.rank(items, k=len(items), user_id=user).items}
    assert np.allclose(scores[: len(items)], [expected[i] for i in items])
    cold = rec.rank(["i1"], k=1, user_id="u-new").items[0].score
    assert scores[len(items)] == pytest.approx(cold)  # a new visitor is scored cold
    assert np.isnan(scores[-1])  # an unknown item
    # loading through models:/ made MLflow write registered_model_meta into the run's model
    # folder; serving still verifies the champion (the file is bookkeeping, not a model file)
    ref, _ = ModelVerifier(settings).champion()
    assert ref.version == trained[2]["version"]


def test_input_example_is_logged_and_scores(trained: tuple, tracking: Settings) -> None:
    _, path = registry.download(tracking, rules.RANKER_MODEL_NAME)
    example = Model.load(str(path / "MLmodel")).load_input_example(str(path))
    assert list(example.columns) == ["user_id", "item_id"] and len(example) > 0
    out = mlflow.pyfunc.load_model(CHAMPION_URI).predict(example)
    assert np.isfinite(out["score"]).all()


def test_pyfunc_names_missing_columns(trained: tuple, tracking: Settings) -> None:
    model = mlflow.pyfunc.load_model(CHAMPION_URI)
    with pytest.raises((MlflowException, ValueError), match="item_id"):
        model.predict(pd.DataFrame({"user_id": ["u1"]}))


def test_pyfunc_finds_a_copied_home_by_its_tracking_store(trained: tuple, tmp_path: Path) -> None:
    """The home is the folder of the sqlite tracking store, not the path saved at training."""
    settings = trained[0]
    _, path = registry.download(settings, rules.RANKER_MODEL_NAME)
    copy = tmp_path / "copied-home"
    copy.mkdir()
    (copy / "recsys.duckdb").write_bytes(b"")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{copy / 'mlflow.db'}"}
    assert model_settings(path, env).home == copy
    assert model_settings(path, {"RECSYS_HOME": str(tmp_path)}).home == tmp_path
    assert model_settings(path, {}).home == Path(settings.home)  # the saved home still exists
    assert model_settings(path, {}).ranker.num_candidates == 20  # trained with 20


def test_run_spans_the_job_with_curves_and_the_store_input(trained: tuple) -> None:
    settings, _, summary = trained
    c = registry.client(settings)
    run = c.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    took = (run.info.end_time - run.info.start_time) / 1000
    assert took >= summary["metrics"]["total_seconds"]  # opened before the work began
    history = c.get_metric_history(run.info.run_id, "holdout_ndcg_at_10")
    best = int(summary["metrics"]["best_iteration"])
    assert [m.step for m in history] == list(range(1, len(history) + 1))
    assert len(history) >= best  # every evaluated iteration, early stopping included
    ablation = c.get_metric_history(run.info.run_id, "no_text_holdout_ndcg_at_10")
    assert len(ablation) >= int(summary["metrics"]["no_text_best_iteration"])
    inputs = run.inputs.dataset_inputs
    assert [i.dataset.name for i in inputs] == [registry.STORE_DATASET]
    assert inputs[0].dataset.digest == run.data.tags["data_fingerprint"]


def test_ranker_and_evaluate_runs_share_the_fingerprint(trained: tuple, tmp_path: Path) -> None:
    settings, con, summary = trained
    fingerprint = registry.data_fingerprint(con)
    run_id = log_to_mlflow(
        settings, {"protocol": "t", "systems": {}}, [], fingerprint, registry.store_counts(con)
    )
    c = registry.client(settings)
    ranker_run, eval_run = c.get_run(summary["run_id"]), c.get_run(run_id)
    assert eval_run.data.tags["data_fingerprint"] == ranker_run.data.tags["data_fingerprint"]
    digests = {r.inputs.dataset_inputs[0].dataset.digest for r in (ranker_run, eval_run)}
    assert digests == {fingerprint}


def test_keyboard_interrupt_ends_the_run_killed(trained: tuple) -> None:
    settings = trained[0]
    with pytest.raises(KeyboardInterrupt):
        with registry.start_run(settings, "interrupted") as run:
            raise KeyboardInterrupt
    assert registry.client(settings).get_run(run.info.run_id).info.status == "KILLED"
    with pytest.raises(RuntimeError):
        with registry.start_run(settings, "broken") as run:
            raise RuntimeError("boom")
    assert registry.client(settings).get_run(run.info.run_id).info.status == "FAILED"


def test_sigterm_ends_the_run_killed(trained: tuple) -> None:
    settings = trained[0]
    script = textwrap.dedent(
        f"""
        import sys, time
        from recsys.core.config import load_settings
        from training import registry
        s = load_settings(environ={{}}, overrides={{"home": {str(settings.home)!r}}})
        with registry.start_run(s, "terminated") as run:
            print(run.info.run_id, flush=True)
            time.sleep(120)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, env=env, text=True
    )
    assert proc.stdout is not None
    with proc.stdout:
        run_id = proc.stdout.readline().strip()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) != 0
    deadline = time.monotonic() + 10
    status = registry.client(settings).get_run(run_id).info.status
    while status == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.2)
        status = registry.client(settings).get_run(run_id).info.status
    assert status == "KILLED"


def test_a_copied_home_reads_its_own_artifacts(
    trained: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = trained[0]
    copy = tmp_path / "copy" / "home"
    shutil.copytree(settings.home, copy, ignore=shutil.ignore_patterns("serving"))
    moved = settings.override({"home": str(copy)}, "test")
    ref = registry.champion(moved, rules.RANKER_MODEL_NAME)  # opening the store relocates it
    assert ref is not None and ref.source.startswith(moved.artifact_root + "/")
    run = registry.client(moved).get_run(ref.run_id)
    assert run.info.artifact_uri.startswith(moved.artifact_root + "/")
    # the copy's files are the ones read: mark one and find the mark in a download
    marked = copy / "mlruns" / ref.source.split("/mlruns/", 1)[1] / "COPY"
    marked.write_text("copy")
    _, path = registry.download(moved, rules.RANKER_MODEL_NAME)
    assert (path / "COPY").read_text() == "copy"
    assert registry.relocate_local_store(moved) == 0  # once per process and home
    monkeypatch.setenv("MLFLOW_TRACKING_URI", moved.tracking_uri)
    mlflow.set_tracking_uri(moved.tracking_uri)
    mlflow.set_registry_uri(moved.tracking_uri)
    model = mlflow.pyfunc.load_model(CHAMPION_URI)
    assert model._model_impl.recommender.settings.home == copy  # the copy's store
    original = registry.champion(settings, rules.RANKER_MODEL_NAME)
    assert original is not None and original.source.startswith(settings.artifact_root + "/")
