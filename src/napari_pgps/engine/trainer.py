"""The training loop, as a generator of typed events.

    for event in train(config, run_dir):
        ...

A run is prepared first (:mod:`.preparation`: resume, split, start-from model, fingerprint, resolved
configuration, preprocessing); a run with a time budget is then planned to it (:mod:`.budget`); :class:`_Run`
keeps the loop: the steps, validation and events. Stop and pause requests (:class:`TrainingControl`) are honoured
between steps. A checkpoint (:mod:`.checkpoint`) is written atomically after every epoch, so a stopped or failed
run keeps its last good one; ``resume=True`` continues from it with the optimiser, scheduler and random-number
states restored.

Methods that change training from within the loop (the PDL data curriculum, PSP-Seg pruning) are plug-ins
(:mod:`napari_pgps.plugins`) given to :func:`train`; the loop calls their hooks and saves their state in
checkpoints, and knows nothing else of them. ``napari_pgps.train`` plugs in every method napari-pgps has.

Started by ``torchrun`` the loop trains with DDP (:mod:`.distributed`): each step's global batch is split over the
ranks, only rank 0 writes files, and every rank yields the same events except that a ``StepDone``'s crops and
class fractions are its own (its ``batch`` and ``loss`` are the global ones).
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

from ..config import RunConfig
from ..curriculum import RANDOM_PATCH_SCHEDULES, crops_per_case, schedule_for, stage_at
from ..data.augmentation import Augmentation, augmentation_strength
from ..data.dataset import TrainingSet
from ..data.loader import BatchLoader
from ..data.preprocessing import PreprocessingPlan
from ..data.sampler import PatchSampler
from ..data.store import StoredImages
from ..events import (
    CheckpointSaved,
    Event,
    Finished,
    Paused,
    Replanned,
    Resumed,
    RunStarted,
    StageFinished,
    StageStarted,
    StepDone,
    Validated,
)
from ..files import write_text_atomically
from ..models import build_network, count_parameters, deep_supervision_heads, model_kind, split_outputs
from ..plugins import TrainingPlugin
from . import distributed, run_lock
from .budget import (PROBE_SHARE, BudgetPlanner, Replan, Shape, StepCost, measure_step_cost,
                     measure_window_seconds)
from .averaging import WeightAverage
from .checkpoint import checkpoint_payload, restore, save_checkpoint
from .control import TrainingControl
from .device import autocast_dtype, describe, training_memory_format
from .file_names import BEST, CONFIG_FILE, FINAL, LAST, SPLITS_FILE
from .inference import predict_probabilities, window_count
from .losses import training_loss
from .metrics import dice_per_label, mean_of, summarize_dice
from .preparation import PreparedRun, prepare_run
from .progress import METRICS_FILE, restart_log
from .recipe import LONG_RUN_AUGMENTATION, augmentation_at_pace, schedule_at_pace


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
            data is read (:mod:`.run_lock`: one that is in use by another run, or already
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
    with run_lock.claim(run_dir, resume=resume, lock=distributed.context_from_env().is_main) as notes:
        prepared = yield from prepare_run(config, run_dir, dataset=dataset, resume=resume,
                                          initial_weights=initial_weights, plugins=plugins)
        try:
            with distributed.process_group(prepared.device) as (context, device):
                run = _Run(prepared, run_dir, device, control or TrainingControl(), context, plugins, notes)
                try:
                    yield from run.run()
                finally:
                    run.loader.close()
        finally:
            prepared.close()


class _Run:
    """One training run's state (what plug-ins see, :class:`napari_pgps.plugins.TrainingRun`; what a checkpoint
    holds, :class:`.checkpoint.CheckpointedRun`); :meth:`run` yields the events."""

    def __init__(self, prepared: PreparedRun, run_dir: Optional[Path], device: torch.device, control: TrainingControl,
                 context: distributed.DistributedContext = distributed.SINGLE, plugins: Sequence[TrainingPlugin] = (),
                 notes: Sequence[str] = ()):
        config, store, split, state = prepared.config, prepared.store, prepared.split, prepared.checkpoint
        self.config: RunConfig = config
        self.run_dir: Optional[Path] = run_dir
        self.recipe_choices = list(prepared.recipe)
        """Each part of the run's recipe (the schedule and augmentation chosen again once the steps are timed, see
        :meth:`_schedule_at_pace` and :meth:`_augmentation_at_pace`)."""
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
        self.volume_fractions = prepared.label_fractions()
        self.sampler = PatchSampler(store, self.training_names, num_labels=self.num_labels, rng=self.rng,
                                    foreground_probability=config.data.foreground_oversampling,
                                    oversampling=config.data.oversampling,
                                    augmentation=Augmentation(config.data.augmentation))
        self.loader = BatchLoader(self.sampler, config.data.loader_workers)
        self.validating_on_training = not val_names
        self.validation_names = list(val_names) or self.training_names
        self.low_precision = autocast_dtype(device, t.mixed_precision)
        self.memory_format = training_memory_format(device, self.low_precision)
        self.network = build_network(config.model, state["model"] if state is not None else prepared.initial_weights).to(
            device, memory_format=self.memory_format)
        self.amp = self.low_precision is torch.float16
        self.model = distributed.wrap(self.network, device, context)
        self.loss = training_loss(deep_supervision=deep_supervision_heads(config.model) > 0,
                                  across_ranks=context.enabled, ignore_index=self.ignore_index)
        self.started_at = time.perf_counter()
        self._probe_sampler: Optional[PatchSampler] = None
        self._probe_optimizer: Optional[torch.optim.Optimizer] = None
        self._saved_config: Optional[dict[str, Any]] = None
        """The configuration as ``config.yaml`` last received it."""
        self.budget_planner: Optional[BudgetPlanner] = None
        """The planner of a run planned to a time budget (kept to plan it again)."""
        if device.type == "cuda":
            # cuDNN picks its fastest kernels once per input shape (before the budget's timed steps, which then
            # include it): worth it for the handful of PGPS stage shapes, as nnU-Net does for its one, not for
            # a patch drawn anew every step
            torch.backends.cudnn.benchmark = config.curriculum.schedule not in RANDOM_PATCH_SCHEDULES
        self.weight_average = WeightAverage(self.network, t)  # (before the plan: its validations cost more)
        self.expected_seconds = self._plan_to_budget() if t.time_budget and state is None else None
        self.optimizer = _optimizer(self.network, t)
        self.scheduler = torch.optim.lr_scheduler.PolynomialLR(self.optimizer, total_iters=t.epochs, power=t.poly_exponent)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.schedule = schedule_for(config)
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
            restore(self, state)

    # -- the loop ---------------------------------------------------------
    def run(self) -> Iterator[Any]:
        t = self.config.training
        if self.writes:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._save_config()
            write_text_atomically(self.run_dir / SPLITS_FILE, json.dumps(self.split, indent=1) + "\n")
            restart_log(self.run_dir / METRICS_FILE, self.epoch, self.step)  # a resumed run's steps are logged once
        yield self._log(RunStarted(
            run_dir=str(self.run_dir) if self.run_dir else None, device=describe(self.device, self.low_precision),
            training_cases=len(self.training_names), validation_cases=len(self.split["validation"]),
            parameters=count_parameters(self.network), start_epoch=self.epoch, epochs=t.epochs,
            iterations_per_epoch=t.iterations_per_epoch, final_patch=tuple(self.config.model.patch_size),
            schedule=self.schedule.name, kind=model_kind(self.config), architecture=self.config.model.architecture,
            label_names=tuple(self.config.labels[v] for v in sorted(self.config.labels)),
            volume_class_fractions=self.volume_fractions, time_budget=t.time_budget, expected_seconds=self.expected_seconds,
            notes=self.folder_notes + (self.budget_planner.notes if self.budget_planner else ())
            + tuple(note for plugin in self.plugins for note in plugin.notes(self)),
            recipe=self.recipe,
        ))
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
            replan: Optional[Replan] = None
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
                if self.budget_planner is not None and (replan := self.budget_planner.check_within_epoch(
                        self.stages, stage, epoch_step_seconds, self.epoch, t.epochs, t.iterations_per_epoch)):
                    break  # off the plan's pace (e.g. planned on a busy machine): the epoch ends here, re-planned
            batches.close()
            if stopped:
                break
            if self.budget_planner is not None:
                replan = replan or self.budget_planner.replan(self.stages, stage, epoch_step_seconds, self.epoch + 1,
                                                              t.epochs, t.iterations_per_epoch)
                if replan is not None:
                    yield self._log(self._replanned(replan))
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
            final = self._write(FINAL, checkpoint_payload(self))
            yield self._log(CheckpointSaved(epoch=self.epoch, path=final))
        yield self._log(Finished(
            stopped=stopped, epochs_completed=self.epoch, steps=self.step, training_seconds=self.training_seconds,
            final_mean_dice=self.last_mean_dice, steps_redone_in_fp32=self.steps_redone_in_fp32,
            checkpoint=final or (str(self.run_dir / LAST) if self.run_dir and (self.run_dir / LAST).exists() else None),
        ))

    def _stage_finished(self, index: int, fractions: list[tuple[float, ...]]) -> StageFinished:
        stage = self.stages[index]
        return StageFinished(stage=index, epoch=self.epoch, patch=stage.patch, batch=stage.batch, steps=len(fractions),
                             class_fractions=tuple(float(f) for f in np.mean(fractions, axis=0)))

    def _epoch_start_events(self) -> list[Event]:
        """The plug-ins' epoch-start events; their time counts as training time."""
        start = time.perf_counter()
        events = [event for plugin in self.plugins for event in plugin.epoch_start(self, self.epoch)]
        self.training_seconds += time.perf_counter() - start
        return events

    def _plan(self, stage) -> tuple[Any, int]:
        """One step's batch plan (this rank's share of the global batch, at this epoch's augmentation strength) and
        the global batch size."""
        patch, batch_size = self.schedule.draw(stage, self.draw_rng)
        share = distributed.batch_share(batch_size, self.context)
        strength = augmentation_strength(self.config.data.augmentation_ramp, self.epoch, self.config.training.epochs)
        plan = self.sampler.plan(patch, batch_size, crops_per_case(batch_size, self.schedule.final_batch), share, strength)
        return plan, batch_size

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
        self.weight_average.update(self.epoch)
        value = distributed.mean_over_ranks(loss.detach(), self.context)
        if not np.isfinite(value):
            raise TrainingDiverged(f"training diverged at step {self.step + 1} (loss {value}); the last good checkpoint "
                                   "is kept. Try a lower learning rate.")
        seconds = time.perf_counter() - start
        self.step += 1
        self.training_seconds += seconds
        boxes = [self._input_box(i, origin, batch.images.shape[2:]) for i, origin in zip(batch.case_indices, batch.origins)]
        return StepDone(
            epoch=self.epoch, step=self.step, loss=value, patch=tuple(int(p) for p in batch.images.shape[2:]),
            batch=batch_size, class_fractions=batch.class_fractions, seconds=seconds,
            learning_rate=float(self.optimizer.param_groups[0]["lr"]),
            crop_cases=tuple(self.training_names[i] for i in batch.case_indices),
            crop_origins=tuple(box[0] for box in boxes), crop_sizes=tuple(box[1] for box in boxes), data_seconds=waited,
            augmentation_strength=batch.augmentation_strength,
        )

    @property
    def recipe(self) -> tuple[str, ...]:
        """The recipe's lines, one per part with its reason (what ``train`` prints before the first step)."""
        return tuple(choice.line() for choice in self.recipe_choices)

    def _plan_to_budget(self) -> float:
        """Plan ``training.epochs`` (and, when fewer than the planner's least epochs would fit, fewer steps per
        epoch) so the run fits its time budget (:class:`.budget.BudgetPlanner`), from steps and a validation window
        batch timed on this machine (the final step timed again when the plan is under ``MIN_STEPS``), after the
        recipe's schedule and augmentation are chosen again from them (:meth:`_schedule_at_pace`,
        :meth:`_augmentation_at_pace`); returns the predicted seconds.

        The timed steps (a warm-up and two per probed size, on real crops) change no weight: their optimiser is a
        throw-away one with a learning rate and weight decay of zero.
        """
        t = self.config.training
        self.budget_planner = self._budget_planner()
        sizes = self.budget_planner.probe_shapes(t.seed)
        self._probe_optimizer = _optimizer(self.network, dataclasses.replace(t, learning_rate=0.0, weight_decay=0.0))
        cost = measure_step_cost(self._timed_step, sizes, time_limit=PROBE_SHARE * t.time_budget)
        time_again = lambda shapes: measure_step_cost(self._timed_step, shapes)  # noqa: E731
        cost, validation_seconds, timed_again = self._schedule_at_pace(cost, self._timed_validation(), time_again)
        self._augmentation_at_pace(self.budget_planner.final_patch_steps(cost, validation_seconds))
        plan = self.budget_planner.plan(cost, validation_seconds, t.iterations_per_epoch,
                                        time_again=None if timed_again else time_again)
        self._probe_optimizer = None  # its moments are a whole copy of the weights' size
        t.epochs, t.iterations_per_epoch = plan.epochs, plan.iterations_per_epoch
        return plan.expected_seconds

    def _budget_planner(self) -> BudgetPlanner:
        """The planner of this run's budget and schedule (:attr:`config`'s, as it is now)."""
        t = self.config.training
        return BudgetPlanner(
            t.time_budget, lambda epochs: schedule_for(self.config, epochs), validate_every=t.validate_every,
            cap=t.epochs, started_at=self.started_at,
            agree=lambda value: distributed.mean_over_ranks(torch.tensor(value), self.context))

    def _schedule_at_pace(self, cost: StepCost, validation_seconds: float,
                          time_again: Callable[[Sequence[Shape]], StepCost]) -> tuple[StepCost, float, bool]:
        """The recipe's schedule chosen again from the timed steps (:func:`.recipe.schedule_at_pace`): when the
        budget holds fewer than ``MIN_STEPS`` steps at the final patch, the final step is timed once more (a busy
        moment often passes), and if still under, the recipe's PGPS Efficiency becomes the constant patch (the
        configuration, the planner and the recipe's line with it). Returns the cost and validation seconds to plan
        with and whether the final step was timed again."""
        index = self._recipe_part("schedule")
        if index is None:
            return cost, validation_seconds, False
        asked, planner = self.recipe_choices[index], self.budget_planner
        if schedule_at_pace(asked, planner.final_patch_steps(cost, validation_seconds)) is asked:
            return cost, validation_seconds, False
        cost, validation_seconds = planner.timed_again(cost, validation_seconds, time_again)
        choice = schedule_at_pace(asked, planner.final_patch_steps(cost, validation_seconds))
        if choice is not asked:
            self.config.curriculum.schedule = choice.value
            self.recipe_choices[index] = choice
            self.budget_planner = self._budget_planner()
        return cost, validation_seconds, True

    def _recipe_part(self, part: str) -> Optional[int]:
        """The index in :attr:`recipe_choices` of the recipe's ``part`` ("schedule", "augmentation", ...), or
        ``None`` where the recipe has none."""
        return next((i for i, choice in enumerate(self.recipe_choices) if choice.part == part), None)

    def _augmentation_at_pace(self, final_patch_steps: float) -> None:
        """The recipe's augmentation chosen again from the steps the budget holds at the final patch
        (:func:`.recipe.augmentation_at_pace`): a long run's augmentation curriculum, in the configuration, the
        sampler and the recipe's line."""
        index = self._recipe_part("augmentation")
        if index is None:
            return
        choice, ramp = augmentation_at_pace(self.recipe_choices[index], final_patch_steps)
        if ramp is None:
            return
        data = self.config.data
        data.augmentation, data.augmentation_ramp = LONG_RUN_AUGMENTATION, ramp
        self.sampler.augmentation = Augmentation(data.augmentation)
        self.recipe_choices[index] = choice

    def _replanned(self, replan: Replan) -> Replanned:
        """Follow a budget's new plan: its stages, epochs and steps per epoch; the learning-rate decay (per epoch) ends
        with them (plug-ins that fixed their plan at the start, such as PSP-Seg's pruning window, keep it)."""
        self.stages = replan.stages
        self.config.training.epochs, self.config.training.iterations_per_epoch = replan.epochs, replan.iterations_per_epoch
        self.scheduler.total_iters = replan.epochs
        self.expected_seconds = replan.expected_seconds
        self._save_config()
        return Replanned(epoch=self.epoch + 1, slowdown=replan.slowdown, epochs=replan.epochs,
                         expected_seconds=replan.expected_seconds, iterations_per_epoch=replan.iterations_per_epoch,
                         after_steps=replan.after_steps)

    def _timed_validation(self) -> float:
        """Seconds of a validation: its sliding-window batches at the final patch times one batch's timed seconds.

        With weight averaging, the validations from ``averaging_start`` of the run on score the raw weights beside
        the average: over the run a validation then costs ``2 - averaging_start`` of one, and that is what the plan
        counts."""
        model, t = self.config.model, self.config.training
        windows = sum(math.ceil(window_count(self.store.image(name).shape[1:], model.patch_size) / t.batch_size)
                      for name in self.validation_names)
        seconds = windows * measure_window_seconds(self.network, (t.batch_size, model.in_channels, *model.patch_size),
                                                   self.device, self.amp)
        return seconds * (2 - t.averaging_start) if self.weight_average.enabled else seconds

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
        """Dice of the model the run keeps and, once weight averaging has begun, of the raw weights beside it."""
        start = time.perf_counter()
        networks = [self.weight_average.kept] + ([self.network] if self.weight_average.begun else [])
        per_case: list[list[dict]] = [[] for _ in networks]
        for name in distributed.shard(self.validation_names, self.context):
            truth, image = np.asarray(self.store.labels(name)), np.array(self.store.image(name))
            ignored = truth == self.ignore_index if self.ignore_index is not None else None  # scored as nothing
            for network, scores in zip(networks, per_case):
                probabilities = predict_probabilities(network, image, self.config.model.patch_size, self.device,
                                                      batch_size=self.config.training.batch_size,
                                                      mixed_precision=self.config.training.mixed_precision)
                scores.append(dice_per_label(np.argmax(probabilities, axis=0), truth, self.num_labels, ignore=ignored))
        self.network.train()
        dice, *raw = [summarize_dice(distributed.unshard(scores, self.context), self.label_names) for scores in per_case]
        self.last_mean_dice = mean_of(dice)
        return Validated(epoch=self.epoch, dice_per_label=dice, mean_dice=self.last_mean_dice,
                         seconds=time.perf_counter() - start, on_training_cases=self.validating_on_training,
                         raw_dice_per_label=raw[0] if raw else None, raw_mean_dice=mean_of(raw[0]) if raw else None)


    # -- checkpoints --------------------------------------------------------
    def _save_checkpoints(self) -> Iterator[CheckpointSaved]:
        if self.run_dir is None:
            return
        improved = self.last_mean_dice is not None and self.last_mean_dice > self.best_mean_dice
        if improved:
            self.best_mean_dice = self.last_mean_dice
        payload = checkpoint_payload(self)
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

    def _log(self, event: Any) -> Any:
        if self.writes:
            with open(self.run_dir / METRICS_FILE, "a") as handle:
                handle.write(json.dumps(event.to_dict()) + "\n")
        return event

def _optimizer(network: torch.nn.Module, t) -> torch.optim.Optimizer:
    if t.optimizer == "adamw":
        return torch.optim.AdamW(network.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay)
    return torch.optim.SGD(network.parameters(), lr=t.learning_rate, momentum=t.momentum, nesterov=True,
                           weight_decay=t.weight_decay)
