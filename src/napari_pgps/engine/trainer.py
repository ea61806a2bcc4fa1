"""The training loop, as a generator of typed events.

    for event in train(config, run_dir):
        ...

Stop and pause requests (:class:`TrainingControl`) are honoured between steps.
A checkpoint is written atomically after every epoch, so a stopped or failed
run keeps its last good one; ``resume=True`` continues from it with the
optimiser, scheduler and random-number states restored.

Methods that change training from within the loop (the PDL data curriculum,
PSP-Seg pruning) are plug-ins (:mod:`napari_pgps.plugins`) given to
:func:`train`; the loop calls their hooks and saves their state in
checkpoints, and knows nothing else of them. ``napari_pgps.train`` plugs in
every method napari-pgps has.

Started by ``torchrun`` the loop trains with DDP (:mod:`.distributed`): each
step's global batch is split over the ranks, only rank 0 writes files, and
every rank yields the same events except that a ``StepDone``'s crops and class
fractions are its own (its ``batch`` and ``loss`` are the global ones).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from ..config import CONFIG_FILE, RunConfig, training_methods
from ..curriculum import (
    RANDOM_PATCH_SCHEDULES,
    ScheduleOptions,
    Stage,
    build_schedule,
    crops_per_case,
    stage_at,
    stages_laid_out_again,
)
from ..data.augmentation import Augmentation
from ..data.dataset import TrainingSet
from ..data.loader import BatchLoader
from ..data.preprocessing import PreprocessingPlan
from ..data.sampler import PatchSampler
from ..data.source import folder_source, memory_source
from ..data.store import PreprocessedDataset, StoredImages
from ..errors import InputError
from ..events import (
    METRICS_FILE,
    CheckpointSaved,
    Event,
    Finished,
    Paused,
    Preparing,
    Replanned,
    Resumed,
    RunStarted,
    StageFinished,
    StageStarted,
    StepDone,
    Validated,
)
from ..files import write_text_atomically
from ..models import build_network, count_parameters, deep_supervision_heads, model_kind, patch_divisor, split_outputs
from ..models.architectures import minimum_patch
from ..plugins import TrainingPlugin
from . import distributed, run_folder
from .budget import RunCost, measure_step_cost, plan_epochs
from .checkpoint import BEST, FINAL, LAST, SPLITS_FILE, load_checkpoint, save_checkpoint, start_from_model
from .control import TrainingControl
from .device import autocast_dtype, cpu_convolutions, describe, pick_device, training_memory_format
from .inference import predict_probabilities, window_count
from .losses import BatchDiceCELoss
from .metrics import dice_per_label, mean_of, summarize_dice
from .progress import restart_log
from .resolve import resolve_config

REPLAN_MARGIN = 0.05
"""A run planned to a budget is planned again at the end of an epoch when, at the speed its steps go now, it would
end more than this share of the budget before or after it (or more than ``REPLAN_MARGIN_MOST_SECONDS``)."""

REPLAN_MARGIN_MOST_SECONDS = 60.0
"""The re-plan's band in seconds for long budgets: 5% of 45 minutes left 135 s of a user's budget unused (measured:
runs ending 3.5-4.3% early), 5% of a night 24 minutes."""


def replan_margin(time_budget: float) -> float:
    """Seconds a run planned to ``time_budget`` seconds may be projected to end before or after it without a re-plan."""
    return min(REPLAN_MARGIN * time_budget, REPLAN_MARGIN_MOST_SECONDS)


EVIDENCE_SHARE = 0.25
"""Only steps of at least this share of the final stage's voxels (batch x patch) say how fast the rest of a run will go.

