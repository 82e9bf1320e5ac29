"""Model verification before load: checksums recorded at registration, a parse in a child
process that may crash, a record of verified versions and the fallback to the last good one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightgbm as lgb
import mlflow
import numpy as np
import pytest

from feature_store.db import connect
from recsys.core import rules
from recsys.core.config import Settings
from serving import modelcheck
from serving.errors import ReloadRefusedError
from serving.metrics import Metrics
from serving.modelcheck import ModelRefusedError, ModelVerifier, parse_in_child
from serving.models import ModelHolder
from training import registry
from training.ranker.model import MODEL_FILE, RankerModel


def _ranker_dir(path: Path, seed: int = 0) -> Path:
    """A real (tiny) LightGBM lambdarank model saved the way training saves it."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, 3))
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 1).astype(int)
    data = lgb.Dataset(x, y, group=[10] * 20, feature_name=["a", "b", "c"])
    params = {"objective": "lambdarank", "verbose": -1, "min_data_in_leaf": 5, "num_threads": 1}
    booster = lgb.train(params, data, num_boost_round=5)
    return RankerModel(booster, ["a", "b", "c"], {"generators": []}).save(path)


def _truncate(directory: Path) -> None:
    model = directory / MODEL_FILE
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])


def _garble(directory: Path) -> None:
    model = directory / MODEL_FILE
    data = bytearray(model.read_bytes())
    mid = len(data) // 3
    data[mid : mid + 400] = np.random.default_rng(1).integers(0, 256, 400, dtype=np.uint8).tobytes()
    model.write_bytes(bytes(data))


def _register(settings: Settings, directory: Path, promote: bool = True) -> registry.ModelRef:
    with registry.start_run(settings, "ranker-files") as run:
        mlflow.log_artifacts(str(directory), "model")
    ref = registry.register(settings, rules.RANKER_MODEL_NAME, run.info.run_id, "model")
    if promote:
        registry.promote(settings, ref.name, ref.version)
    return ref


def test_the_child_parse_accepts_a_good_model_and_refuses_damaged_ones(tmp_path: Path) -> None:
    good = _ranker_dir(tmp_path / "good")
    assert parse_in_child(good) is None
    truncated = _ranker_dir(tmp_path / "truncated")
    _truncate(truncated)
    garbled = _ranker_dir(tmp_path / "garbled")
    _garble(garbled)
    for bad in (truncated, garbled):
        reason = parse_in_child(bad)
        assert reason, f"{bad.name} was not refused"


def test_a_crash_of_the_parser_is_reported_not_suffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(modelcheck, "_CHILD_CODE", "import os; os.abort()")
    reason = parse_in_child(tmp_path)
    assert reason is not None and "SIGABRT" in reason


def test_registration_records_checksums(settings: Settings, tmp_path: Path) -> None:
    directory = _ranker_dir(tmp_path / "m")
    ref = _register(settings, directory)
    recorded = registry.recorded_checksums(settings, ref.name, ref.version)
    assert recorded == registry.sha256_tree(directory)
    assert set(recorded) == {"ranker.txt", "features.json"}


def test_verifier_refuses_and_falls_back_to_the_last_verified(
    settings: Settings, tmp_path: Path
) -> None:
    good = _register(settings, _ranker_dir(tmp_path / "v1"))
    verifier = ModelVerifier(settings)
    ref, directory = verifier.champion()
    assert ref.version == good.version
    truncated = _ranker_dir(tmp_path / "v2")
    _truncate(truncated)
    bad = _register(settings, truncated)  # its checksums match: only the parse catches it
    with pytest.raises(ModelRefusedError) as refused:
        verifier.champion()
    assert refused.value.version == bad.version and refused.value.http_status == 409
    record = verifier.records()[rules.RANKER_MODEL_NAME]
    assert record[good.version]["status"] == "verified"
    assert record[bad.version]["status"] == "refused"
    fallback = verifier.fallback(exclude=bad.version)
    assert fallback is not None and fallback[0].version == good.version

    calls: list[Path] = []
    counting = ModelVerifier(settings, parse=lambda d: calls.append(d))
    with pytest.raises(ModelRefusedError):
        counting.champion()  # the recorded refusal is reused: no second parse
    assert calls == []


def test_a_file_changed_after_registration_fails_its_checksum(
    settings: Settings, tmp_path: Path
) -> None:
    ref = _register(settings, _ranker_dir(tmp_path / "v1"))
    verifier = ModelVerifier(settings, parse=lambda d: None)
    _, directory = verifier.champion()
    _garble(directory)  # the serving cache damaged on disk
    with pytest.raises(ModelRefusedError, match="checksums recorded at registration"):
        verifier.verify(ref, directory)


class _Loaded:
    def __init__(self, version: str) -> None:
        self.model_versions = {rules.RANKER_MODEL_NAME: version}


def _loader(settings: Settings, con: Any, *, ranker: Any = None) -> _Loaded:
    assert ranker is not None, "the holder must pass the verified ranker"
    return _Loaded(ranker[0].version)


def test_holder_falls_back_at_boot_and_refuses_at_reload(
    settings: Settings, tmp_path: Path
) -> None:
    snapshot = tmp_path / "snap.duckdb"
    connect(snapshot).close()
    good = _register(settings, _ranker_dir(tmp_path / "v1"))
    holder = ModelHolder(settings, Metrics(), _loader, verifier=ModelVerifier(settings))
    holder.load(str(snapshot))
    assert holder.model_versions == {"ranker": good.version} and holder.fallback is None

    garbled = _ranker_dir(tmp_path / "v2")
    _garble(garbled)
    bad = _register(settings, garbled)
    with pytest.raises(ReloadRefusedError, match="refused"):
        holder.load(str(snapshot), fallback=False)  # POST /v1/admin/reload
    assert holder.model_versions == {"ranker": good.version}

    rebooted = ModelHolder(settings, Metrics(), _loader, verifier=ModelVerifier(settings))
    rebooted.load(str(snapshot))  # a new worker: the champion is refused, v1 serves
    assert rebooted.model_versions == {"ranker": good.version}
    assert rebooted.fallback is not None
    assert rebooted.fallback["refused"]["version"] == bad.version
    assert rebooted.fallback["serving"]["version"] == good.version
    holder.close_retired(everything=True)
    rebooted.close_retired(everything=True)
