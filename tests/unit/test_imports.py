"""The import rule (docs/layout.md, "Imports"): modules import at their top; function bodies import
nothing, except in the compat modules that gather the heavy libraries.  An AST scan, so a new
``import x`` inside a function fails here with its file:line."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator

import pytest

from recsys.core import compat
from recsys.core.errors import MissingDependencyError, RecsysError
from tests.conftest import REPO_ROOT

PACKAGES = ("recsys", "feature_store", "training", "serving")
# file -> the modules its function bodies may import, and why
COMPAT_IMPORTS = {
    # the serving layer's way to torch: the writer's live user-vector refresh
    "serving/compat.py": ("training.text",),
}
# the only modules that may call importlib.import_module / __import__
DYNAMIC_IMPORTERS = ("recsys/core/compat.py", "recsys/cli/__init__.py")
# heavy libraries: imported at a module's top only by these (else through recsys.core.compat)
HEAVY_AT_TOP = {
    "dask": (),
    "distributed": (),
    "implicit": (),
    "lightgbm": (),
    "matplotlib": (),
    "mlflow": (),
    "peft": (),
    "sklearn": (),
    "transformers": (),
    # the text model subclasses torch.nn.Module at import time; only the text steps import it
    "torch": ("training/text/",),
    "safetensors": ("training/text/",),
}


def _sources() -> Iterator[tuple[str, ast.Module]]:
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            rel = path.relative_to(REPO_ROOT).as_posix()
            yield rel, ast.parse(path.read_text(encoding="utf-8"), filename=rel)


def _imported(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        return ["." * node.level + (node.module or "")]
    return [node.module or ""]


def function_imports(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, module) of every import statement inside a function or lambda body."""

    def walk(node: ast.AST, in_function: bool) -> Iterator[tuple[int, str]]:
        for child in ast.iter_child_nodes(node):
            if in_function and isinstance(child, ast.Import | ast.ImportFrom):
                for module in _imported(child):
                    yield child.lineno, module
            inner = in_function or isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
            )
            yield from walk(child, inner)

    yield from walk(tree, False)


def dynamic_imports(tree: ast.AST) -> Iterator[int]:
    """Lines that call ``importlib.import_module`` or ``__import__``."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if (isinstance(f, ast.Name) and f.id in ("__import__", "import_module")) or (
            isinstance(f, ast.Attribute) and f.attr == "import_module"
        ):
            yield node.lineno


def top_level_imports(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, module) of the imports that run when the module is imported: outside functions
    and outside ``if TYPE_CHECKING:``."""

    def walk(node: ast.AST) -> Iterator[tuple[int, str]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                for module in _imported(child):
                    yield child.lineno, module
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                yield from (x for c in child.orelse for x in walk(ast.Module([c], [])))
            elif not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                yield from walk(child)

    yield from walk(tree)


def _allowed_in_function(rel: str, module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in COMPAT_IMPORTS.get(rel, ()))


def test_function_bodies_import_nothing() -> None:
    offenders = [
        f"{rel}:{line}: imports {module} inside a function"
        for rel, tree in _sources()
        for line, module in function_imports(tree)
        if not _allowed_in_function(rel, module)
    ]
    assert not offenders, (
        "import at the module's top; a heavy library goes through recsys.core.compat "
        "(docs/layout.md, Imports):\n" + "\n".join(offenders)
    )


def test_only_the_compat_module_and_the_cli_import_dynamically() -> None:
    offenders = [
        f"{rel}:{line}: imports dynamically"
        for rel, tree in _sources()
        if rel not in DYNAMIC_IMPORTERS
        for line in dynamic_imports(tree)
    ]
    assert not offenders, "\n".join(offenders)


def test_heavy_libraries_are_imported_in_their_one_place() -> None:
    offenders = []
    for rel, tree in _sources():
        for line, module in top_level_imports(tree):
            places = HEAVY_AT_TOP.get(module.split(".")[0])
            if places is not None and not any(rel.startswith(p) for p in places):
                offenders.append(f"{rel}:{line}: imports {module} at import time")
    assert not offenders, "use recsys.core.compat instead:\n" + "\n".join(offenders)


def test_the_scan_sees_a_function_level_import() -> None:
    tree = ast.parse(
        "import os\n"
        "def f():\n"
        "    import json\n"
        "    g = lambda: __import__('x')\n"
        "    class C:\n"
        "        def m(self):\n"
        "            from a.b import c\n"
    )
    assert list(function_imports(tree)) == [(3, "json"), (7, "a.b")]
    assert list(dynamic_imports(tree)) == [4]
    guarded = (
        "import os\nif TYPE_CHECKING:\n    import t\nelse:\n    import u\ndef f():\n    import v\n"
    )
    assert list(top_level_imports(ast.parse(guarded))) == [(1, "os"), (5, "u")]


def test_compat_returns_the_module() -> None:
    assert compat.sklearn("feature_extraction.text").__name__ == "sklearn.feature_extraction.text"


def test_compat_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "implicit", None)  # import implicit fails
    with pytest.raises(MissingDependencyError, match=r"install 'implicit>=0\.7'") as caught:
        compat.implicit()
    assert isinstance(caught.value, RecsysError) and isinstance(caught.value, ImportError)
