"""Re-run the notebooks on a real home and save them with their outputs (plots inline).

    RECSYS_HOME=/path/to/home python notebooks/refresh.py

The home needs a store and an evaluate run (README: `recsys ingest movielens`, `recsys train
ranker`, `recsys evaluate`).  Timing metadata and stderr (warnings, download progress bars) are
dropped so that a refresh changes only what the notebooks show.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
NOTEBOOKS = ("exploration.ipynb", "evaluation.ipynb")


def refresh(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(HERE.parent)}},
    ).execute()
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs = [
                o
                for o in cell.outputs
                if not (o.output_type == "stream" and o.get("name") == "stderr")
            ]
    nbformat.validate(nb)
    nbformat.write(nb, path)
    print(f"refreshed {path.name}")


if __name__ == "__main__":
    for name in sys.argv[1:] or NOTEBOOKS:
        refresh(HERE / name)
