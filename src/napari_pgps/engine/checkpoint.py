"""Checkpoints: written atomically, read safely.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts,
saved with ``torch.save`` and loaded with ``torch.load(weights_only=True)``,
so reading one never runs code found in the file.

Keys: ``format``, ``version``, ``config`` (the resolved :class:`RunConfig` as a
dict), ``kind`` (the model kind, FP, AP, HN, PGPS or RPSS), ``model``,
``optimizer``, ``scheduler``, ``scaler`` (state dicts), ``plugins`` (each
training-loop plug-in's state by its name), ``split`` (the training and
validation case names), ``epoch`` (epochs completed), ``step``, ``rng``
(torch / numpy / CUDA states; under torchrun also ``numpy_ranks``, every
rank's sampler state in rank order, and ``schedule``, the shared patch-draw
state), ``best_mean_dice``, ``last_mean_dice``, ``training_seconds``.
"""

from __future__ import annotations

import copy
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Sequence

import torch

from ..config import RunConfig
from ..errors import CheckpointError, InputError
from ..files import atomic_write
from ..models import build_network, check_patch_size, patch_divisor
from .package import is_model_package, read_model_package

FORMAT = "napari-pgps-checkpoint"
VERSION = 2
"""2: models train on preprocessed cases (canonical orientation, target spacing, per-channel normalisation)."""
LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"
FINAL = "checkpoint_final.pt"
SPLITS_FILE = "splits.json"
"""Beside the checkpoints: the run's training and validation case names, ``{"training": [...], "validation": [...]}``."""


def save_checkpoint(payload: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``payload`` (with format and version added) to ``path`` atomically.

    The file is written beside the target, flushed to disk, then renamed over
    it, so a crash leaves either the old checkpoint or the new one, never half.
    """
    path = Path(path)
    with atomic_write(path, "wb") as handle:
        torch.save({"format": FORMAT, "version": VERSION, **payload}, handle)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``) onto the CPU; a model package (a ``.zip`` file, or any file
    holding the package manifest) is read by :func:`.package.read_model_package` into the same keys.

    Raises:
        CheckpointError: missing, damaged, or not a napari-pgps checkpoint or model package.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found.")
    if path.suffix.lower() == ".zip" or is_model_package(path):
        return {"format": FORMAT, "version": VERSION, **read_model_package(path)}
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, OSError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"{path}: damaged or not a napari-pgps checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a napari-pgps checkpoint (no '{FORMAT}' marker).")
    version = int(payload.get("version", 0))
    if version > VERSION:
        raise CheckpointError(f"{path}: written by a newer napari-pgps (format {version}); upgrade napari-pgps.")
    if version < VERSION:
        raise CheckpointError(f"{path}: written by an earlier napari-pgps (format {version}), whose models saw their "
                              "cases as stored, without reorientation or resampling; train the model again.")
    for key in ("config", "model"):
        if key not in payload:
            raise CheckpointError(f"{path}: damaged checkpoint ('{key}' missing).")
    return payload


def find_checkpoint(model: str | os.PathLike) -> Path:
    """The checkpoint a model path means: a ``.pt`` file, a model package (``.zip``), or a run folder's final (else
    last) checkpoint."""
    model = Path(model)
    if model.is_dir():
        for name in (FINAL, LAST):
            if (model / name).is_file():
                return model / name
        raise InputError(f"{model}: no {FINAL} or {LAST} in this folder; is it a napari-pgps run folder?")
    if not model.exists():
        raise InputError(f"{model}: model not found; give a run folder, a checkpoint file or a model package (.zip).")
    return model


def start_from_model(
    config: RunConfig, model: str | os.PathLike, labels: dict[int, str], channels: Sequence[str]
) -> tuple[RunConfig, dict[str, torch.Tensor]]:
    """The configuration and starting weights of a new run that starts from a trained model (``training.init_from``).

    The network (its whole ``model`` section: architecture, plan, spacing),
    the preprocessing and, unless the configuration gives one, the
    normalisation are the model's; a patch size in ``config`` replaces the
    model's if the network still takes its weights. ``training.init_from``
    becomes the checkpoint or package read, as an absolute path.

    Args:
        model: a run folder, a checkpoint or a model package.
        labels: the data's label value -> name; must be the model's.
        channels: the data's input channels, in order; must be the model's.

    Raises:
        InputError: the labels or channels differ, the configuration asks for another network, or the network at
            the patch asked for cannot take the weights.
        CheckpointError: the model cannot be read.
    """
    path = find_checkpoint(model)
    payload = load_checkpoint(path)
    try:
        trained = RunConfig.from_dict(payload["config"], source=str(path))
    except InputError as exc:
        raise CheckpointError(f"{path}: its configuration cannot be read ({exc}).") from None
    theirs, ours = dict(trained.labels or {}), {int(v): str(n) for v, n in labels.items()}
    if theirs != ours:
        differences = []
        for value in sorted(set(theirs) | set(ours)):
            if value not in ours:
                differences.append(f"{value} ('{theirs[value]}') only in the model")
            elif value not in theirs:
                differences.append(f"{value} ('{ours[value]}') only in the data")
            elif theirs[value] != ours[value]:
                differences.append(f"{value} is '{theirs[value]}' in the model, '{ours[value]}' in the data")
        raise InputError(f"{path}: the model's labels differ from the data's: {'; '.join(differences)}. Starting from a "
                         "model's weights needs the same label values and names (dataset.json 'labels'); train from "
                         "scratch otherwise.")
    model_channels = list(trained.channels) if trained.channels else None
    if (model_channels is not None and model_channels != list(channels)) or trained.model.in_channels != len(channels):
        said = model_channels if model_channels is not None else f"{trained.model.in_channels} channel(s)"
        raise InputError(f"{path}: the model takes the channels {said}, the data has {list(channels)}; starting from "
                         "a model's weights needs the same channels in the same order.")
    asked, plan = config.model, trained.model
    conflicts = [f"{name} is {_plain(getattr(plan, name))} there, {_plain(getattr(asked, name))} here"
                 for name in ("architecture", "base_channels", "spacing", "kernel_sizes", "strides", "channels")
                 if getattr(asked, name) is not None and _plain(getattr(asked, name)) != _plain(getattr(plan, name))]
    if conflicts:
        raise InputError(f"the run starts from {path}, whose network it takes: {'; '.join(conflicts)}. Leave these "
                         "out of the configuration and flags (only the patch size may differ), or train from scratch.")
    started = copy.deepcopy(config)
    started.model = copy.deepcopy(plan)
    started.preprocessing = copy.deepcopy(trained.preprocessing)
    started.channels = model_channels
    if not started.normalization:
        started.normalization = copy.deepcopy(trained.normalization)
    started.training.init_from = str(path.resolve())
    weights = payload["model"]
    if asked.patch_size is not None and tuple(asked.patch_size) != tuple(plan.patch_size):
        patch = tuple(int(p) for p in asked.patch_size)
        check_patch_size(patch, patch_divisor(plan), what="final patch size")
        started.model.patch_size = patch
        try:
            build_network(started.model, weights)
        except (RuntimeError, ValueError, KeyError, TypeError, InputError) as exc:
            raise InputError(f"{path}: its {plan.architecture} network at patch {list(patch)} cannot take the model's "
                             f"weights ({str(exc).splitlines()[0][:200]}); leave out the patch size to train at the "
                             f"model's {list(plan.patch_size)}.") from None
    return started, weights


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
