"""Training to a time budget: measure what a step costs at each patch size, then plan the epochs to fit.

A step's cost is measured, not guessed: a few whole steps (forward, backward,
gradient clipping and an optimiser step that changes no weight) at every
(patch, batch) shape a schedule of fixed stages uses, and each stage is
planned at its own measured cost: a PGPS Performance stage of many small
crops costs more than its voxels say (per-crop sampling and per-sample
overheads), an Efficiency stage of a few tiny crops less, so a single line
through voxels mispredicted both (Performance 11% over its 15-minute plan
on the 2-core CPU, Efficiency well under it). Schedules that draw a new patch every step are planned with
a line through the measured points, seconds = a + b x voxels per step
(on a CPU the time follows the voxels; on a GPU a small step is
launch-bound, so ``a`` dominates). A validation's cost is the sliding-window passes it takes times
the measured time of one window batch. The planner then takes the most
epochs whose schedule, steps and validations included, fits the budget; the
schedule's stage rule and the learning-rate decay follow the planned epochs.

:class:`BudgetPlanner` makes that plan from a step timer's :class:`StepCost` (:func:`measure_step_cost` of the
trainer's timed steps at :meth:`~BudgetPlanner.probe_shapes`) and the run's schedule laid out over a number of
epochs (a schedule factory), and plans the epochs left again when the run's own steps show another pace
(:meth:`~BudgetPlanner.replan`); it never changes the run's configuration and needs no network.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..curriculum import Schedule, Stage, stages_laid_out_again
from ..errors import InputError
from .device import cpu_convolutions

PROBE_WARMUP = 1
PROBE_STEPS = 2
"""Timed steps per probed size (after a warm-up step at that size)."""
PROBE_EPOCHS = 1000
"""The probed schedule is laid out over at least this many epochs, so that it has every stage size it can have."""

REPLAN_MARGIN = 0.05
"""A run planned to a budget is planned again at the end of an epoch when, at the speed its steps go now, it would
end more than this share of the budget before or after it (or more than ``REPLAN_MARGIN_MOST_SECONDS``)."""

REPLAN_MARGIN_MOST_SECONDS = 60.0
"""The re-plan's band in seconds for long budgets: 5% of 45 minutes left 135 s of a user's budget unused (measured:
runs ending 3.5-4.3% early), 5% of a night 24 minutes."""

EVIDENCE_SHARE = 0.25
"""Only steps of at least this share of the final stage's voxels (batch x patch) say how fast the rest of a run will go.

