"""The benchmark scripts (benchmarks/*.py) are run by hand for their measurements: every name they import from
napari_pgps, at the top or inside a function, must still exist (a renamed helper had broken two of them unnoticed),
and those that generate their own inputs run end to end at a tiny size."""

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = sorted((ROOT / "benchmarks").glob("*.py"))


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


SELF_CONTAINED = {
    # script: arguments for a run of a few seconds on generated data, and a line its report must print
    "cpu_speed.py": (["--patch", "16", "16", "16", "--batch", "1", "--rounds", "1", "--steps", "1",
                      "--variants", "fp32,channels-last", "--next-crop", "16", "16", "8"], "| channels-last |"),
    "evaluation_memory.py": (["--shape", "12", "24", "20", "--labels", "3", "--spacing", "2", "1", "1"],
                             "peak resident memory:"),
}


@pytest.mark.parametrize("script", sorted(SELF_CONTAINED))
def test_a_benchmark_that_needs_no_data_runs_to_its_report(script):
    """The scripts that generate their own inputs run end to end at a tiny size, so that a changed signature inside
    napari_pgps breaks a test rather than the next measurement."""
    arguments, expected = SELF_CONTAINED[script]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *arguments], capture_output=True,
                            text=True, timeout=1200, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert expected in result.stdout, result.stdout[-3000:]
