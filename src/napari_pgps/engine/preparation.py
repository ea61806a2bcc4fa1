"""A training run's preparation: everything before its network is built, as one stage that returns a value.

Like nnU-Net's plan-and-preprocess stage, :func:`prepare_run` turns a
configuration and its data into what the training loop starts from
(:class:`PreparedRun`), in this order: the checkpoint of a resumed run (whose
configuration then rules), the data source, the test / training / validation
split (a resumed run's own), the model a new run starts from (``--init-from``), the
data's fingerprint, the resolved configuration (automatic values filled in from
the data and the device), and the preprocessed cases. It reports its progress
as :class:`napari_pgps.events.Preparing` events::

    prepared = yield from prepare_run(config, run_dir, plugins=plugins)
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Generator, Optional, Sequence

import numpy as np
import torch

from ..config import RunConfig, training_methods
from ..data.dataset import TrainingSet
from ..data.preprocessing import PreprocessingPlan
from ..data.source import DataSource, folder_source, memory_source
from ..data.store import PreprocessedDataset
from ..errors import InputError
from ..events import Preparing
from ..plugins import TrainingPlugin
from ..models import build_network
from . import distributed
from .checkpoint import load_checkpoint, start_from_model, trained_config
from .budget import measure_network_step_seconds
from .device import autocast_dtype, pick_device, training_memory_format
from .file_names import LAST
from .recipe import Choice, explain_recipe, from_the_model, is_budgeted, spacing_at_pace, spacing_without_timing
from .resolve import PROFILES, planned_spacing_and_shape, resolve_config


@dataclasses.dataclass
class PreparedRun:
    """What the training loop starts from. Close it (:meth:`close`) when the run ends."""

    config: RunConfig
    """The resolved configuration (a resumed run's is its checkpoint's, on the device asked for now)."""
    device: torch.device
    """The device asked for (``training.device``; ``auto`` picked)."""
    source: DataSource
    """Where the cases come from (open until :meth:`close`)."""
    store: PreprocessedDataset
    """The preprocessed cases: (C, Z, Y, X) images and (Z, Y, X) labels, in the plan's orientation and spacing."""
    split: dict[str, list[str]]
    """``{"training": [...], "validation": [...]}`` case names, and ``"test": [...]`` where the configuration sets
    some aside (``data.test_fraction``; never seen by the run)."""
    checkpoint: Optional[dict[str, Any]] = None
    """The last checkpoint of the run being resumed (:func:`.checkpoint.load_checkpoint`), else ``None``."""
    initial_weights: Optional[dict[str, torch.Tensor]] = None
    """The state dict a new run starts from (given, or the ``training.init_from`` model's), else ``None``."""
    recipe: tuple[Choice, ...] = ()
    """Each part of the run's recipe and why (:func:`.recipe.explain_recipe`; a resumed run's as its checkpoint kept
    it, or, in a checkpoint from before the recipe was kept, as its configuration stands: every part its own)."""

    def label_fractions(self) -> tuple[float, ...]:
        """The share of each label's voxels (background first, in label index order) over the training cases."""
        count = len(self.config.labels)
        counts = np.zeros(count, dtype=np.int64)
        for name in self.split["training"]:
            found = self.store.info(name)["label_counts"][:count]
            counts[: len(found)] += found
        return tuple(float(c) / max(int(counts.sum()), 1) for c in counts)

    def close(self) -> None:
        """Close the data source."""
        self.source.close()


