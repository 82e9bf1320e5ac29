"""The ranker's MLflow model folder: the files serving loads plus an ``MLmodel`` that MLflow reads.

The registered ``ranker`` artifact stays the folder serving verifies and loads (``ranker.txt``,
``features.json``, ``settings.json``, ``no_text/``; other helpers may add more, e.g.
``serving_state/``).  ``write_mlmodel`` adds two flavors to it without copying or pickling
anything:

* ``lightgbm``: ``mlflow.lightgbm.load_model("models:/ranker@champion")`` gives the LightGBM
  ``Booster`` read from ``ranker.txt`` (LightGBM's own text format);
* ``python_function``: ``mlflow.pyfunc.load_model("models:/ranker@champion")`` gives the whole
  recommender (``recsys.pipeline.pyfunc``, named by its import path: it is imported only when
  MLflow loads the model, never by training) that scores a DataFrame of ``(user_id, item_id)``
  rows into a ``score`` column, with that signature and an input example.
"""

from __future__ import annotations

import shutil
import tempfile
from importlib.metadata import version
from pathlib import Path

import pandas as pd

from recsys.core import compat
from training.ranker.model import MODEL_FILE

PYFUNC_LOADER = "recsys.pipeline.pyfunc"
INPUT_COLUMNS = ("user_id", "item_id")
OUTPUT_COLUMN = "score"
# what the pyfunc needs at load time beyond the package itself (recsys-text, installed locally)
_REQUIREMENTS = ("lightgbm", "duckdb", "numpy", "pandas", "polars", "pyarrow", "scikit-learn")


def signature() -> object:
    """``(user_id: string, item_id: string) -> score: double``."""
    schema = compat.mlflow("types")
    return compat.mlflow("models").ModelSignature(
        inputs=schema.Schema([schema.ColSpec("string", c) for c in INPUT_COLUMNS]),
        outputs=schema.Schema([schema.ColSpec("double", OUTPUT_COLUMN)]),
    )


def input_example(user_ids: list[str], item_ids: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {"user_id": [str(u) for u in user_ids], "item_id": [str(i) for i in item_ids]}
    )


def write_mlmodel(model_dir: Path, example: pd.DataFrame, run_id: str | None = None) -> None:
    """Add ``MLmodel`` (lightgbm + python_function flavors), the signature, the input example and
    the environment files to ``model_dir``, which already holds ``ranker.txt``."""
    lightgbm, mlflow = compat.lightgbm(), compat.mlflow()

    if not (model_dir / MODEL_FILE).is_file():
        raise FileNotFoundError(f"{model_dir / MODEL_FILE} must be written before the MLmodel")
    model = compat.mlflow("models").Model(run_id=run_id, artifact_path="model")
    model.add_flavor(
        "lightgbm",
        lgb_version=lightgbm.__version__,
        data=MODEL_FILE,
        model_class="lightgbm.basic.Booster",
        code=None,
    )
    with tempfile.TemporaryDirectory(prefix="mlmodel-") as tmp:
        staged = Path(tmp) / "model"
        mlflow.pyfunc.save_model(
            str(staged),
            loader_module=PYFUNC_LOADER,
            mlflow_model=model,
            signature=signature(),
            input_example=example,
            pip_requirements=[f"{name}=={version(name)}" for name in _REQUIREMENTS],
        )
        for path in staged.iterdir():
            shutil.move(str(path), model_dir / path.name)
