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
state), ``best_mean_dice``, ``last_mean_dice``, ``training_seconds``, ``stages`` (the patch stages as
``[z, y, x, batch, epochs]``, as laid out when the run was last re-planned to its budget), ``recipe`` (each part of
the run's recipe as chosen when it started, :class:`.recipe.Choice` fields as a dict; not in checkpoints written
before it was kept).

Once weight averaging has begun (:mod:`.averaging`), ``model`` holds the averaged weights, the model the run keeps
(what ``segment --model RUN`` uses), ``raw_model`` the weights being trained, and ``weight_average`` the average's
state (:meth:`.averaging.WeightAverage.state_dict`; its weights share their storage with ``model``, so the file holds
them once); a checkpoint without them (averaging not begun, or written before weight averaging existed) trains on
from ``model``.

:func:`checkpoint_payload` takes these from a training run, :func:`restore` puts them back into one.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence

import numpy as np
import torch

from ..config import RunConfig
from ..curriculum import Stage
from ..errors import CheckpointError, InputError
from ..files import atomic_write
from ..models import build_network, check_patch_size, model_kind, patch_divisor
from ..plugins import TrainingPlugin
from . import distributed
from .averaging import WeightAverage
from .file_names import FINAL, LAST
from .package import is_model_package, read_model_package

FORMAT = "napari-pgps-checkpoint"
VERSION = 2
"""2: models train on preprocessed cases (canonical orientation, target spacing, per-channel normalisation)."""


class CheckpointedRun(Protocol):
    """What a checkpoint holds of a training run (the training loop's run, :mod:`.trainer`)."""

    config: RunConfig
    network: torch.nn.Module
    """The network being trained (never the DDP wrapper)."""
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    plugins: Sequence[TrainingPlugin]
    split: dict
    epoch: int
    """Epochs completed."""
    step: int
    stages: tuple[Stage, ...]
    training_seconds: float
    best_mean_dice: float
    last_mean_dice: Optional[float]
    rng: np.random.Generator
    """The sampler's random generator (this rank's)."""
    draw_rng: np.random.Generator
    """The schedule's patch draws (``rng`` itself without torchrun)."""
    context: distributed.DistributedContext
    weight_average: WeightAverage
    """The average of the network's weights over the last part of the run (never begun without averaging)."""
    recipe_choices: Sequence[Any]
    """Each part of the run's recipe (:class:`.recipe.Choice`), so that a resumed run says what it was chosen with."""


def checkpoint_payload(run: CheckpointedRun) -> dict[str, Any]:
    """The checkpoint of ``run`` as it now is (the keys above, less ``format`` and ``version``); collective under
    torchrun (every rank's sampler state is gathered)."""
    payload = {
        "config": run.config.to_dict(),
        "kind": model_kind(run.config),
        "model": run.network.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "plugins": {plugin.name: plugin.state_dict() for plugin in run.plugins},
        "split": run.split,
        "epoch": run.epoch,
        "step": run.step,
        "stages": [[*stage.patch, stage.batch, stage.epochs] for stage in run.stages],
        "training_seconds": run.training_seconds,
        "best_mean_dice": run.best_mean_dice,
        "last_mean_dice": run.last_mean_dice,
        "rng": rng_states(run.rng, run.draw_rng, run.context),
        "recipe": [dataclasses.asdict(choice) for choice in run.recipe_choices],
    }
    if run.weight_average.begun:
        payload.update(model=run.weight_average.network.state_dict(), raw_model=payload["model"],
                       weight_average=run.weight_average.state_dict())
    return payload


def rng_states(rng: np.random.Generator, draw_rng: np.random.Generator,
               context: distributed.DistributedContext = distributed.SINGLE) -> dict[str, Any]:
    """The random states a checkpoint keeps: torch's, CUDA's and the sampler's ``rng`` (``numpy``); a distributed
    run adds every rank's sampler state (``numpy_ranks``, collective) and the schedule's ``draw_rng``
    (``schedule``)."""
    states = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": _plain_state(rng.bit_generator.state),
    }
    if context.enabled:
        states["numpy_ranks"] = distributed.gather_objects(states["numpy"], context)
        states["schedule"] = _plain_state(draw_rng.bit_generator.state)
    return states


