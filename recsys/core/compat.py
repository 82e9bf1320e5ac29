"""Heavy libraries, imported on first use and only here.

Importing torch, mlflow or LightGBM costs seconds, and most entry points never need them
(``recsys --help``, ``recsys ingest``, an API worker without a text model).  So, in the spirit of
LightGBM's ``compat.py``, this is the one module that imports them: every other module of the
four packages imports at its top only, and calls ``compat.mlflow()`` (or ``compat.mlflow("data")``
for a submodule) where it needs the library.  A failed import becomes a
``MissingDependencyError`` that says what to install.

The text model's modules (``training/text/model.py``, ``tower*.py``, ``train.py``) subclass
``torch.nn.Module`` at import time and keep a top-level ``import torch``: they are imported only
by the text steps, which need torch anyway.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from recsys.core.errors import MissingDependencyError

# import name -> what to install (pyproject.toml's ranges)
_PACKAGES = {
    "faiss": "faiss-cpu>=1.8 (the ann extra: pip install 'recsys-text[ann]')",
    "dask": "the distributed extra: pip install 'recsys-text[distributed]'",
    "distributed": "the distributed extra: pip install 'recsys-text[distributed]'",
    "implicit": "implicit>=0.7",
    "lightgbm": "lightgbm>=4.3",
    "matplotlib": "matplotlib>=3.8",
    "mlflow": "mlflow>=2.14",
    "peft": "peft>=0.10",
    "sklearn": "scikit-learn>=1.4",
    "torch": "torch (the Makefile pins torch==2.13.0)",
    "transformers": "transformers>=4.40",
}


def _load(package: str, submodule: str) -> ModuleType:
    name = f"{package}.{submodule}" if submodule else package
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{name} cannot be imported ({exc}); install {_PACKAGES[package]!r} "
            "(`pip install -e .` installs every dependency)"
        ) from exc


def dask(submodule: str = "") -> ModuleType:
    """``dask.<submodule>`` (``array``, ``dataframe``): the optional cluster engine."""
    return _load("dask", submodule)


def distributed() -> ModuleType:
    """``distributed`` (Client, LocalCluster): the optional cluster engine's scheduler client."""
    return _load("distributed", "")


def faiss() -> ModuleType:
    """``faiss`` (optional ``faiss-cpu``): the HNSW graph for large catalogs."""
    return _load("faiss", "")


def implicit(submodule: str = "") -> ModuleType:
    """``implicit`` (or ``implicit.<submodule>``): ALS and item-kNN baselines."""
    return _load("implicit", submodule)


def lightgbm(submodule: str = "") -> ModuleType:
    """``lightgbm``: the ranker."""
    return _load("lightgbm", submodule)


def matplotlib(submodule: str = "") -> ModuleType:
    """``matplotlib`` (or ``matplotlib.<submodule>``): report figures."""
    return _load("matplotlib", submodule)


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the file-only Agg backend (no display is ever needed)."""
    _load("matplotlib", "").use("Agg")
    return _load("matplotlib", "pyplot")


def mlflow(submodule: str = "") -> ModuleType:
    """``mlflow`` (or ``mlflow.<submodule>``): tracking and the model registry."""
    return _load("mlflow", submodule)


def peft(submodule: str = "") -> ModuleType:
    """``peft``: LoRA adapters for the text model."""
    return _load("peft", submodule)


def sklearn(submodule: str = "") -> ModuleType:
    """``sklearn.<submodule>``: the TF-IDF content baseline."""
    return _load("sklearn", submodule)


def torch(submodule: str = "") -> ModuleType:
    """``torch`` (or ``torch.<submodule>``), for modules that run without the text model."""
    return _load("torch", submodule)


def transformers(submodule: str = "") -> ModuleType:
    """``transformers``: the text model's backbone and tokenizer."""
    return _load("transformers", submodule)
