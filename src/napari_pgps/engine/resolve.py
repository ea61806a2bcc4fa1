"""Filling a configuration's automatic (``None``) values from the data, the device and the other choices.

The defaults depend on the device so that ``napari-pgps train --data DIR``
with no other flag is sensible everywhere: on a CPU a smaller network and
fewer steps (the default run on the hippocampus task finishes within 15
minutes on 2 cores), on a GPU an nnU-Net-sized network and longer training.
Defaults that follow from another choice are set here too, so that every
face (command line, widgets, Python) gets the same: progressive pruning
trains the PSP-Seg network, the hypernetwork trains with patch-size
augmentation (both from the architecture registry).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..config import OPTIMIZERS, RunConfig
from ..curriculum import SCHEDULES
from ..errors import InputError
from ..models import architecture, check_patch_size, level_channels, patch_divisor, plan_patch_size, plan_unet
from ..models.architectures import check_minimum_patch, default_architecture, schedule_of


@dataclass(frozen=True)
class DeviceProfile:
    """Defaults for one kind of device."""

    base_channels: int
    epochs: int
    iterations_per_epoch: int
    max_patch_voxels: int
    optimizer: str
    validate_every: int


# CPU: 1250 steps of a 16-channel DynUNet. At that budget AdamW (1e-3) reached a
# mean Dice of 0.865 on the hippocampus validation cases where nnU-Net's SGD
# reached 0.851 (docs/benchmarks.md), so short CPU runs default to AdamW.
PROFILES = {
    "cpu": DeviceProfile(16, epochs=25, iterations_per_epoch=50, max_patch_voxels=96**3, optimizer="adamw", validate_every=5),
    "mps": DeviceProfile(32, epochs=50, iterations_per_epoch=100, max_patch_voxels=128**3, optimizer="adamw", validate_every=5),
    "cuda": DeviceProfile(32, epochs=50, iterations_per_epoch=250, max_patch_voxels=128**3, optimizer="sgd", validate_every=5),
}


def median_spacing_and_shape(
    spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]]
) -> tuple[tuple[float, float, float], tuple[int, int, int]]:
    """Median spacing (mm) and the median shape of the cases (Z, Y, X)."""
    spacing = tuple(float(s) for s in np.median(np.asarray(spacings, dtype=float), axis=0))
    shape = tuple(int(round(s)) for s in np.median(np.asarray(shapes, dtype=float), axis=0))
    return spacing, shape


def resolve_config(
    config: RunConfig,
    *,
    labels: dict[int, str],
    modality: str,
    spacings: Sequence[Sequence[float]],
    shapes: Sequence[Sequence[int]],
    device: torch.device,
) -> RunConfig:
    """A copy of ``config`` with every automatic value filled and every choice checked.

    Args:
        labels: label value -> name, background included.
        modality: from ``dataset.json``.
        spacings, shapes: (Z, Y, X) of each training case.

    Raises:
        InputError: an unknown choice or a patch size the network cannot take.
    """
    resolved = copy.deepcopy(config)
    model, training, curriculum = resolved.model, resolved.training, resolved.curriculum
    if model.architecture is None:
        model.architecture = default_architecture(resolved)
    spec = architecture(model)
    curriculum.schedule = schedule_of(resolved)
    profile = PROFILES[device.type if device.type in PROFILES else "cpu"]
    if training.optimizer is None:
        training.optimizer = profile.optimizer
    if training.validate_every is None:
        training.validate_every = profile.validate_every
    if training.optimizer not in OPTIMIZERS:
        raise InputError(f"unknown optimizer '{training.optimizer}'; choose one of {', '.join(OPTIMIZERS)}.")
    if curriculum.schedule not in SCHEDULES:
        raise InputError(f"unknown schedule '{curriculum.schedule}'; choose one of {', '.join(SCHEDULES)}.")
    if spec.needs_varying_patch and curriculum.schedule == "constant":
        raise InputError(f"{spec.name} learns from varying patch sizes; train it with --schedule augment "
                         "(or curriculum.schedule: augment).")
    if spec.only_training_patch and curriculum.schedule != "constant":
        raise InputError(f"{spec.name} takes only its training patch size; use --schedule constant or another network.")
    if model.hypernet_hidden < 1:
        raise InputError(f"hypernet_hidden {model.hypernet_hidden} must be at least 1.")
    if training.batch_size < 1:
        raise InputError(f"batch size {training.batch_size} must be at least 1.")
    if not 0.0 <= resolved.data.foreground_oversampling <= 1.0:
        raise InputError("foreground oversampling must be a probability between 0 and 1.")
    if training.validate_every < 1:
        raise InputError("validate every N epochs needs N of at least 1.")
    if resolved.pruning.enabled and not spec.branch_prunable:
        raise InputError("progressive pruning removes PRM branches: use --architecture prm (or channel pruning of a trained model: napari-pgps prune).")
    if not 0.0 <= resolved.pruning.stop_fraction <= 1.0 or resolved.pruning.min_branches < 0 or resolved.pruning.prune_step < 1:
        raise InputError("pruning needs a stop fraction in [0, 1], a prune step of at least 1 and min branches of at least 0.")

    resolved.labels = dict(sorted(labels.items()))
    resolved.modality = modality
    spacing, median_shape = median_spacing_and_shape(spacings, shapes)
    if model.spacing is None:
        model.spacing = spacing
    if model.patch_size is None:
        model.patch_size, plan = plan_patch_size(median_shape, model.spacing, profile.max_patch_voxels)
    else:
        plan = plan_unet(model.patch_size, model.spacing)
    model.patch_size = tuple(int(p) for p in model.patch_size)
    if model.kernel_sizes is None or model.strides is None:
        model.kernel_sizes, model.strides = plan.kernel_sizes, plan.strides
    if model.base_channels is None:
        model.base_channels = profile.base_channels
    if spec.resolve is not None:
        spec.resolve(model)
    if model.channels is None:
        model.channels = level_channels(len(model.strides), model.base_channels, model.max_channels)
    model.out_channels = len(resolved.labels)
    check_patch_size(model.patch_size, patch_divisor(model), what="final patch size")
    check_minimum_patch(model, model.patch_size)

    if training.epochs is None:
        training.epochs = profile.epochs
    if training.iterations_per_epoch is None:
        training.iterations_per_epoch = profile.iterations_per_epoch
    if training.learning_rate is None:
        training.learning_rate = 1e-2 if training.optimizer == "sgd" else 1e-3
    if training.epochs < 1 or training.iterations_per_epoch < 1:
        raise InputError("epochs and iterations per epoch must be at least 1.")
    return resolved