Measured (hippocampus, 2-core CPU, PGPS Efficiency to 3 minutes): its three smallest stages (at most 5% of the
final step's voxels) took 1.5-2.9x their timed cost, the ones from 27% on 0.85-1.22x (two runs); a re-plan after the first
epoch, scaling every stage by its 2.1x, left 44% of the budget unused."""
_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*h)?\s*(?:(\d+(?:\.\d+)?)\s*m(?:in)?)?\s*(?:(\d+(?:\.\d+)?)\s*s)?\s*$")


def parse_duration(text: str | float) -> float:
    """Seconds of ``"15m"``, ``"1h30m"``, ``"90s"``, ``"2.5m"``; a plain number is minutes.

    Raises:
        InputError: not a duration, or not positive.
    """
    if isinstance(text, (int, float)):
        seconds = 60.0 * float(text)
    else:
        stripped = str(text).strip().lower()
        if re.fullmatch(r"\d+(\.\d+)?", stripped):
            seconds = 60.0 * float(stripped)
        else:
            match = _DURATION.match(stripped)
            if not stripped or match is None or not any(match.groups()):
                raise InputError(f"time budget '{text}' is not a duration such as 15m, 1h30m or 90s.")
            hours, minutes, secs = (float(g) if g else 0.0 for g in match.groups())
            seconds = 3600 * hours + 60 * minutes + secs
    if seconds <= 0:
        raise InputError(f"time budget '{text}' must be longer than zero.")
    return seconds


Shape = tuple[tuple[int, int, int], int]
"""A step's (patch (z, y, x) in voxels, batch size)."""


@dataclass(frozen=True)
class StepCost:
    """Seconds per step: measured for each probed shape; elsewhere ``fixed`` + ``per_voxel`` x (batch x patch
    voxels), the line fitted through the measured ones."""

    fixed: float
    per_voxel: float
    measured: tuple[tuple[Shape, float], ...]
    """((patch, batch), median seconds) of each probed shape."""

    def seconds(self, voxels_per_step: float) -> float:
        """The fitted line's seconds for a step of this many voxels (batch x patch)."""
        return max(self.fixed + self.per_voxel * voxels_per_step, 1e-4)

    def at(self, patch: Sequence[int], batch: int) -> float:
        """Seconds of a step at (patch, batch): its own measurement when probed, else the fitted line."""
        shape = (tuple(int(p) for p in patch), int(batch))
        for probed, seconds in self.measured:
            if probed == shape:
                return seconds
        return self.seconds(batch * math.prod(patch))


def measure_step_cost(step: Callable[[tuple[int, int, int], int], None], sizes: Sequence[Shape]) -> StepCost:
    """Time ``step(patch, batch)`` at each (patch, batch) (a warm-up, then the median of the timed ones) and fit
    the line through them."""
    points = []
    for patch, batch in sizes:
        for _ in range(PROBE_WARMUP):
            step(patch, batch)
        times = []
        for _ in range(PROBE_STEPS):
            start = time.perf_counter()
            step(patch, batch)
            times.append(time.perf_counter() - start)
        points.append(((tuple(int(p) for p in patch), int(batch)), float(np.median(times))))
    voxels = np.array([b * math.prod(p) for (p, b), _ in points], dtype=float)
    seconds = np.array([s for _, s in points], dtype=float)
    if len(set(voxels)) > 1:
        per_voxel, fixed = np.polyfit(voxels, seconds, 1)
        per_voxel = max(per_voxel, 0.0)
        fixed = float(np.mean(seconds - per_voxel * voxels))
    else:
        per_voxel, fixed = 0.0, float(seconds.mean())
    return StepCost(float(fixed), float(per_voxel), tuple(points))


@dataclass(frozen=True)
class RunCost:
    """Predicted seconds of a run of E epochs of I steps: its stages' steps and its validations."""

    stages_for: Callable[[int], Sequence[tuple[int, float]]]
    """For a number of epochs E, the schedule's stages as (epochs, seconds per step)."""
    validation_seconds: float
    validate_every: int
    """The run validates every this many epochs and after the last."""

    def __call__(self, epochs: int, iterations: int) -> float:
        steps = sum(e * iterations * s for e, s in self.stages_for(epochs))
        validations = epochs // self.validate_every + (epochs % self.validate_every != 0)
        return steps + validations * self.validation_seconds


@dataclass(frozen=True)
class BudgetPlan:
    """A run's epochs and steps per epoch, and (from :meth:`BudgetPlanner.plan`) its predicted seconds from its start."""

    epochs: int
    iterations_per_epoch: int
    expected_seconds: Optional[float] = None


def plan_epochs(budget: float, cost: RunCost, iterations_per_epoch: int) -> BudgetPlan:
    """The most epochs (of ``iterations_per_epoch`` steps) whose run fits ``budget`` seconds; when not even one
    does, one epoch of as many steps as fit."""
    if cost(1, iterations_per_epoch) > budget:
        per_step = max(s for _, s in cost.stages_for(1))
        return BudgetPlan(1, max(1, int((budget - cost.validation_seconds) / per_step)))
    low, high = 1, 2
    while cost(high, iterations_per_epoch) <= budget and high < 1_000_000:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if cost(middle, iterations_per_epoch) <= budget else (low, middle)
    return BudgetPlan(low, iterations_per_epoch)


def replan_margin(time_budget: float) -> float:
    """Seconds a run planned to ``time_budget`` seconds may be projected to end before or after it without a re-plan."""
    return min(REPLAN_MARGIN * time_budget, REPLAN_MARGIN_MOST_SECONDS)


def probe_shapes(schedule: Schedule, rng: np.random.Generator) -> list[Shape]:
    """The (patch, batch) shapes whose step time is measured: every stage's of a schedule of fixed stages (each
    stage is then planned at its own cost); for one that draws a patch every step, the final shape, the
    smallest and a middle one by voxels per step (the line through them plans it)."""
    final = (tuple(schedule.final_patch), schedule.final_batch)
    if schedule.draws == "stages":
        return list(dict.fromkeys([final] + [(tuple(s.patch), s.batch) for s in schedule.stages]))
    if schedule.draws == "axis_sizes":
        options = {schedule.draw(schedule.stages[0], rng) for _ in range(50)}
    else:
        options = {(tuple(s.patch), s.batch) for s in schedule.stages + schedule.choices}
    by_voxels = sorted(options | {final}, key=lambda o: o[1] * math.prod(o[0]))
    return list(dict.fromkeys([final, by_voxels[0], by_voxels[len(by_voxels) // 2]]))


def measure_window_seconds(network: torch.nn.Module, windows: Sequence[int], device: torch.device, fp16: bool) -> float:
    """Seconds of one sliding-window batch of shape ``windows`` (B, C, Z, Y, X) (the median of two after a warm-up),
    run as validation runs its windows (:func:`.inference.predict_probabilities`: fp16 autocast on CUDA when
    ``fp16``, oneDNN on the CPU). The network is left in training mode."""
    batch = torch.zeros(tuple(windows), device=device)
    times = []
    network.eval()
    autocast = torch.autocast("cuda", dtype=torch.float16, enabled=fp16)
    with torch.inference_mode(), autocast, cpu_convolutions(device):
        for _ in range(3):
            start = time.perf_counter()
            network(batch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
    network.train()
    return float(np.median(times[1:]))


@dataclass(frozen=True)
class Replan:
    """A budget's plan made again at the end of an epoch: the run now ends after ``epochs`` epochs, on ``stages``."""

    epochs: int
    stages: tuple[Stage, ...]
    slowdown: float
    """The run's steps' seconds over the timed cost of the same steps (the pace the rest is planned at)."""
    expected_seconds: float
    """The run's predicted seconds from its start."""


class BudgetPlanner:
    """Plans a run's epochs to its time budget, and plans them again when its steps show another pace.

    Args:
        budget: the run's time budget in seconds, counted from ``started_at``.
        schedule_for: the run's patch schedule laid out over a number of epochs.
        validate_every: the run validates every this many epochs and after the last.
        cap: the most epochs the user allowed (``training.epochs`` given with the budget), if any.
        started_at: ``clock()`` when the run started.
        clock: seconds (``time.perf_counter``).
        agree: a process's value made the one every process of the run goes by (under torchrun the mean over
            the ranks, a collective call); ``float`` in a single process.

    Use: time :meth:`probe_shapes` with :func:`measure_step_cost`, then :meth:`plan`; after each epoch,
    :meth:`replan` with its steps' seconds.
    """

    def __init__(self, budget: float, schedule_for: Callable[[int], Schedule], *, validate_every: int,
                 cap: Optional[int] = None, started_at: float = 0.0, clock: Callable[[], float] = time.perf_counter,
                 agree: Callable[[float], float] = float):
        self.budget, self.schedule_for, self.validate_every, self.cap = budget, schedule_for, validate_every, cap
        self.started_at, self.clock, self.agree = started_at, clock, agree
        self.probed = schedule_for(max(cap or 0, PROBE_EPOCHS))
        """The schedule laid out over enough epochs to hold every stage size it can have."""
        self.step_seconds: Callable[[Stage], float] = lambda stage: math.nan
        """A step's timed seconds at a stage's patch and batch (from :meth:`plan`)."""
        self.validation_seconds = math.nan
        self._paced = (0.0, 0.0)
        """(seconds taken, seconds the plan gave) of the steps that show the run's pace (see :meth:`replan`)."""

    def probe_shapes(self, seed: int) -> list[Shape]:
        """The (patch, batch) shapes to time (:func:`probe_shapes`; a drawing schedule draws from ``seed``)."""
        return probe_shapes(self.probed, np.random.default_rng(seed))

    def plan(self, cost: StepCost, validation_seconds: float, iterations_per_epoch: int) -> BudgetPlan:
        """The most epochs (at most ``cap``) whose steps, at their timed ``cost``, and validations of
        ``validation_seconds`` each fit the budget left now (:func:`plan_epochs`), and the run's predicted seconds.

        A schedule that draws a patch every step is planned at a step of its expected voxels on the fitted line.
        """
        probed = self.probed
        random_step = None
        if probed.draws != "stages":  # a patch drawn every step: the expected voxels of a step
            random_step = cost.seconds(probed.relative_voxels() * probed.final_batch * math.prod(probed.final_patch))

        def step_seconds(stage: Stage) -> float:
            return random_step if random_step is not None else cost.at(stage.patch, stage.batch)

        def stages_for(epochs: int) -> list[tuple[int, float]]:
            return [(stage.epochs, step_seconds(stage)) for stage in self.schedule_for(epochs).stages]

        self.step_seconds, self.validation_seconds = step_seconds, validation_seconds
        run_cost = RunCost(stages_for, validation_seconds, self.validate_every)
        spent = self.clock() - self.started_at
        plan = plan_epochs(self.budget - spent, run_cost, iterations_per_epoch)
        epochs = min(plan.epochs, self.cap) if self.cap else plan.epochs
        return BudgetPlan(epochs, plan.iterations_per_epoch, spent + run_cost(epochs, plan.iterations_per_epoch))

    def replan(self, stages: Sequence[Stage], stage: Stage, step_seconds: Sequence[float], done: int, epochs: int,
               iterations_per_epoch: int) -> Optional[Replan]:
        """At the end of epoch ``done`` (1-based) of ``epochs``, trained on ``stage`` in steps of ``step_seconds``:
        when, at the pace its steps have gone so far (their seconds against the plan's timed cost of the same steps,
        applied to every step and validation left), the run would end more than :func:`replan_margin` before or
        after the budget (5% of it, at most 60 s), the epochs left planned again so that it ends within it; else
        ``None``.

        Only the steps of stages of at least a quarter of the final step's voxels are taken as evidence
        (``EVIDENCE_SHARE``), all of them pooled: one stage's own error (PGPS Efficiency's stages of one epoch
        each differ by up to 20%) would re-plan the run at every stage. The ``stages`` are laid out again for the
        new number of epochs (:func:`stages_laid_out_again`: what is trained stays, the rest shares the epochs
        left by the schedule's proportions).
        """
        probed = self.probed
        if not step_seconds or stage.voxels_per_step < EVIDENCE_SHARE * probed.final_batch * math.prod(probed.final_patch):
            return None
        self._paced = (self._paced[0] + sum(step_seconds), self._paced[1] + len(step_seconds) * self.step_seconds(stage))
        pace = self.agree(self._paced[0] / self._paced[1])
        elapsed = self.agree(self.clock() - self.started_at)
        pace = min(max(pace, 0.25), 4.0)

        def rest(total: int) -> list[tuple[int, float]]:
            """The stages' epochs after ``done`` in a run of ``total`` epochs, with a step's seconds at this pace."""
            parts, start = [], 0
            for laid in stages_laid_out_again(stages, done, total):
                parts.append((max(0, min(start + laid.epochs, total) - max(start, done)), self.step_seconds(laid) * pace))
                start += laid.epochs
            return parts

        left = RunCost(lambda more: rest(done + more), self.validation_seconds * pace, self.validate_every)
        budget_left = self.budget - elapsed
        if abs(left(epochs - done, iterations_per_epoch) - budget_left) <= replan_margin(self.budget):
            return None
        more = 0 if left(1, iterations_per_epoch) > budget_left else plan_epochs(budget_left, left, iterations_per_epoch).epochs
        planned = min(done + more, self.cap) if self.cap else done + more
        if planned == epochs:
            return None
        return Replan(planned, stages_laid_out_again(stages, done, planned), pace,
                      elapsed + left(planned - done, iterations_per_epoch))
