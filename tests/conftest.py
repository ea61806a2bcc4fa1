"""Shared fixtures: small generated datasets and the real data beside the project."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Under pytest-xdist (scripts/test.sh runs a worker per core) each worker, and every process it starts (bench runs,
# torchrun's ranks), gets its share of the cores for torch's threads, so that the workers do not fight over them.
if os.environ.get("PYTEST_XDIST_WORKER") and "OMP_NUM_THREADS" not in os.environ:
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))

from helpers import quick_config, real_data_config, write_dataset  # noqa: E402

SHARED_MODEL_MODULES = ("tests/integration/test_hippocampus.py", "tests/integration/test_real_geometry.py")
"""Modules that use one trained model (``hippocampus_run``): pytest-xdist runs them on one worker."""


def pytest_collection_modifyitems(items):
    """The long integration tests first, so that no worker is left running one alone at the end."""
    items.sort(key=lambda item: "/integration/" not in item.nodeid)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist hands out a module at a time (its module fixtures are made once), and the modules that share the
    hippocampus model as one."""
    from xdist.scheduler import LoadScopeScheduling

    class SharedModelScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.startswith(SHARED_MODEL_MODULES):
                return "hippocampus model"
            return super()._split_scope(nodeid)

    return SharedModelScheduling(config, log)

SHARED_DATA = Path(os.environ.get("NAPARI_PGPS_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data")).resolve()
HIPPOCAMPUS = SHARED_DATA / "Task04_Hippocampus"
BRATS = SHARED_DATA / "BraTS2015_2ch"


@pytest.fixture(scope="session", autouse=True)
def preprocessed_cache(tmp_path_factory):
    """Preprocessed datasets go to a folder of this test session, not the user's cache."""
    folder = tmp_path_factory.mktemp("cache")
    previous = os.environ.get("NAPARI_PGPS_CACHE")
    os.environ["NAPARI_PGPS_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("NAPARI_PGPS_CACHE", None)
    else:
        os.environ["NAPARI_PGPS_CACHE"] = previous


@pytest.fixture(scope="session")
def phantom_dataset(tmp_path_factory) -> Path:
    """Six small anisotropic phantoms; read-only for tests (copy before changing)."""
    return write_dataset(tmp_path_factory.mktemp("phantoms") / "dataset")


@pytest.fixture()
def fresh_dataset(tmp_path) -> Path:
    """A dataset a test may break."""
    return write_dataset(tmp_path / "dataset", cases=3)


@pytest.fixture(scope="session")
def hippocampus() -> Path:
    if not (HIPPOCAMPUS / "dataset.json").is_file():
        pytest.skip(f"real data not found at {HIPPOCAMPUS}; put ../shared/data beside the project or set NAPARI_PGPS_DATA")
    return HIPPOCAMPUS


@pytest.fixture(scope="session")
def brats() -> Path:
    if not (BRATS / "dataset.json").is_file():
        pytest.skip(f"real data not found at {BRATS}; put ../shared/data beside the project or set NAPARI_PGPS_DATA")
    return BRATS


@pytest.fixture(scope="session")
def hippocampus_run(tmp_path_factory, hippocampus):
    """A quick model on 40 hippocampus cases (8 base channels, 8 epochs of 20 steps: about 1.5 minutes on 2 CPU
    cores) and its events; shared by the end-to-end and geometry tests. Returns ``(run_dir, events)``."""
    from napari_pgps import train

    config = real_data_config(hippocampus, cases=40, epochs=8, iterations=20)
    config.training.validate_every = 8
    run_dir = tmp_path_factory.mktemp("hippocampus") / "run"
    events = list(train(config, run_dir))
    return run_dir, events


@pytest.fixture(scope="session")
def brats_run(tmp_path_factory, brats) -> Path:
    """A BraTS model trained from the command line for two steps (64^3 patches, 8 base channels, 2 mm voxels).

    The 2 mm grid (the files are 1 mm) keeps validation and segmentation quick, and makes every segmentation
    resample to the model's grid and back to the input's."""
    from napari_pgps.cli import main

    run_dir = tmp_path_factory.mktemp("brats") / "run"
    config = tmp_path_factory.mktemp("brats-config") / "config.yaml"
    config.write_text("model: {base_channels: 8, spacing: [2.0, 2.0, 2.0]}\n")
    assert main(["train", "--data", str(brats), "--out", str(run_dir), "--config", str(config), "--epochs", "1",
                 "--iterations-per-epoch", "2", "--patch-size", "64", "64", "64", "--device", "cpu", "--quiet"]) == 0
    return run_dir


@pytest.fixture(scope="session")
def trained_phantom_run(tmp_path_factory, phantom_dataset) -> Path:
    """A short finished run on the phantoms, shared by inference and CLI tests."""
    from napari_pgps import train

    run_dir = tmp_path_factory.mktemp("runs") / "phantom-run"
    for _ in train(quick_config(phantom_dataset, epochs=2, iterations=3), run_dir):
        pass
    return run_dir