Measured (hippocampus, 2-core CPU, PGPS Efficiency to 3 minutes): its three smallest stages (at most 5% of the
final step's voxels) took 1.5-2.9x their timed cost, the ones from 27% on 0.85-1.22x (two runs); a re-plan after the first
epoch, scaling every stage by its 2.1x, left 44% of the budget unused."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def train(
    config: RunConfig,
    run_dir: Optional[str | Path] = None,
    *,
    dataset: Optional[TrainingSet] = None,
    control: Optional[TrainingControl] = None,
    resume: bool = False,
    initial_weights: Optional[dict[str, torch.Tensor]] = None,
    plugins: Sequence[TrainingPlugin] = (),
) -> Iterator[Event]:
    """Train a segmentation network, yielding events as it goes.

    Args:
        config: the run's configuration; automatic values are resolved here.
            With ``resume``, the configuration stored in the run's last
            checkpoint is used instead (only ``training.device`` is taken from
            ``config``).
        run_dir: a new folder for ``config.yaml``, ``splits.json``,
            ``metrics.jsonl`` and the checkpoints, made and locked before the
            data is read (:mod:`.run_folder`: one that is in use by another run, or already
            holds a checkpoint, is refused unless resuming it; the files of a
            run that ended before its first checkpoint are replaced); ``None`` trains without writing anything.
        dataset: labelled cases in memory (e.g. napari layers); read from
            ``config.data.path`` when ``None``.
        control: stop / pause requests from another thread.
        resume: continue the run in ``run_dir`` from its last checkpoint, on its saved split.
        initial_weights: a state dict to start from instead of random weights
            (fine-tuning, e.g. a channel-pruned network; ``config.model`` must describe it). Without them,
            ``config.training.init_from`` names a trained model to start from (its network and weights).
        plugins: training-loop plug-ins (:class:`napari_pgps.plugins.TrainingPlugin`), called in this order;
            every method :func:`napari_pgps.config.training_methods` names must be among them.

    Yields:
        RunStarted, StageStarted, StepDone, StageFinished, Paused, Resumed,
        Validated, CheckpointSaved, the plug-ins' events (CasesAdded,
        PruningStep) and finally Finished.
    """
    run_dir = Path(run_dir) if run_dir is not None else None
    with run_folder.claim(run_dir, resume=resume, lock=distributed.context_from_env().is_main) as notes:
        yield from _train(config, run_dir, dataset, control or TrainingControl(), resume, initial_weights, plugins, notes)


def _train(config, run_dir, dataset, control, resume, initial_weights, plugins, notes) -> Iterator[Event]:
    """:func:`train` in its claimed run folder; ``notes`` (what the user should know of the folder) open RunStarted's."""
    device = pick_device(config.training.device)
    state: Optional[dict[str, Any]] = None
    if resume:
        state = load_checkpoint(run_dir / LAST)
        requested_device = config.training.device
        config = RunConfig.from_dict(state["config"], source=str(run_dir / LAST))
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
            unknown = sorted(set(split["training"] + split["validation"]) - set(source.names))
            if unknown:
                raise InputError(f"the run was trained on cases that are not in its data now: {', '.join(unknown[:5])}.")
        else:
            data = config.data
            split = source.split(data.fold, data.folds, data.validation_fraction, config.training.seed)
        if state is None and config.training.init_from:
            if initial_weights is None:  # train --init-from: the model's network, weights and preprocessing
                config, initial_weights = start_from_model(config, config.training.init_from, source.labels,
                                                           source.channels)
            else:  # the weights given are where this run starts (e.g. a pruned copy of a model)
                config = copy.deepcopy(config)
                config.training.init_from = None
        prep = config.preprocessing
        fingerprint = yield from _reporting("fingerprint", source.fingerprint(prep.orientation, prep.crop_to_nonzero))
        config = resolve_config(config, labels=source.labels, channels=source.channels, fingerprint=fingerprint,
                                device=device, ignore_label=source.ignore_label)
        store = yield from _reporting("preprocessing", source.preprocessed(PreprocessingPlan.of(config)))
        with distributed.process_group(device) as (context, device):
            run = _Run(config, run_dir, store, split, device, control, state, context, initial_weights, plugins, notes)
            try:
                yield from run.run()
            finally:
                run.loader.close()
    finally:
        source.close()


def _reporting(task: str, work):
    """Run a (done, total)-yielding generator, yielding a Preparing event for each; returns its result."""
    while True:
        try:
            done, total = next(work)
        except StopIteration as stop:
            return stop.value
        yield Preparing(task=task, done=done, total=total)


@dataclasses.dataclass(frozen=True)
class _BudgetPlan:
    """What a run planned to a time budget was planned from."""

    step_seconds: Callable[[Stage], float]
    """A step's timed seconds at a stage's patch and batch."""
    validation_seconds: float
    cap: Optional[int]
    """The most epochs the user allowed (``training.epochs`` given with the budget), if any."""


