"""Helpers shared by the tests: small generated datasets and a quick configuration."""

from __future__ import annotations

import json
from pathlib import Path

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


def run_events(events):
    """The events a run logs in its metrics.jsonl: all but the data preparation's progress."""
    from napari_pgps.events import Preparing

    return [e for e in events if not isinstance(e, Preparing)]


def first_run_event(events):
    """The RunStarted of an event stream (after the data preparation's progress), or the error before it."""
    from napari_pgps.events import RunStarted

    return next(e for e in events if isinstance(e, RunStarted))
