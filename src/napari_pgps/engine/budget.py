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

A busy machine must not starve a run (a demo timed its steps beside another training, planned "1 epoch x 1 step"
for its 2 minutes and showed a model that had trained one step): a plan has at least ``MIN_EPOCHS`` epochs, and a
PGPS plan all its stages (shorter epochs when needed), a plan under ``MIN_STEPS`` steps times its final step once
more and, if still under, says so in :attr:`BudgetPlanner.notes`; and the pace is checked every ``CHECK_STEPS``
steps until it is known (:meth:`~BudgetPlanner.check_within_epoch`), so a plan timed under load is made again
within the first epoch.
"""

from __future__ import annotations

import dataclasses
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
from .progress import duration_text

PROBE_WARMUP = 1
PROBE_STEPS = 2
"""Timed steps per probed size (after a warm-up step at that size)."""
PROBE_SHARE = 0.03
"""The share of the budget the step timing may take beyond its first two shapes (see :func:`measure_step_cost`)."""
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

MIN_STEPS = 150
"""The fewest steps a plan holds without a note saying why: fewer do not give a working model.

Measured (2-core CPU, the demo's PGPS Performance schedule, final patch 16 x 64 x 64, on its 12 generated phantoms,
then three unseen ones segmented): 1 step (the issue's starved demo) Dice 0.006; 40 steps (4 epochs of 10) lesion
0.51, vessel 0.10, mean 0.31: not a working model. The shortest runs known to give one train 200-250 steps: the
left atrium's 15-minute default, 200 steps, withheld Dice 0.859 (issue 33); the hippocampus default network 0.77-0.81
after 250 steps (docs/benchmarks.md, the step-budget table). 150 lies between (80 and 160 steps were not measured:
the shared machine, busy with other work, took 20 s a step)."""

MIN_EPOCHS = 4
"""A plan has at least this many epochs when that many epochs of one step each fit (its epochs are shortened
instead): a run's pace is checked at every epoch's end, so at least this often. A schedule of fixed stages has at
least as many as keep all its stages (:meth:`BudgetPlanner.least_epochs`)."""

CHECK_STEPS = 10
"""Until a run's pace is known (no step of a stage that is evidence has been paced yet: the first epoch, or PGPS
Efficiency's first epoch at a stage large enough), and in any epoch of a run planned to fewer than ``MIN_EPOCHS``
epochs, the pace is checked every this many steps (:meth:`BudgetPlanner.check_within_epoch`)."""

PACE_LIMITS = (0.02, 50.0)
"""The pace a re-plan goes by is kept within these (steps' seconds over their timed seconds): a plan timed beside
another training measured steps many times slower than they then ran (the issue's demo: one step planned for two
minutes), and a pace held short of the truth plans every epoch short again (it was 0.25-4); beyond 50x is taken
as a fault of the timing, not of the machine."""

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

    def scaled(self, factor: float) -> "StepCost":
        """Every step ``factor`` times as long (the same steps timed when the machine was more or less busy)."""
        return StepCost(self.fixed * factor, self.per_voxel * factor,
                        tuple((shape, seconds * factor) for shape, seconds in self.measured))

    def at(self, patch: Sequence[int], batch: int) -> float:
        """Seconds of a step at (patch, batch): its own measurement when probed, else the fitted line."""
        shape = (tuple(int(p) for p in patch), int(batch))
        for probed, seconds in self.measured:
            if probed == shape:
                return seconds
        return self.seconds(batch * math.prod(patch))


def measure_step_cost(step: Callable[[tuple[int, int, int], int], None], sizes: Sequence[Shape],
                      time_limit: Optional[float] = None) -> StepCost:
    """Time ``step(patch, batch)`` at each (patch, batch) (a warm-up, then the median of the timed ones) and fit
    the line through them.

    With ``time_limit`` (seconds), the shapes after the first two (:func:`probe_shapes` puts the final and the
    smallest first) are timed only while the timing has taken less than it: the others are priced on the line
    through those timed. A PGPS schedule has up to 14 stage shapes; timing all of them took longer than a short
    budget (issue 33: a 1-minute run spent 2 minutes planning on a busy 2-core CPU)."""
    points = []
    started = time.perf_counter()
    for index, (patch, batch) in enumerate(sizes):
        if time_limit is not None and index >= 2 and time.perf_counter() - started > time_limit:
            break
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
    step_seconds: Optional[float] = None
    """A planned step's mean timed seconds (from :meth:`BudgetPlanner.plan`)."""

    @property
    def steps(self) -> int:
        """The run's steps: epochs x steps per epoch."""
        return self.epochs * self.iterations_per_epoch


def plan_epochs(budget: float, cost: RunCost, iterations_per_epoch: int, least_epochs: int = 1,
                slack: Optional[float] = None) -> BudgetPlan:
    """The most epochs (of ``iterations_per_epoch`` steps) whose run fits ``budget`` seconds; when that run would
    leave more than ``slack`` seconds unused, one epoch more of fewer steps if that trains more steps (whole epochs
    of long steps left most of one unused: the left atrium's 45-minute constant plan, 4 epochs of 50 steps of 11 s,
    was to end 466 s before its 2,700).

    When fewer than ``least_epochs`` fit, ``least_epochs`` epochs of as many steps as fit (shorter epochs rather
    than fewer: a run's pace is checked at each epoch's end); when not even one step each fits (their validations
    take the budget), the most epochs that hold a step each, of as many steps as fit; at least one epoch of one step.
    """
    if cost(least_epochs, iterations_per_epoch) > budget:
        for epochs in range(least_epochs, 0, -1):
            validations = cost(epochs, 0)
            per_step = cost(epochs, 1) - validations  # a step in each epoch
            if validations + per_step <= budget or epochs == 1:
                fitting = int((budget - validations) / per_step + 1e-9)  # 65 steps, not 64.999...
                return BudgetPlan(epochs, max(1, min(iterations_per_epoch, fitting)))
    low, high = least_epochs, 2 * least_epochs
    while cost(high, iterations_per_epoch) <= budget and high < 1_000_000:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if cost(middle, iterations_per_epoch) <= budget else (low, middle)
    if slack is not None and budget - cost(low, iterations_per_epoch) > slack:
        validations = cost(low + 1, 0)
        shorter = min(iterations_per_epoch - 1, int((budget - validations) / (cost(low + 1, 1) - validations) + 1e-9))
        if shorter * (low + 1) > low * iterations_per_epoch:
            return BudgetPlan(low + 1, shorter)
    return BudgetPlan(low, iterations_per_epoch)


def replan_margin(time_budget: float) -> float:
    """Seconds a run planned to ``time_budget`` seconds may be projected to end before or after it without a re-plan."""
    return min(REPLAN_MARGIN * time_budget, REPLAN_MARGIN_MOST_SECONDS)


def probe_shapes(schedule: Schedule, rng: np.random.Generator) -> list[Shape]:
    """The (patch, batch) shapes whose step time is measured: every stage's of a schedule of fixed stages (each
    stage is then planned at its own cost); for one that draws a patch every step, the final shape, the
    smallest and a middle one by voxels per step (the line through them plans it)."""
    final = (tuple(schedule.final_patch), schedule.final_batch)
    if schedule.draws == "stages":  # the final, the smallest, then the rest from the largest down
        shapes = sorted({(tuple(s.patch), s.batch) for s in schedule.stages}, key=lambda o: o[1] * math.prod(o[0]))
        return list(dict.fromkeys([final] + shapes[:1] + shapes[::-1]))
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


def measure_network_step_seconds(network: torch.nn.Module, batch_shape: Sequence[int], device: torch.device,
                                 low_precision: Optional[torch.dtype], memory_format: torch.memory_format) -> float:
    """Seconds of a training step's arithmetic at ``batch_shape`` (B, C, Z, Y, X): forward and backward of
    ``network`` on random crops in the step's precision and memory format, timed once after a warm-up (the recipe's
    spacing rule, before any case is preprocessed: :func:`.recipe.spacing_at_pace`).

    The loss and the optimiser's step are left out: at the final patch of a large volume (the left atrium's 96^3)
    they are about a percent of the step (AdamW's step 11-74 ms of 8-11 s on the 2-core CPU, docs/benchmarks.md
    section 14). ``network`` is changed by nothing but its gradients, which are cleared."""
    images = torch.randn(tuple(batch_shape), device=device).contiguous(memory_format=memory_format)
    network.to(device, memory_format=memory_format).train()
    seconds = 0.0
    for _ in range(PROBE_WARMUP + 1):
        start = time.perf_counter()
        with torch.autocast(device_type=device.type, dtype=low_precision or torch.float32,
                            enabled=low_precision is not None):
            output = network(images)
        output.float().mean().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        network.zero_grad(set_to_none=True)
    return seconds


@dataclass(frozen=True)
class Replan:
    """A budget's plan made again at the end of an epoch (or within it, after ``after_steps`` of its steps, when the
    epoch ends there): the run now ends after ``epochs`` epochs of ``iterations_per_epoch`` steps, on ``stages``."""

    epochs: int
    stages: tuple[Stage, ...]
    slowdown: float
    """The run's steps' seconds over the timed cost of the same steps (the pace the rest is planned at)."""
    expected_seconds: float
    """The run's predicted seconds from its start."""
    iterations_per_epoch: int
    """Steps in each epoch left: the configured number again when the time allows (a plan of short epochs)."""
    after_steps: Optional[int] = None
    """Made within the epoch after this many of its steps (:meth:`BudgetPlanner.check_within_epoch`), else ``None``."""


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

    Use: time :meth:`probe_shapes` with :func:`measure_step_cost`, then :meth:`plan`; every step,
    :meth:`check_within_epoch` with the epoch's steps' seconds so far (ending the epoch when it gives a plan);
    after each epoch (not ended so), :meth:`replan` with its steps' seconds.
    """

    def __init__(self, budget: float, schedule_for: Callable[[int], Schedule], *, validate_every: int,
                 cap: Optional[int] = None, started_at: float = 0.0, clock: Callable[[], float] = time.perf_counter,
                 agree: Callable[[float], float] = float):
        self.budget, self.schedule_for, self.validate_every, self.cap = budget, schedule_for, validate_every, cap
        self.started_at, self.clock, self.agree = started_at, clock, agree
        self.probed = schedule_for(max(cap or 0, PROBE_EPOCHS))
        """The schedule laid out over enough epochs to hold every stage size it can have."""
        self.least_epochs = self._least_epochs()
        """The fewest epochs a plan has when they fit (of fewer steps each when needed; see :meth:`_least_epochs`)."""
        self.step_seconds: Callable[[Stage], float] = lambda stage: math.nan
        """A step's timed seconds at a stage's patch and batch (from :meth:`plan`)."""
        self.validation_seconds = math.nan
        self.iterations_per_epoch = 0
        """The configured steps per epoch (from :meth:`plan`), which re-plans go back to when the time allows."""
        self.notes: tuple[str, ...] = ()
        """What the user should know of the plan (from :meth:`plan`: a budget too short for ``MIN_STEPS`` steps)."""
        self._paced = (0.0, 0.0)
        """(seconds taken, seconds the plan gave) of the steps that show the run's pace (see :meth:`replan`)."""

    def _least_epochs(self) -> int:
        """``MIN_EPOCHS``, or for a schedule of fixed stages the fewest epochs that keep all its stages, whichever is
        more; at most the user's ``cap``.

        Laid out over fewer epochs than it has sizes, PGPS keeps evenly spaced ones (:func:`~napari_pgps.curriculum.
        schedules.pgps_stages`) and its patch jumps: the left atrium's 15-minute plan on the 2-core CPU, 4 epochs,
        trained 32x16x16, 48x48x48, 80x64x64 and 96x96x96, one epoch each, of its 15 sizes (test Dice 0.533 against
        constant's 0.643, docs/benchmarks.md section 14). Shorter epochs keep the growth the method defines."""
        least = MIN_EPOCHS
        if self.probed.draws == "stages":
            wanted = len(self.probed.stages)
            while least < PROBE_EPOCHS and len(self.schedule_for(least).stages) < wanted:
                least += 1
        return min(least, self.cap) if self.cap else least

    @property
    def final_shape(self) -> Shape:
        """The schedule's final (patch, batch)."""
        return tuple(self.probed.final_patch), self.probed.final_batch

    def probe_shapes(self, seed: int) -> list[Shape]:
        """The (patch, batch) shapes to time (:func:`probe_shapes`; a drawing schedule draws from ``seed``)."""
        return probe_shapes(self.probed, np.random.default_rng(seed))

    def plan(self, cost: StepCost, validation_seconds: float, iterations_per_epoch: int,
             time_again: Optional[Callable[[Sequence[Shape]], StepCost]] = None) -> BudgetPlan:
        """The most epochs (at most ``cap``) whose steps, at their timed ``cost``, and validations of
        ``validation_seconds`` each fit the budget left now, at least :attr:`least_epochs` of them (of fewer steps when
        needed; :func:`plan_epochs`), and the run's predicted seconds.

        A schedule that draws a patch every step is planned at a step of its expected voxels on the fitted line.

        A plan of fewer than ``MIN_STEPS`` steps (the budget's doing, not the user's ``cap``) times the final
        shape's step once more with ``time_again`` (``measure_step_cost`` of a step at the shapes given): a busy
        moment often passes, and one shape is cheap to time. When it is faster now, every timed cost (validation
        included) is scaled by it. When the plan is still under the floor, the run keeps its budget and
        :attr:`notes` says so, with what to do: the budget is a promise users plan around (a demo, a queue, a
        night's slot), so the run does not train the floor and end late; it says loudly that it cannot.
        """
        plan = self._plan(cost, validation_seconds, iterations_per_epoch)
        if plan.steps < MIN_STEPS and not self._capped(plan) and time_again is not None:
            cost, validation_seconds = self.timed_again(cost, validation_seconds, time_again)
            plan = self._plan(cost, validation_seconds, iterations_per_epoch)
        self.notes = ()
        if plan.steps < MIN_STEPS and not self._capped(plan):
            steps = f"{plan.steps} step{'s' * (plan.steps != 1)}"
            self.notes = (f"the time budget of {duration_text(self.budget)} holds {steps} at {plan.step_seconds:.2f} s "
                          f"a step on this machine (fewer than the {MIN_STEPS} a model needs); the run keeps its budget "
                          "and will not segment well: give a longer time budget (--time-budget) or train when the "
                          "machine is not busy",)
        return plan

    def timed_again(self, cost: StepCost, validation_seconds: float,
                    time_again: Callable[[Sequence[Shape]], StepCost]) -> tuple[StepCost, float]:
        """(``cost``, ``validation_seconds``) after the final shape's step is timed once more with ``time_again``: when
        it is faster now (a busy moment passed), every timed cost scaled by it, else as they were."""
        final = self.final_shape
        faster = time_again([final]).at(*final) / cost.at(*final)
        if faster < 1.0:
            return cost.scaled(faster), validation_seconds * faster
        return cost, validation_seconds

    def final_patch_steps(self, cost: StepCost, validation_seconds: float) -> float:
        """The steps at the final patch and batch, at their timed ``cost``, that the budget left now holds after one
        validation of ``validation_seconds`` (what a constant patch would train; every process's mean)."""
        left = self.budget - (self.clock() - self.started_at) - validation_seconds
        return self.agree(max(left, 0.0) / cost.at(*self.final_shape))

    def _plan(self, cost: StepCost, validation_seconds: float, iterations_per_epoch: int) -> BudgetPlan:
        """:meth:`plan` at ``cost``, without timing again."""
        probed = self.probed
        random_step = None
        if probed.draws != "stages":  # a patch drawn every step: the expected voxels of a step
            random_step = cost.seconds(probed.relative_voxels() * probed.final_batch * math.prod(probed.final_patch))

        def step_seconds(stage: Stage) -> float:
            return random_step if random_step is not None else cost.at(stage.patch, stage.batch)

        def stages_for(epochs: int) -> list[tuple[int, float]]:
            return [(stage.epochs, step_seconds(stage)) for stage in self.schedule_for(epochs).stages]

        self.step_seconds, self.validation_seconds = step_seconds, validation_seconds
        self.iterations_per_epoch = iterations_per_epoch
        run_cost = RunCost(stages_for, validation_seconds, self.validate_every)
        spent = self.clock() - self.started_at
        plan = plan_epochs(self.budget - spent, run_cost, iterations_per_epoch, self.least_epochs,
                           slack=replan_margin(self.budget))
        epochs, steps = (min(plan.epochs, self.cap) if self.cap else plan.epochs), plan.iterations_per_epoch
        mean_step = (run_cost(epochs, steps) - run_cost(epochs, 0)) / (epochs * steps)
        return BudgetPlan(epochs, steps, spent + run_cost(epochs, steps), mean_step)

    def _capped(self, plan: BudgetPlan) -> bool:
        """Whether ``plan`` is the user's whole run (``cap`` epochs of the configured steps), not cut by the budget."""
        return plan.epochs == self.cap and plan.iterations_per_epoch == self.iterations_per_epoch

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
        left by the schedule's proportions), in epochs of the configured steps when they fit (see
        :meth:`_planned_again`).
        """
        evidence = self._evidence(stage, step_seconds)
        if evidence is None:
            return None
        self._paced = evidence
        pace, elapsed = self._pace(evidence)
        as_planned = elapsed + self._rest(stages, done, pace)(epochs - done, iterations_per_epoch)
        if abs(as_planned - self.budget) <= replan_margin(self.budget):
            return None
        return self._planned_again(stages, done, epochs, iterations_per_epoch, pace, elapsed)

    def check_within_epoch(self, stages: Sequence[Stage], stage: Stage, step_seconds: Sequence[float], epoch: int,
                           epochs: int, iterations_per_epoch: int) -> Optional[Replan]:
        """After each step of epoch ``epoch`` (0-based) of ``epochs``, trained on ``stage`` in steps of
        ``step_seconds`` so far: a new plan when the epoch should end here, else ``None``.

        The pace is checked every ``CHECK_STEPS`` steps while it is not yet known (no step of a stage that is
        evidence has been paced: the first epoch, or the first at a stage large enough) and in every epoch of a
        run of fewer than ``MIN_EPOCHS`` epochs (a run of one epoch had none to re-plan it). When, at the pace of
        the steps so far (all but the epoch's first; pooled and limited as in :meth:`replan`), the run as planned
        would end more than :func:`replan_margin` before or after the budget, and ending this epoch now with the
        rest planned again (``after_steps`` steps into it) ends the run nearer the budget, that plan; the trainer
        then ends the epoch instead of calling :meth:`replan` at its end. A run whose steps keep the plan's pace
        gets ``None`` at every step and trains exactly as planned.
        """
        taken = len(step_seconds)
        if taken % CHECK_STEPS or taken >= iterations_per_epoch or (self._paced[1] and epochs >= MIN_EPOCHS):
            return None
        evidence = self._evidence(stage, step_seconds[1:])  # the first waited for the loader's processes to start
        if evidence is None:
            return None
        pace, elapsed = self._pace(evidence)
        as_planned = (elapsed + self._rest(stages, epoch, pace)(epochs - epoch, iterations_per_epoch)
                      - taken * self.step_seconds(stage) * pace)
        if abs(as_planned - self.budget) <= replan_margin(self.budget):
            return None
        again = self._planned_again(stages, epoch + 1, epochs, iterations_per_epoch, pace, elapsed)
        if again is None or abs(again.expected_seconds - self.budget) >= abs(as_planned - self.budget):
            return None  # e.g. faster, but at the user's cap already: cutting the epoch would only lose steps
        self._paced = evidence
        return dataclasses.replace(again, after_steps=taken)

    def _evidence(self, stage: Stage, step_seconds: Sequence[float]) -> Optional[tuple[float, float]]:
        """The run's paced steps with these added: (their seconds, the plan's timed seconds of them); ``None`` when
        these say nothing of the pace (none, or a stage of under ``EVIDENCE_SHARE`` of the final step's voxels)."""
        probed = self.probed
        if not step_seconds or stage.voxels_per_step < EVIDENCE_SHARE * probed.final_batch * math.prod(probed.final_patch):
            return None
        return self._paced[0] + sum(step_seconds), self._paced[1] + len(step_seconds) * self.step_seconds(stage)

    def _pace(self, evidence: tuple[float, float]) -> tuple[float, float]:
        """(the pace of ``evidence``, within ``PACE_LIMITS``; the seconds since the run started), as every process
        of the run goes by them."""
        pace = self.agree(evidence[0] / evidence[1])
        elapsed = self.agree(self.clock() - self.started_at)
        return min(max(pace, PACE_LIMITS[0]), PACE_LIMITS[1]), elapsed

    def _rest(self, stages: Sequence[Stage], done: int, pace: float) -> RunCost:
        """The cost of a number of epochs after ``done`` (the ``stages`` laid out again for ``done`` + that many),
        each step and validation at its timed seconds times ``pace``."""

        def rest(total: int) -> list[tuple[int, float]]:
            """The stages' epochs after ``done`` in a run of ``total`` epochs, with a step's seconds at this pace."""
            parts, start = [], 0
            for laid in stages_laid_out_again(stages, done, total):
                parts.append((max(0, min(start + laid.epochs, total) - max(start, done)), self.step_seconds(laid) * pace))
                start += laid.epochs
            return parts

        return RunCost(lambda more: rest(done + more), self.validation_seconds * pace, self.validate_every)

    def _planned_again(self, stages: Sequence[Stage], done: int, epochs: int, iterations_per_epoch: int, pace: float,
                       elapsed: float) -> Optional[Replan]:
        """The run after ``done`` epochs planned again to the budget left at ``pace``; ``None`` when that is the plan
        it has (``epochs`` of ``iterations_per_epoch`` steps).

        The epochs left are of the configured steps (:attr:`iterations_per_epoch`) when enough of them fit (one
        more of fewer steps when they would leave more than :func:`replan_margin` unused, :func:`plan_epochs`); a run
        that has not had :attr:`least_epochs` epochs yet gets that many in all, of fewer steps when needed
        (:func:`plan_epochs`); after that, when not even one epoch of the configured steps fits, the run ends now.
        """
        left = self._rest(stages, done, pace)
        budget_left = self.budget - elapsed
        configured = self.iterations_per_epoch or iterations_per_epoch
        least = self.least_epochs - done
        if left(1, 1) > budget_left:  # not even one step fits: the run ends now
            more, steps = 0, iterations_per_epoch
        elif least >= 1:
            plan = plan_epochs(budget_left, left, configured, least)
            more, steps = plan.epochs, plan.iterations_per_epoch
        elif left(1, configured) > budget_left:
            more, steps = 0, iterations_per_epoch
        else:
            plan = plan_epochs(budget_left, left, configured, slack=replan_margin(self.budget))
            more, steps = plan.epochs, plan.iterations_per_epoch
        planned = min(done + more, self.cap) if self.cap else done + more
        if (planned, steps) == (epochs, iterations_per_epoch):
            return None
        return Replan(planned, stages_laid_out_again(stages, done, planned), pace,
                      elapsed + left(planned - done, steps), steps)