class _Run:
    """One training run's state (what plug-ins see, :class:`napari_pgps.plugins.TrainingRun`); :meth:`run` yields the events."""

    def __init__(self, config, run_dir, store: PreprocessedDataset, split: dict, device, control, state,
                 context=distributed.SINGLE, initial_weights=None, plugins=(), notes=()):
        self.config: RunConfig = config
        self.run_dir: Optional[Path] = run_dir
        self.folder_notes: tuple[str, ...] = tuple(notes)
        """What the user should know of the run folder (its files that this run replaces), for RunStarted."""
        self.context: distributed.DistributedContext = context
        self.writes = run_dir is not None and context.is_main
        self.device = device
        self.control = control
        t = config.training
        self.label_names = [config.labels[v] for v in sorted(config.labels)][1:]
        self.num_labels = len(config.labels)
        self.ignore_index = PreprocessingPlan.of(config).ignore_index
        """The label index of nnU-Net v2's ignore label in the store (not a class), or ``None``."""
        torch.manual_seed(t.seed)
        self.rng, self.draw_rng = distributed.generators(t.seed, context)
        self.store = store
        self._geometries: dict[str, Any] = {}
        self.training_names = list(split["training"])
        self.training_images = StoredImages(store, self.training_names)
        self.split = split
        val_names = split["validation"]
        counts = np.zeros(self.num_labels, dtype=np.int64)
        for name in self.training_names:
            found = store.info(name)["label_counts"][: self.num_labels]
            counts[: len(found)] += found
        self.volume_fractions = tuple(float(c) / max(int(counts.sum()), 1) for c in counts)
        self.sampler = PatchSampler(
            store,
            self.training_names,
            num_labels=self.num_labels,
            rng=self.rng,
            foreground_probability=config.data.foreground_oversampling,
            oversampling=config.data.oversampling,
            augmentation=Augmentation(config.data.augmentation),
        )
        self.loader = BatchLoader(self.sampler, config.data.loader_workers)
        self.validating_on_training = not val_names
        self.validation_names = list(val_names) or self.training_names
        self.low_precision = autocast_dtype(device, t.mixed_precision)
        self.memory_format = training_memory_format(device, self.low_precision)
        self.network = build_network(config.model, state["model"] if state is not None else initial_weights).to(
            device, memory_format=self.memory_format)
        self.amp = self.low_precision is torch.float16
        self.model = distributed.wrap(self.network, device, context)
        self.loss = _loss(deep_supervision=deep_supervision_heads(config.model) > 0, across_ranks=context.enabled,
                          ignore_index=self.ignore_index)
        self.started_at = time.perf_counter()
        self._probe_sampler: Optional[PatchSampler] = None
        self._probe_optimizer: Optional[torch.optim.Optimizer] = None
        self._saved_config: Optional[dict[str, Any]] = None
        """The configuration as ``config.yaml`` last received it."""
        self._budget_plan: Optional[_BudgetPlan] = None
        """What a run planned to a budget was planned from (kept to plan it again)."""
        self._paced = (0.0, 0.0)
        """(seconds taken, seconds the plan gave) of the steps that show the run's pace (see :meth:`_replan`)."""
        if device.type == "cuda":
            # cuDNN picks its fastest kernels once per input shape (before the budget's timed steps, which then
            # include it): worth it for the handful of PGPS stage shapes, as nnU-Net does for its one, not for
            # a patch drawn anew every step
            torch.backends.cudnn.benchmark = config.curriculum.schedule not in RANDOM_PATCH_SCHEDULES
        self.expected_seconds = self._plan_to_budget() if t.time_budget and state is None else None
        self.optimizer = _optimizer(self.network, t)
        self.scheduler = torch.optim.lr_scheduler.PolynomialLR(self.optimizer, total_iters=t.epochs, power=t.poly_exponent)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.schedule = _schedule(config)
        self.final_batch = self.schedule.final_batch
        self.distributed = context.enabled
        distributed.check_batch(min(s.batch for s in self.schedule.stages + self.schedule.choices), context)
        self.segmentation_losses: list[float] = []
        self.stages = self.schedule.stages
        self.plugins = list(plugins)
        for plugin in self.plugins:
            plugin.start(self)
        self.epoch = 0
        self.step = 0
        self.steps_redone_in_fp32 = 0
        self.training_seconds = 0.0
        self.best_mean_dice = -1.0
        self.last_mean_dice: Optional[float] = None
        if state is not None:
            self._restore(state)
        self.train_count, self.val_count = len(self.training_names), len(val_names)

    # -- the loop ---------------------------------------------------------
    def run(self) -> Iterator[Any]:
        t = self.config.training
        if self.writes:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._save_config()
            write_text_atomically(self.run_dir / SPLITS_FILE, json.dumps(self.split, indent=1) + "\n")
            restart_log(self.run_dir / METRICS_FILE, self.epoch, self.step)  # a resumed run's steps are logged once
        yield self._log(
            RunStarted(
                run_dir=str(self.run_dir) if self.run_dir else None,
                device=describe(self.device, self.low_precision),
                training_cases=self.train_count,
                validation_cases=self.val_count,
                parameters=count_parameters(self.network),
                start_epoch=self.epoch,
                epochs=t.epochs,
                iterations_per_epoch=t.iterations_per_epoch,
                final_patch=tuple(self.config.model.patch_size),
                schedule=self.schedule.name,
                kind=model_kind(self.config),
                architecture=self.config.model.architecture,
                label_names=tuple(self.config.labels[v] for v in sorted(self.config.labels)),
                volume_class_fractions=self.volume_fractions,
                time_budget=t.time_budget,
                expected_seconds=self.expected_seconds,
                notes=self.folder_notes + tuple(note for plugin in self.plugins for note in plugin.notes(self)),
            )
        )
        stopped = False
        current_stage = -1
        stage_fractions: list[tuple[float, ...]] = []
        self.network.train()
        while self.epoch < t.epochs and not stopped:
            index = stage_at(self.stages, self.epoch)
            stage = self.stages[index]
            if index != current_stage:
                current_stage, stage_fractions = index, []
                yield self._log(StageStarted(stage=index, epoch=self.epoch, patch=stage.patch, batch=stage.batch))
            for event in self._epoch_start_events():
                yield self._log(event)
            plans = [self._plan(stage) for _ in range(t.iterations_per_epoch)]
            epoch_step_seconds: list[float] = []
            batches = self.loader.batches(plan for plan, _ in plans)
            for _, batch_size in plans:
                if self.control.paused and not self.control.stop_requested:
                    yield self._log(Paused(epoch=self.epoch, step=self.step))
                    while not self.control.wait_until_resumed(0.1):
                        pass
                    if not self.control.stop_requested:
                        yield self._log(Resumed(epoch=self.epoch, step=self.step))
                if distributed.any_rank(self.control.stop_requested, self.context):
                    stopped = True
                    break
                step = self._train_step(batches, batch_size)
                stage_fractions.append(step.class_fractions)
                epoch_step_seconds.append(step.seconds)
                yield self._log(step)
            batches.close()
            if stopped:
                break
            if self._budget_plan is not None:
                replanned = self._replan(stage, epoch_step_seconds)
                if replanned is not None:
                    yield self._log(replanned)
            if self.epoch + 1 == t.epochs or stage_at(self.stages, self.epoch + 1) != current_stage:
                yield self._log(self._stage_finished(current_stage, stage_fractions))
                stage_fractions = []
            losses = {"segmentation": float(np.mean(self.segmentation_losses))}
            for plugin in self.plugins:
                plugin.epoch_end(self, self.epoch, losses)
            self.segmentation_losses = []
            self.scheduler.step()
            self.epoch += 1
            out_of_time = bool(t.time_budget) and time.perf_counter() - self.started_at > t.time_budget
            if self.epoch % t.validate_every == 0 or self.epoch == t.epochs or out_of_time:
                yield self._log(self._validate())
            for saved in self._save_checkpoints():
                yield self._log(saved)
            if out_of_time:  # slower than planned (e.g. a busy machine): the budget holds, the last epochs go
                break
        final = None
        if not stopped and self.run_dir is not None:
            final = self._write(FINAL, self._payload())
            yield self._log(CheckpointSaved(epoch=self.epoch, path=final))
        yield self._log(
            Finished(
                stopped=stopped,
                epochs_completed=self.epoch,
                steps=self.step,
                training_seconds=self.training_seconds,
                final_mean_dice=self.last_mean_dice,
                steps_redone_in_fp32=self.steps_redone_in_fp32,
                checkpoint=final or (str(self.run_dir / LAST) if self.run_dir and (self.run_dir / LAST).exists() else None),
            )
        )

    def _stage_finished(self, index: int, fractions: list[tuple[float, ...]]) -> StageFinished:
        stage = self.stages[index]
        return StageFinished(
            stage=index,
            epoch=self.epoch,
            patch=stage.patch,
            batch=stage.batch,
            steps=len(fractions),
            class_fractions=tuple(float(f) for f in np.mean(fractions, axis=0)),
        )

    def _epoch_start_events(self) -> list[Event]:
        """The plug-ins' epoch-start events; their time counts as training time."""
        start = time.perf_counter()
        events = [event for plugin in self.plugins for event in plugin.epoch_start(self, self.epoch)]
        self.training_seconds += time.perf_counter() - start
        return events

    def _plan(self, stage) -> tuple[Any, int]:
        """One step's batch plan (this rank's share of the global batch) and the global batch size."""
        patch, batch_size = self.schedule.draw(stage, self.draw_rng)
        share = distributed.batch_share(batch_size, self.context)
        return self.sampler.plan(patch, batch_size, crops_per_case(batch_size, self.schedule.final_batch), share), batch_size

    def _train_step(self, batches: Iterator[Any], batch_size: int) -> StepDone:
        start = time.perf_counter()
        batch = next(batches)
        waited = time.perf_counter() - start
        images, labels = torch.from_numpy(batch.images), torch.from_numpy(batch.labels.astype(np.int64))
        if self.device.type == "cuda":
            images, labels = images.pin_memory(), labels.pin_memory()
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        labels = labels.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        loss, norm = self._backward(images, labels)
        if self.low_precision is torch.bfloat16 and not bool(torch.isfinite(norm)):
            # A non-finite bf16 gradient: that step is computed again in fp32. (The known cause, PyTorch's wrong
            # bf16 weight gradient of 2-slice-deep convolutions, is kept out by ShallowSafeConv3d; the count of
            # redone steps in the run's summary shows whether another appears.)
            self.optimizer.zero_grad(set_to_none=True)
            loss, norm = self._backward(images, labels, low_precision=False)
            self.steps_redone_in_fp32 += 1
        self.scaler.step(self.optimizer)
        self.scaler.update()
        value = distributed.mean_over_ranks(loss.detach(), self.context)
        if not np.isfinite(value):
            raise TrainingDiverged(
                f"training diverged at step {self.step + 1} (loss {value}); the last good checkpoint is kept. "
                "Try a lower learning rate."
            )
        seconds = time.perf_counter() - start
        self.step += 1
        self.training_seconds += seconds
        boxes = [self._input_box(i, origin, batch.images.shape[2:]) for i, origin in zip(batch.case_indices, batch.origins)]
        return StepDone(
            epoch=self.epoch,
            step=self.step,
            loss=value,
            patch=tuple(int(p) for p in batch.images.shape[2:]),
            batch=batch_size,
            class_fractions=batch.class_fractions,
            seconds=seconds,
            learning_rate=float(self.optimizer.param_groups[0]["lr"]),
            crop_cases=tuple(self.training_names[i] for i in batch.case_indices),
            crop_origins=tuple(box[0] for box in boxes),
            crop_sizes=tuple(box[1] for box in boxes),
            data_seconds=waited,
        )

    def _plan_to_budget(self) -> float:
        """Set ``training.epochs`` (and, when even one epoch would not fit, the steps per epoch) so the run fits its
        time budget, from steps and a validation window batch timed on this machine; returns the predicted seconds.

        The timed steps (a warm-up and two per probed size, on real crops) change no weight: their optimiser is a
        throw-away one with a learning rate and weight decay of zero.
        """
        t, model = self.config.training, self.config.model
        cap = t.epochs
        t.epochs = max(cap or 0, 1000)  # every stage size of the schedule
        probe = _schedule(self.config)
        sizes = _probe_sizes(probe, np.random.default_rng(t.seed))
        self._probe_optimizer = _optimizer(self.network, dataclasses.replace(t, learning_rate=0.0, weight_decay=0.0))
        cost = measure_step_cost(self._timed_step, sizes)
        self._probe_optimizer = None  # its moments are a whole copy of the weights' size
        windows = sum(math.ceil(window_count(self.store.image(name).shape[1:], model.patch_size) / t.batch_size)
                      for name in self.validation_names)
        validation = windows * self._timed_windows()

        random_step = None
        if probe.choices or probe.axis_sizes:  # a patch drawn every step: the expected voxels of a step
            random_step = cost.seconds(probe.relative_voxels() * probe.final_batch * math.prod(probe.final_patch))

        def step_seconds(stage: Stage) -> float:
            return random_step if random_step is not None else cost.at(stage.patch, stage.batch)

        def stages_for(epochs: int):
            t.epochs = epochs
            return [(stage.epochs, step_seconds(stage)) for stage in _schedule(self.config).stages]

        run_cost = RunCost(stages_for, validation, t.validate_every)
        before_training = time.perf_counter() - self.started_at
        plan = plan_epochs(t.time_budget - before_training, run_cost, t.iterations_per_epoch)
        t.epochs = min(plan.epochs, cap) if cap else plan.epochs
        t.iterations_per_epoch = plan.iterations_per_epoch
        self._budget_plan = _BudgetPlan(step_seconds, validation, cap)
        return before_training + run_cost(t.epochs, t.iterations_per_epoch)

    def _replan(self, stage: Stage, step_seconds: list[float]) -> Optional[Replanned]:
        """At the end of an epoch of a run planned to a budget: when, at the pace its steps have gone so far (their
        seconds against the plan's timed cost of the same steps, applied to every step and validation left), the
        run would end more than :func:`replan_margin` before or after the budget (5% of it, at most 60 s), plan the
        epochs left again so that it ends within it.

        Only the steps of stages of at least a quarter of the final step's voxels are taken as evidence
        (``EVIDENCE_SHARE``), all of them pooled: one stage's own error (PGPS Efficiency's stages of one epoch
        each differ by up to 20%) would re-plan the run at every stage. The stages are laid out again for the new
        number of epochs (:func:`stages_laid_out_again`: what is trained stays, the rest shares the epochs left by
        the schedule's proportions) and the learning-rate decay ends with them; plug-ins that fixed their plan at
        the start (PSP-Seg's pruning window) keep it.
        """
        plan, t = self._budget_plan, self.config.training
        if not step_seconds or stage.voxels_per_step < EVIDENCE_SHARE * self.final_batch * math.prod(self.schedule.final_patch):
            return None
        self._paced = (self._paced[0] + sum(step_seconds), self._paced[1] + len(step_seconds) * plan.step_seconds(stage))
        done = self.epoch + 1
        pace = distributed.mean_over_ranks(torch.tensor(self._paced[0] / self._paced[1]), self.context)
        elapsed = distributed.mean_over_ranks(torch.tensor(time.perf_counter() - self.started_at), self.context)
        pace = min(max(pace, 0.25), 4.0)

        def rest(epochs: int) -> list[tuple[int, float]]:
            """The stages' epochs after ``done`` in a run of ``epochs`` epochs, with a step's seconds at this pace."""
            parts, start = [], 0
            for laid in stages_laid_out_again(self.stages, done, epochs):
                parts.append((max(0, min(start + laid.epochs, epochs) - max(start, done)), plan.step_seconds(laid) * pace))
                start += laid.epochs
            return parts

        left = RunCost(lambda more: rest(done + more), plan.validation_seconds * pace, t.validate_every)
        budget_left = t.time_budget - elapsed
        if abs(left(t.epochs - done, t.iterations_per_epoch) - budget_left) <= replan_margin(t.time_budget):
            return None
        more = 0 if left(1, t.iterations_per_epoch) > budget_left else plan_epochs(budget_left, left, t.iterations_per_epoch).epochs
        epochs = min(done + more, plan.cap) if plan.cap else done + more
        if epochs == t.epochs:
            return None
        self.stages = stages_laid_out_again(self.stages, done, epochs)
        t.epochs = epochs
        self.scheduler.total_iters = epochs
        self.expected_seconds = elapsed + left(epochs - done, t.iterations_per_epoch)
        self._save_config()
        return Replanned(epoch=done, slowdown=pace, epochs=epochs, expected_seconds=self.expected_seconds)

    def _timed_step(self, patch: tuple[int, int, int], batch_size: int) -> None:
        """What a training step costs, without changing a weight: forward and backward on real crops, gradient
        clipping, and a step of the zero-learning-rate probe optimiser (skipped, as its arithmetic would turn the
        weights into NaN, when the gradient is not finite).

        The crops come from a copy of the sampler with its own random state, so the run's own draws are not moved.
        """
        if self._probe_sampler is None:
            self._probe_sampler = copy.copy(self.sampler)
            self._probe_sampler.rng = np.random.default_rng(self.config.training.seed + 1)
        batch = self._probe_sampler.sample(patch, batch_size)
        images = torch.from_numpy(batch.images).to(self.device).contiguous(memory_format=self.memory_format)
        labels = torch.from_numpy(batch.labels.astype(np.int64)).to(self.device)
        with self._autocast():
            loss = self.loss(split_outputs(self.model(images).float(), images), labels)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.config.training.gradient_clip)
        if bool(torch.isfinite(norm)):
            self._probe_optimizer.step()
        self._probe_optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _backward(self, images: torch.Tensor, labels: torch.Tensor, low_precision: bool = True):
        """The loss of one batch and its clipped gradient norm (fp32 throughout when not `low_precision`)."""
        with self._autocast(low_precision):
            loss = self._loss(images, labels)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        return loss, torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.config.training.gradient_clip)

    def _autocast(self, low_precision: bool = True):
        """The training step's precision (see ``TrainingConfig.mixed_precision``); fp32 when not `low_precision`."""
        return torch.autocast(device_type=self.device.type, dtype=self.low_precision or torch.float32,
                              enabled=low_precision and self.low_precision is not None)

    def _timed_windows(self) -> float:
        """Seconds of one sliding-window batch at the final patch (the median of two after a warm-up), run as
        validation runs its windows (:func:`.inference.predict_probabilities`: fp16 autocast on CUDA, oneDNN on the
        CPU)."""
        model, t = self.config.model, self.config.training
        windows = torch.zeros((t.batch_size, model.in_channels, *model.patch_size), device=self.device)
        times = []
        self.network.eval()
        autocast = torch.autocast("cuda", dtype=torch.float16, enabled=self.amp)
        with torch.inference_mode(), autocast, cpu_convolutions(self.device):
            for _ in range(3):
                start = time.perf_counter()
                self.network(windows)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                times.append(time.perf_counter() - start)
        self.network.train()
        return float(np.median(times[1:]))

    def _input_box(self, case: int, origin, size) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """A crop's (first voxel, size) on its case's own grid."""
        name = self.training_names[case]
        if name not in self._geometries:
            self._geometries[name] = self.store.geometry(name)
        return self._geometries[name].input_box(origin, size, self.config.preprocessing.orientation)

    def _loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Segmentation loss (deep supervision included) plus the plug-ins' terms; the first is kept for the epoch mean."""
        output = next((o for o in (p.forward(self, images) for p in self.plugins) if o is not None), None)
        if output is None:
            output = self.model(images)
        loss = self.loss(split_outputs(output.float(), images), labels)
        self.segmentation_losses.append(float(loss.detach()))
        for plugin in self.plugins:
            for term in plugin.loss_terms(self, images, labels).values():
                loss = loss + term
        return loss

    def _validate(self) -> Validated:
        start = time.perf_counter()
        per_case = []
        for name in distributed.shard(self.validation_names, self.context):
            truth = np.asarray(self.store.labels(name))
            probabilities = predict_probabilities(
                self.network,
                np.array(self.store.image(name)),
                self.config.model.patch_size,
                self.device,
                batch_size=self.config.training.batch_size,
                mixed_precision=self.config.training.mixed_precision,
            )
            ignored = truth == self.ignore_index if self.ignore_index is not None else None  # scored as nothing
            per_case.append(dice_per_label(np.argmax(probabilities, axis=0), truth, self.num_labels, ignore=ignored))
        self.network.train()
        dice = summarize_dice(distributed.unshard(per_case, self.context), self.label_names)
        self.last_mean_dice = mean_of(dice)
        return Validated(epoch=self.epoch, dice_per_label=dice, mean_dice=self.last_mean_dice,
                         seconds=time.perf_counter() - start, on_training_cases=self.validating_on_training)

    # -- checkpoints --------------------------------------------------------
    def _payload(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "kind": model_kind(self.config),
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "plugins": {plugin.name: plugin.state_dict() for plugin in self.plugins},
            "split": self.split,
            "epoch": self.epoch,
            "step": self.step,
            "stages": [[*stage.patch, stage.batch, stage.epochs] for stage in self.stages],
            "training_seconds": self.training_seconds,
            "best_mean_dice": self.best_mean_dice,
            "last_mean_dice": self.last_mean_dice,
            "rng": self._rng_states(),
        }

    def _rng_states(self) -> dict[str, Any]:
        """Random states; distributed runs add every rank's sampler state (``numpy_ranks``) and the schedule's."""
        states = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": _plain_state(self.rng.bit_generator.state),
        }
        if self.context.enabled:
            states["numpy_ranks"] = distributed.gather_objects(states["numpy"], self.context)
            states["schedule"] = _plain_state(self.draw_rng.bit_generator.state)
        return states

    def _save_checkpoints(self) -> Iterator[CheckpointSaved]:
        if self.run_dir is None:
            return
        improved = self.last_mean_dice is not None and self.last_mean_dice > self.best_mean_dice
        if improved:
            self.best_mean_dice = self.last_mean_dice
        payload = self._payload()
        if payload["config"] != self._saved_config:
            # a plug-in changed the network (PSP-Seg removed branches): config.yaml says what the checkpoints hold
            self._save_config()
        yield CheckpointSaved(epoch=self.epoch, path=self._write(LAST, payload))
        if improved:
            yield CheckpointSaved(epoch=self.epoch, path=self._write(BEST, payload))

    def _save_config(self) -> None:
        """Write the run's configuration as it now is to ``config.yaml`` (rank 0 of a run with a folder)."""
        self._saved_config = self.config.to_dict()
        if self.writes:
            self.config.save(self.run_dir / CONFIG_FILE)

    def _write(self, name: str, payload: dict[str, Any]) -> str:
        """Save a checkpoint in the run folder (rank 0 only; every rank builds the payload together)."""
        path = self.run_dir / name
        if self.context.is_main:
            save_checkpoint(payload, path)
        return str(path)

    def _restore(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        saved = state.get("plugins", {})
        for plugin in self.plugins:
            if plugin.name in saved:
                plugin.load_state_dict(saved[plugin.name])
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
        if state.get("stages"):  # as laid out when the run was last re-planned to its budget
            self.stages = tuple(Stage(tuple(int(v) for v in s[:3]), int(s[3]), int(s[4])) for s in state["stages"])
        self.training_seconds = float(state.get("training_seconds", 0.0))
        self.best_mean_dice = float(state.get("best_mean_dice", -1.0))
        self.last_mean_dice = state.get("last_mean_dice")
        rng = state.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if rng.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        streams = rng.get("numpy_ranks", [rng["numpy"]] if "numpy" in rng else [])
        if streams and len(streams) != self.context.world_size:
            raise InputError(
                f"this run was trained by {len(streams)} process(es) and is being resumed by {self.context.world_size}; "
                f"resume it with {len(streams)} in all (torchrun: --nnodes times --nproc_per_node)."
            )
        if streams:
            self.rng.bit_generator.state = streams[self.context.rank]
        if "schedule" in rng and self.draw_rng is not self.rng:
            self.draw_rng.bit_generator.state = rng["schedule"]

    def _log(self, event: Any) -> Any:
        if self.writes:
            with open(self.run_dir / METRICS_FILE, "a") as handle:
                handle.write(json.dumps(event.to_dict()) + "\n")
        return event


def _plain_state(state: dict[str, Any]) -> dict[str, Any]:
    return {k: _plain_state(v) if isinstance(v, dict) else (int(v) if isinstance(v, (np.integer,)) else v) for k, v in state.items()}


def _schedule(config: RunConfig):
    """The run's patch schedule, from the curriculum settings and the network's poolings."""
    model, curriculum, t = config.model, config.curriculum, config.training
    poolings = tuple(int(np.log2(d)) for d in patch_divisor(model))
    options = ScheduleOptions.from_config(curriculum)
    return build_schedule(curriculum.schedule, model.patch_size, poolings, t.epochs, t.batch_size, options, minimum_patch(model))


def _probe_sizes(schedule, rng: np.random.Generator) -> list[tuple[tuple[int, int, int], int]]:
    """The (patch, batch) shapes whose step time is measured: every stage's of a schedule of fixed stages (each
    stage is then planned at its own cost); for one that draws a patch every step, the final shape, the
    smallest and a middle one by voxels per step (the line through them plans it)."""
    final = (tuple(schedule.final_patch), schedule.final_batch)
    if not schedule.axis_sizes and not schedule.choices:
        return list(dict.fromkeys([final] + [(tuple(s.patch), s.batch) for s in schedule.stages]))
    if schedule.axis_sizes:
        options = {schedule.draw(schedule.stages[0], rng) for _ in range(50)}
    else:
        options = {(tuple(s.patch), s.batch) for s in schedule.stages + schedule.choices}
    by_voxels = sorted(options | {final}, key=lambda o: o[1] * math.prod(o[0]))
    return list(dict.fromkeys([final, by_voxels[0], by_voxels[len(by_voxels) // 2]]))


def _optimizer(network: torch.nn.Module, t) -> torch.optim.Optimizer:
    if t.optimizer == "adamw":
        return torch.optim.AdamW(network.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay)
    return torch.optim.SGD(
        network.parameters(), lr=t.learning_rate, momentum=t.momentum, nesterov=True, weight_decay=t.weight_decay
    )


def _loss(deep_supervision: bool, across_ranks: bool = False, ignore_index: Optional[int] = None):
    """Dice + cross-entropy (nnU-Net's batch Dice without background, global over DDP ranks), with deep supervision if
    used; voxels of label index ``ignore_index`` (nnU-Net v2's ignore label) count in neither."""
    from monai.losses import DeepSupervisionLoss

    dice_ce = BatchDiceCELoss(smooth=1e-5, distributed=across_ranks, ignore_index=ignore_index)
    if deep_supervision:
        supervised = DeepSupervisionLoss(dice_ce, weight_mode="exp")
        return lambda outputs, target: supervised(outputs, target)
    return lambda outputs, target: dice_ce(outputs[0], target)