def prepare_run(
    config: RunConfig,
    run_dir: Optional[Path],
    *,
    dataset: Optional[TrainingSet] = None,
    resume: bool = False,
    initial_weights: Optional[dict[str, torch.Tensor]] = None,
    plugins: Sequence[TrainingPlugin] = (),
) -> Generator[Preparing, None, PreparedRun]:
    """Prepare a training run, yielding its progress; returns the :class:`PreparedRun`.

    The arguments are :func:`.trainer.train`'s; ``run_dir`` is read only when resuming (its last checkpoint).

    Raises:
        InputError: a method the configuration asks for is not among ``plugins``; no data; a resumed run's cases
            are not in its data now; the data does not fit the configuration or the model started from.
        CheckpointError: the checkpoint resumed or the model started from cannot be read.
    """
    device = pick_device(config.training.device)
    state: Optional[dict[str, Any]] = None
    if resume:
        state = load_checkpoint(run_dir / LAST)
        requested_device = config.training.device
        config = trained_config(state, run_dir / LAST)
        config.training.device = requested_device
    missing = [name for name in training_methods(config) if name not in {p.name for p in plugins}]
    if missing:
        raise InputError(f"the configuration asks for {', '.join(missing)}, which this training loop was not given; "
                         "train with napari_pgps.train (or the command line), which plugs in every method.")
    if dataset is None and not config.data.path:
        raise InputError("no training data: give a dataset folder (--data DIR).")
    source = memory_source(dataset) if dataset is not None else folder_source(
        config.data.path, config.data.max_cases, config.data.preprocessed)
    try:
        if state is not None and state.get("split"):
            split = state["split"]
            unknown = sorted(set(split["training"] + split["validation"] + split.get("test", [])) - set(source.names))
            if unknown:
                raise InputError(f"the run was trained on cases that are not in its data now: {', '.join(unknown[:5])}.")
        else:
            data = config.data
            split = source.split(data.fold, data.folds, data.validation_fraction, config.training.seed,
                                 data.test_fraction)
        given = config
        if state is None and config.training.init_from:
            if initial_weights is None:  # train --init-from: the model's network, weights and preprocessing
                config, initial_weights = start_from_model(config, config.training.init_from, source.labels,
                                                           source.channels)
            else:  # the weights given are where this run starts (e.g. a pruned copy of a model)
                config = copy.deepcopy(config)
                config.training.init_from = None
        prep = config.preprocessing
        test = split.get("test", [])  # neither planned from, preprocessed, trained nor validated on
        fingerprint = yield from _reporting("fingerprint", source.fingerprint(prep.orientation, prep.crop_to_nonzero,
                                                                              test))
        asked = config
        resolve = lambda c: resolve_config(c, labels=source.labels, channels=source.channels,  # noqa: E731
                                           fingerprint=fingerprint, device=device, ignore_label=source.ignore_label)
        config = resolve(config)
        profile = PROFILES.get(device.type, PROFILES["cpu"])
        spacing, coarser = yield from _spacing(asked, config, fingerprint, device,
                                               is_budgeted(asked, profile.time_budget))
        if coarser is not None:  # the recipe's coarser spacing: the run planned again at it
            config = resolve(_with_spacing(asked, coarser))
        recipe = (_recipe_of(state) if state is not None else ()) or explain_recipe(
            asked, config, device.type, profile.time_budget, spacing)
        if state is None and config.training.init_from:
            recipe = from_the_model(recipe, given, config.training.init_from)
        store = yield from _reporting("preprocessing", source.preprocessed(PreprocessingPlan.of(config), test))
    except BaseException:  # a failure, or the run's events closed while preparing
        source.close()
        raise
    return PreparedRun(config, device, source, store, split, state, initial_weights, recipe)


def _spacing(asked: RunConfig, resolved: RunConfig, fingerprint, device: torch.device, budgeted: bool):
    """The recipe's spacing part for ``resolved`` and the coarser spacing to plan it at again, or ``None``
    (:func:`.recipe.spacing_without_timing`, else a step at the final patch timed on random crops,
    :func:`.recipe.spacing_at_pace`), yielding a Preparing event ("timing") around the timed step."""
    _, median_shape = planned_spacing_and_shape(resolved, fingerprint)
    choice = spacing_without_timing(asked, resolved, median_shape, budgeted, distributed.context_from_env().enabled)
    if choice is not None:
        return choice, None
    yield Preparing(task="timing", done=0, total=1)
    model, t = resolved.model, resolved.training
    low_precision = autocast_dtype(device, t.mixed_precision)
    seconds = measure_network_step_seconds(build_network(model), (t.batch_size, model.in_channels, *model.patch_size),
                                           device, low_precision, training_memory_format(device, low_precision))
    yield Preparing(task="timing", done=1, total=1)
    return spacing_at_pace(resolved, median_shape, seconds)


def _recipe_of(state: dict[str, Any]) -> tuple[Choice, ...]:
    """The recipe a checkpoint kept (:func:`.checkpoint.checkpoint_payload`), as chosen when its run started; ``()``
    where it kept none."""
    fields = {field.name for field in dataclasses.fields(Choice)}
    return tuple(Choice(**{k: v for k, v in saved.items() if k in fields}) for saved in state.get("recipe") or ())


def _with_spacing(config: RunConfig, spacing: tuple[float, float, float]) -> RunConfig:
    """A copy of ``config`` trained at ``spacing`` (mm, Z, Y, X)."""
    copied = copy.deepcopy(config)
    copied.model.spacing = spacing
    return copied


def _reporting(task: str, work):
    """Run a (done, total)-yielding generator, yielding a Preparing event for each; returns its result."""
    while True:
        try:
            done, total = next(work)
        except StopIteration as stop:
            return stop.value
        yield Preparing(task=task, done=done, total=total)
