"""The notebooks execute end to end on a tiny store and a real MLflow run, so they cannot rot;
their plots render inline, and the committed copies carry the outputs of a run on a real home."""

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
    assert _images(nb), f"{name} rendered no inline plot (is a non-inline backend forced?)"
    if name == "evaluation.ipynb":
        table = next(c for c in nb.cells if 'sort_values("ndcg@10"' in c.source)
        shown = next(o for o in table.outputs if o["output_type"] == "execute_result")["data"][
            "text/plain"
        ]
        assert "popularity" in shown and "item_knn" in shown


def _images(nb: nbformat.NotebookNode) -> int:
    return sum(
        "image/png" in o.get("data", {})
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
    )


@pytest.mark.parametrize("name", ["exploration.ipynb", "evaluation.ipynb"])
def test_committed_notebooks_carry_outputs_with_inline_plots(name: str) -> None:
    path = REPO_ROOT / "notebooks" / name
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), f"{name}: run every cell before committing"
    assert all(o.get("output_type") != "error" for c in code for o in c.get("outputs", []))
    assert _images(nb) >= 2, f"{name}: commit it with its plots (run it on a real home)"
    assert path.stat().st_size < 600_000, f"{name}: keep the committed outputs small"
