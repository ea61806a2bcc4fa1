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
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from ..config import OPTIMIZERS, RunConfig
from ..curriculum import SCHEDULES
from ..data.augmentation import AUGMENTATIONS
from ..data.fingerprint import Fingerprint
from ..data.geometry import resampled_shape, target_spacing
from ..data.normalization import fit_normalization
from ..data.sampler import OVERSAMPLING_RULES
from ..errors import InputError
from ..models import architecture, check_patch_size, level_channels, patch_divisor, plan_patch_size, plan_unet
from ..models.architectures import check_minimum_patch, default_architecture
from .recipe import is_budgeted, recipe_schedule


@dataclass(frozen=True)
class DeviceProfile:
    """Defaults for one kind of device."""

    base_channels: int
    epochs: Optional[int]
    """The epochs of a run that gives none, where the profile has no ``time_budget`` (``None`` where it has one:
    the budget sets them)."""
    iterations_per_epoch: int
    max_patch_voxels: int
    optimizer: str
    validate_every: int
    time_budget: Optional[float]
    """Seconds a run with no epochs given is planned to fill (all of it: :mod:`.recipe`); ``None``: no budget."""
    augmentation: str
    """Chosen by measured Dice (docs/benchmarks.md)."""
    loader_workers: int
    """Chosen by measured step time (docs/benchmarks.md)."""


# CPU: a 16-channel DynUNet planned to fill 15 minutes (engine/recipe.py; until issue 33 at most 1250 steps). At
# that budget AdamW (1e-3) reached a mean Dice of 0.865 on the hippocampus
# validation cases where nnU-Net's SGD reached 0.851, and no augmentation beat
# mirroring and nnU-Net's augmentation (0.876 / 0.858 / 0.826; docs/benchmarks.md):
# a short run learns more from plain crops. The GPU profiles' augmentation is not
# measured yet (no GPU lent) and keeps mirroring.
PROFILES = {
    "cpu": DeviceProfile(16, epochs=None, iterations_per_epoch=50, max_patch_voxels=96**3, optimizer="adamw",
                         validate_every=5, time_budget=15 * 60, augmentation="none", loader_workers=0),
    "mps": DeviceProfile(32, epochs=50, iterations_per_epoch=100, max_patch_voxels=128**3, optimizer="adamw",
                         validate_every=5, time_budget=None, augmentation="mirror", loader_workers=2),
    "cuda": DeviceProfile(32, epochs=50, iterations_per_epoch=250, max_patch_voxels=128**3, optimizer="sgd",
                          validate_every=5, time_budget=None, augmentation="mirror", loader_workers=4),
}


def planned_spacing_and_shape(config: RunConfig, fingerprint: Fingerprint) -> tuple[tuple[float, float, float], tuple[int, int, int]]:
    """The target spacing (mm) and the median case shape (Z, Y, X) at that spacing.

    The spacing is ``model.spacing`` when given, else nnU-Net's rule over the
    cases (with ``preprocessing.resample`` off: their median spacing).
    """
    spacings = [c.spacing for c in fingerprint.cases.values()]
    shapes = [c.shape for c in fingerprint.cases.values()]
    spacing = config.model.spacing
    if spacing is None:
        median = tuple(float(s) for s in np.median(np.asarray(spacings, dtype=float), axis=0))
        spacing = target_spacing(spacings, shapes) if config.preprocessing.resample else median
    resampled = [resampled_shape(n, s, spacing) for n, s in zip(shapes, spacings)] if config.preprocessing.resample else shapes
    median_shape = tuple(int(round(v)) for v in np.median(np.asarray(resampled, dtype=float), axis=0))
    return tuple(float(s) for s in spacing), median_shape


def resolve_config(
    config: RunConfig,
    *,
    labels: dict[int, str],
    channels: Sequence[str],
    fingerprint: Fingerprint,
    device: torch.device,
    ignore_label: Optional[int] = None,
) -> RunConfig:
    """A copy of ``config`` with every automatic value filled and every choice checked.

    Args:
        labels: the classes, label value -> name, background included (the network has one output per class).
        channels: the input channels' names (``dataset.json``), in order.
        fingerprint: of the dataset's cases (spacing and shape in the canonical orientation, foreground intensities).
        ignore_label: the value of nnU-Net v2's ignore label in the label maps (not a class), or ``None``.

    Raises:
        InputError: an unknown choice, a number out of its range (:meth:`RunConfig.validate`) or a patch size the
            network cannot take.
    """
    resolved = copy.deepcopy(config.validate())
    if resolved.data.path:  # stored absolute, so that a resume from another working folder finds the data
        resolved.data.path = os.path.abspath(resolved.data.path)
    model, training, curriculum = resolved.model, resolved.training, resolved.curriculum
    if model.architecture is None:
        model.architecture = default_architecture(resolved)
    spec = architecture(model)
    profile = PROFILES[device.type if device.type in PROFILES else "cpu"]
    curriculum.schedule = recipe_schedule(resolved, is_budgeted(resolved, profile.time_budget))
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
    data = resolved.data
    if data.oversampling not in OVERSAMPLING_RULES:
        raise InputError(f"unknown oversampling rule '{data.oversampling}'; choose one of {', '.join(OVERSAMPLING_RULES)}.")
    data.augmentation = data.augmentation or profile.augmentation
    if data.augmentation not in AUGMENTATIONS:
        raise InputError(f"unknown augmentation '{data.augmentation}'; choose one of {', '.join(AUGMENTATIONS)}.")
    if data.loader_workers is None:
        data.loader_workers = profile.loader_workers
    if len(resolved.preprocessing.orientation) != 3 or set(resolved.preprocessing.orientation.upper()) - set("RLAPSI"):
        raise InputError(f"orientation '{resolved.preprocessing.orientation}' is not three axis codes such as RAS or LPS.")
    if resolved.pruning.enabled and not spec.branch_prunable:
        raise InputError("progressive pruning removes PRM branches: use --architecture prm (or channel pruning of a trained model: napari-pgps prune).")

    resolved.labels = dict(sorted(labels.items()))
    resolved.ignore_label = ignore_label
    if resolved.channels is not None and list(resolved.channels) != list(channels):
        raise InputError(f"the data has channels {list(channels)}, the configuration {list(resolved.channels)}; "
                         "give the channels in the order the model takes them.")
    resolved.channels = list(channels)
    model.in_channels = len(channels)
    if not resolved.normalization:
        resolved.normalization = fit_normalization(channels, fingerprint.foreground,
                                                   [c.crop_fraction for c in fingerprint.cases.values()])
    if len(resolved.normalization) != len(channels):
        raise InputError(f"{len(resolved.normalization)} normalisation(s) configured for {len(channels)} channel(s).")
    model.spacing, median_shape = planned_spacing_and_shape(resolved, fingerprint)
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

    if training.time_budget is None and training.epochs is None:
        # the device's defaults: its budget, all of it (engine/recipe.py), or its epochs where it has no budget
        training.time_budget = profile.time_budget
        training.epochs = profile.epochs if profile.time_budget is None else None
    if training.iterations_per_epoch is None:
        training.iterations_per_epoch = profile.iterations_per_epoch
    if training.learning_rate is None:
        training.learning_rate = 1e-2 if training.optimizer == "sgd" else 1e-3
    return resolved
