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
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..errors import InputError

PROBE_WARMUP = 1
PROBE_STEPS = 2
"""Timed steps per probed size (after a warm-up step at that size)."""
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
    epochs: int
    iterations_per_epoch: int


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
