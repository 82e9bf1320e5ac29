"""Shared fixtures.  Unit tests build tiny data of their own (tests/factories.py); integration
tests read the real data in ../shared/data (RECSYS_DATA_DIR) and start real components."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from feature_store.db import connect
from recsys.core import compat
from recsys.core.config import Settings, load_settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        has_cuda = compat.torch().cuda.is_available()
    except ImportError:  # recsys.core.compat's MissingDependencyError is one
        has_cuda = False
    if not has_cuda:
        skip_gpu = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _no_outside_mlflow_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never log to a tracking server named by the caller's environment."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings on a fresh, private home directory (no RECSYS_* leakage from the caller)."""
    return load_settings(overrides={"home": str(tmp_path / "home")}, environ={})


@pytest.fixture
def store(settings: Settings) -> Iterator[duckdb.DuckDBPyConnection]:
    """A real DuckDB file in the test's home, schema in place."""
    con = connect(settings.db_path)
    yield con
    con.close()


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The real public data (../shared/data or RECSYS_DATA_DIR); integration tests need it."""
    path = Path(os.environ.get("RECSYS_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
    if not (path / "movielens-small" / "ratings.csv").is_file():
        pytest.fail(
            f"real data not found under {path}; set RECSYS_DATA_DIR to the shared data directory"
        )
    return path