def restore(run: CheckpointedRun, state: dict[str, Any]) -> None:
    """Put a checkpoint's optimiser, scheduler, scaler and plug-in states, progress, stages, weight average and
    random states back into ``run``, built as the checkpoint's run was (its network holding ``model``; once averaging
    had begun, the network gets ``raw_model`` back).

    Raises:
        InputError: the run was trained by another number of processes.
    """
    if state.get("weight_average"):
        run.network.load_state_dict(state["raw_model"])
        run.weight_average.load_state_dict(state["weight_average"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    saved = state.get("plugins", {})
    for plugin in run.plugins:
        if plugin.name in saved:
            plugin.load_state_dict(saved[plugin.name])
    run.epoch = int(state["epoch"])
    run.step = int(state["step"])
    if state.get("stages"):  # as laid out when the run was last re-planned to its budget
        run.stages = tuple(Stage(tuple(int(v) for v in s[:3]), int(s[3]), int(s[4])) for s in state["stages"])
    run.training_seconds = float(state.get("training_seconds", 0.0))
    run.best_mean_dice = float(state.get("best_mean_dice", -1.0))
    run.last_mean_dice = state.get("last_mean_dice")
    restore_rng_states(state.get("rng", {}), run.rng, run.draw_rng, run.context)


def restore_rng_states(states: dict[str, Any], rng: np.random.Generator, draw_rng: np.random.Generator,
                       context: distributed.DistributedContext = distributed.SINGLE) -> None:
    """Set the random states :func:`rng_states` returned (this rank's sampler state into ``rng``).

    Raises:
        InputError: they were taken by another number of processes than ``context``'s.
    """
    if "torch" in states:
        torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    streams = states.get("numpy_ranks", [states["numpy"]] if "numpy" in states else [])
    if streams and len(streams) != context.world_size:
        raise InputError(
            f"this run was trained by {len(streams)} process(es) and is being resumed by {context.world_size}; "
            f"resume it with {len(streams)} in all (torchrun: --nnodes times --nproc_per_node)."
        )
    if streams:
        rng.bit_generator.state = streams[context.rank]
    if "schedule" in states and draw_rng is not rng:
        draw_rng.bit_generator.state = states["schedule"]


def _plain_state(state: dict[str, Any]) -> dict[str, Any]:
    """A numpy bit generator's state with plain ints (a checkpoint loads with ``weights_only=True``)."""
    return {k: _plain_state(v) if isinstance(v, dict) else (int(v) if isinstance(v, (np.integer,)) else v) for k, v in state.items()}


def save_checkpoint(payload: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``payload`` (with format and version added) to ``path`` atomically.

    The file is written beside the target, flushed to disk, then renamed over
    it, so a crash leaves either the old checkpoint or the new one, never half.
    """
    path = Path(path)
    with atomic_write(path, "wb") as handle:
        torch.save({"format": FORMAT, "version": VERSION, **payload}, handle)
    return path


def load_checkpoint(path: str | os.PathLike, *, mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``) onto the CPU; a model package (a ``.zip`` file, or any file
    holding the package manifest) is read by :func:`.package.read_model_package` into the same keys.

    ``mmap``: map the checkpoint's tensors from the file instead of reading them (what reads only its configuration
    or figures: the weights are not read into memory).

    Raises:
        CheckpointError: missing, damaged, or not a napari-pgps checkpoint or model package.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found.")
    if path.suffix.lower() == ".zip" or is_model_package(path):
        return {"format": FORMAT, "version": VERSION, **read_model_package(path)}
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
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


def trained_config(payload: dict[str, Any], path: str | os.PathLike) -> RunConfig:
    """The configuration a checkpoint's (or package's) model was trained with, from its payload read from ``path``.

    Raises:
        CheckpointError: the configuration cannot be read.
    """
    try:
        return RunConfig.from_dict(payload["config"], source=str(path))
    except InputError as exc:
        raise CheckpointError(f"{path}: its configuration cannot be read ({exc}).") from None


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
    trained = trained_config(payload, path)
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
