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

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, InputError
from ..files import atomic_write

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
    """Read a checkpoint safely (``weights_only=True``) onto the CPU.

    Raises:
        CheckpointError: missing, damaged, or not a napari-pgps checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found.")
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
    """The checkpoint a model path means: a ``.pt`` file, or a run folder's final (else last) checkpoint."""
    model = Path(model)
    if model.is_dir():
        for name in (FINAL, LAST):
            if (model / name).is_file():
                return model / name
        raise InputError(f"{model}: no {FINAL} or {LAST} in this folder; is it a napari-pgps run folder?")
    if not model.exists():
        raise InputError(f"{model}: model not found; give a run folder or a checkpoint file.")
    return model
