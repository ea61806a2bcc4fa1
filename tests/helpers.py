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


def real_data_config(data: Path, cases: int, epochs: int, iterations: int):
    """A short CPU run on the first ``cases`` cases of a real dataset: 8 feature maps, the planned patch,
    ``epochs`` x ``iterations`` steps."""
    from napari_pgps.config import RunConfig

    config = RunConfig()
    config.data.path = str(data)
    config.data.max_cases = cases
    config.model.base_channels = 8
    config.training.device = "cpu"
    config.training.epochs = epochs
    config.training.iterations_per_epoch = iterations
    return config


def run_events(events):
    """The events a run logs in its metrics.jsonl: all but the data preparation's progress."""
    from napari_pgps.events import Preparing

    return [e for e in events if not isinstance(e, Preparing)]


def first_run_event(events):
    """The RunStarted of an event stream (after the data preparation's progress), or the error before it."""
    from napari_pgps.events import RunStarted

    return next(e for e in events if isinstance(e, RunStarted))


REVIEW_SPACING = (2.0, 1.0, 0.5)
"""(sz, sy, sx) mm of :func:`shifted_cubes`: one voxel is 1 mm^3 = 0.001 mL."""


def shifted_cubes():
    """A result and a reference label map (Z, Y, X) with known overlaps, for the review against a reference.

    Label 1: a 4x6x6 box (144 voxels) against a 4x6x8 box (192) starting 2 voxels further along X (overlap 96);
    label 2: a 2x4x6 box (48) against the same box 2 voxels further along Y (overlap 24)."""
    import numpy as np

    result = np.zeros((10, 16, 24), np.uint8)
    reference = np.zeros_like(result)
    result[2:6, 3:9, 4:10] = 1
    reference[2:6, 3:9, 6:14] = 1
    result[7:9, 10:14, 14:20] = 2
    reference[7:9, 12:16, 14:20] = 2
    return result, reference


def assert_same_labels(by_onnx, by_torch):
    """The same label everywhere, but where torch's own two most likely labels tie within the 1e-4 tolerance (there a
    difference in the last digits may pick either; both runtimes are right)."""
    import numpy as np

    differ = by_onnx.labels.array != by_torch.labels.array
    if differ.any():
        top = np.sort(by_torch.probabilities, axis=0)
        margin = (top[-1] - top[-2])[differ]
        assert margin.max() <= 2e-4, f"{differ.sum()} voxels differ, some by a margin of {margin.max():.3g}"
        assert differ.mean() < 1e-4, f"{differ.sum()} of {differ.size} voxels differ"
