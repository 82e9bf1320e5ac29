"""Logging, registering, promoting and downloading through a real ``mlflow server``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from feature_store.db import connect
from feature_store.splits import materialize_protocol_split
from recsys.core import rules
from recsys.core.config import Settings
from serving.app import create_app
from serving.snapshot import publish_snapshot
from serving.state import EXTENSION
from tests.factories import load_into_store, make_catalog, make_events
from tests.servers import mlflow_server
from tests.tiny_bert import vocab_from_texts, write_tiny_bert
from tests.unit.test_ranker import small_settings
from training import registry
from training.ranker.run import train_and_log
from training.text.scoring import score_store
from training.text.texts import item_texts
from training.text.train import train_text_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as uri:
        yield uri


def test_register_promote_and_download_through_server(
    server_uri: str, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = settings.replace(mlflow_tracking_uri=server_uri)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.txt").write_text("tree\n")
    refs = []
    for auc in (0.70, 0.65):
        with registry.start_run(s, "server-test", data_fingerprint="abc123") as run:
            mlflow.log_artifacts(str(model_dir), "model")
            mlflow.log_metric("val_auc", auc)
        refs.append(registry.register(s, "ranker", run.info.run_id, "model"))
    assert registry.promote_if_better(s, refs[0], "val_auc") is True
    assert registry.promote_if_better(s, refs[1], "val_auc") is False  # worse: champion stays
    champ = registry.champion(s, "ranker")
    assert champ is not None and champ.version == refs[0].version
    ref, local = registry.download(s, "ranker")
    assert ref.version == refs[0].version
    assert (local / "model.txt").read_text() == "tree\n"
    run = registry.client(s).get_run(refs[0].run_id)
    assert run.data.tags["data_fingerprint"] == "abc123"
    assert "git_commit" in run.data.tags and run.data.params["seed"] == "42"
    # the store home stays clean: nothing was written to a local sqlite store
    assert not (s.home / "mlflow.db").exists()


def test_models_trained_through_the_server_are_served_from_it(
    server_uri: str, tmp_path: Path
) -> None:
    """Train the text model (tiny BERT) and the ranker on tiny data, logging and registering
    through the real server; the serving app then loads both champions from that server."""
    home = tmp_path / "home"
    con = connect(home / "recsys.duckdb")
    load_into_store(con, make_catalog(30), make_events(n_users=30, n_items=30, events_per_user=24))
    materialize_protocol_split(con)
    bert = write_tiny_bert(tmp_path / "bert", vocab_from_texts(item_texts(con).values()))
    s = small_settings(home).replace(
        **{
            "mlflow_tracking_uri": server_uri,
            "experiment": "served-from-server",
            "device": "cpu",
            "text.base_model": str(bert),
            "text.epochs": 1,
            "text.batch_size": 16,
            "text.eval_negatives": 10,
        }
    )
    text = train_text_model(s, con, progress=False)
    registry.promote(s, rules.TEXT_MODEL_NAME, text.model_version)
    score_store(s, con, text.model_dir, text.model_version, progress=False)
    # force: keep the text features even when they tie with the ablation on 30 tiny users
    ranker = train_and_log(s, con, promote=False, force=True)
    registry.promote(s, rules.RANKER_MODEL_NAME, ranker["version"])
    publish_snapshot(con, s, log_seq=0)
    con.close()
    assert not (home / "mlflow.db").exists()  # everything went through the server

    app = create_app(s, start_watcher=False)
    app.extensions[EXTENSION].watcher.tick()
    client = app.test_client()
    assert client.get("/readyz").status_code == 200
    res = client.get("/v1/users/u3/recommendations", query_string={"k": 5, "explain": "true"})
    assert res.status_code == 200, res.get_data(as_text=True)
    body = res.get_json()
    assert body["model_versions"] == {
        "ranker": ranker["version"],
        "text-scorer": text.model_version,
    }
    assert [item["rank"] for item in body["items"]] == [1, 2, 3, 4, 5]
    assert all(item["contributions"] for item in body["items"])
    app.extensions[EXTENSION].close()  # drop the snapshot leases this process holds
