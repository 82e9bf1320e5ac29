"""Logging, registering, promoting and downloading through a real ``mlflow server``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from recsys.config import Settings
from tests.servers import mlflow_server
from training import tracking

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
        with tracking.start_run(s, "server-test", data_fingerprint="abc123") as run:
            mlflow.log_artifacts(str(model_dir), "model")
            mlflow.log_metric("val_auc", auc)
        refs.append(tracking.register(s, "ranker", run.info.run_id, "model"))
    assert tracking.promote_if_better(s, refs[0], "val_auc") is True
    assert tracking.promote_if_better(s, refs[1], "val_auc") is False  # worse: champion stays
    champ = tracking.champion(s, "ranker")
    assert champ is not None and champ.version == refs[0].version
    ref, local = tracking.download(s, "ranker")
    assert ref.version == refs[0].version
    assert (local / "model.txt").read_text() == "tree\n"
    run = tracking.client(s).get_run(refs[0].run_id)
    assert run.data.tags["data_fingerprint"] == "abc123"
    assert "git_commit" in run.data.tags and run.data.params["seed"] == "42"
    # the store home stays clean: nothing was written to a local sqlite store
    assert not (s.home / "mlflow.db").exists()
