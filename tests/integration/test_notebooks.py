"""The notebooks execute end to end on a tiny store and a real MLflow run, so they cannot rot."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from click.testing import CliRunner
from nbclient import NotebookClient

from feature_store.db import connect
from recsys.cli import main
from tests.conftest import REPO_ROOT
from tests.factories import load_into_store, make_catalog, make_events

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("nb") / "home"
    con = connect(home / "recsys.duckdb")
    load_into_store(
        con, make_catalog(n_items=40), make_events(n_users=20, n_items=40, events_per_user=20)
    )
    con.close()
    result = CliRunner().invoke(
        main,
        [
            "--home",
            str(home),
            "evaluate",
            "--systems",
            "popularity,item_knn",
            "--output",
            str(home / "reports" / "nb"),
        ],
    )
    assert result.exit_code == 0, result.output
    return home


@pytest.mark.parametrize("name", ["exploration.ipynb", "evaluation.ipynb"])
def test_notebook_executes(name: str, tiny_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_HOME", str(tiny_home))
    nb = nbformat.read(REPO_ROOT / "notebooks" / name, as_version=4)
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO_ROOT)}}
    ).execute()
    errors = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert not errors
    if name == "evaluation.ipynb":
        table = next(c for c in nb.cells if 'sort_values("ndcg@10"' in c.source)
        shown = next(o for o in table.outputs if o["output_type"] == "execute_result")["data"][
            "text/plain"
        ]
        assert "popularity" in shown and "item_knn" in shown
