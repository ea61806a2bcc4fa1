"""Shared fixtures: small generated datasets and the real data beside the project."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(os.environ.get("NAPARI_PGPS_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data")).resolve()
HIPPOCAMPUS = SHARED_DATA / "Task04_Hippocampus"

SMALL_SHAPE = (16, 40, 40)
SMALL_SPACING = (2.5, 0.8, 0.8)


def write_dataset(folder: Path, cases: int = 6, seed: int = 0, shape=SMALL_SHAPE) -> Path:
    """A Decathlon-layout dataset of small phantoms (NIfTI)."""
    from napari_pgps._sample_data import PHANTOM_LABELS, make_phantom
    from napari_pgps.data.volume import Volume, affine_from_spacing, write_volume

    affine = affine_from_spacing(SMALL_SPACING)
    entries = []
    for i in range(cases):
        image, labels = make_phantom(seed + i, shape=shape, spacing=SMALL_SPACING)
        name = f"case_{i:03d}.nii.gz"
        write_volume(Volume(image, affine), folder / "imagesTr" / name)
        write_volume(Volume(labels, affine), folder / "labelsTr" / name)
        entries.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {"labels": {str(k): v for k, v in PHANTOM_LABELS.items()}, "modality": {"0": "MRI"}, "training": entries}
    (folder / "dataset.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture(scope="session")
def phantom_dataset(tmp_path_factory) -> Path:
    """Six small anisotropic phantoms; read-only for tests (copy before changing)."""
    return write_dataset(tmp_path_factory.mktemp("phantoms") / "dataset")


@pytest.fixture()
def fresh_dataset(tmp_path) -> Path:
    """A dataset a test may break."""
    return write_dataset(tmp_path / "dataset", cases=3)


def quick_config(data: Path, epochs: int = 2, iterations: int = 3):
    """A run small enough for a unit test."""
    from napari_pgps.config import RunConfig

    config = RunConfig()
    config.data.path = str(data)
    config.model.patch_size = (8, 32, 32)
    config.model.base_channels = 8
    config.training.epochs = epochs
    config.training.iterations_per_epoch = iterations
    config.training.validate_every = 1
    config.training.device = "cpu"
    return config


@pytest.fixture(scope="session")
def hippocampus() -> Path:
    if not (HIPPOCAMPUS / "dataset.json").is_file():
        pytest.skip(f"real data not found at {HIPPOCAMPUS}; put ../shared/data beside the project or set NAPARI_PGPS_DATA")
    return HIPPOCAMPUS


@pytest.fixture(scope="session")
def trained_phantom_run(tmp_path_factory, phantom_dataset) -> Path:
    """A short finished run on the phantoms, shared by inference and CLI tests."""
    from napari_pgps.engine import train

    run_dir = tmp_path_factory.mktemp("runs") / "phantom-run"
    for _ in train(quick_config(phantom_dataset, epochs=2, iterations=3), run_dir):
        pass
    return run_dir


def seeded(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)
