"""The benchmark scripts (benchmarks/*.py) are run by hand, not by the tests: every name they import from
napari_pgps, at the top or inside a function, must still exist (a renamed helper had broken two of them unnoticed)."""

import ast
import importlib
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[2] / "benchmarks").glob("*.py"))


def _imports(script: Path):
    """(module, name) of every ``from napari_pgps... import name`` in ``script``, wherever it is."""
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "napari_pgps":
            for alias in node.names:
                yield node.module, alias.name


def test_there_are_benchmark_scripts_to_check():
    assert len(BENCHMARKS) >= 10 and any(_imports(script) for script in BENCHMARKS)


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda path: path.name)
def test_every_name_a_benchmark_imports_from_napari_pgps_exists(script):
    missing = []
    for module_name, name in _imports(script):
        module = importlib.import_module(module_name)
        if not hasattr(module, name):
            try:
                importlib.import_module(f"{module_name}.{name}")  # a submodule
            except ImportError:
                missing.append(f"{module_name}.{name}")
    assert not missing, f"{script.name} imports names napari_pgps no longer has: {', '.join(missing)}"
