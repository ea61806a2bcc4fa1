"""Patch-size schedules as pure functions.

A schedule turns (final patch, poolings per axis, total epochs, final batch
size, mode) into a :class:`Schedule`: stages the trainer follows in order, and
for the random schedules a rule for drawing each step's patch. Sizes are
(Z, Y, X); an axis with ``p`` 2x poolings takes multiples of ``2 ** p``.
:func:`schedule_for` is the schedule of a run's configuration: its network's
patch grid (from the architecture registry) and its curriculum options; the
trainer, the Curriculum widget and ``napari-pgps schedule`` all use it.

Schedules (PGPS: Fischer, Lang et al., MICCAI 2024, arXiv 2407.07853, and its journal extension,
arXiv 2510.23241; patch-size augmentation: Balle Sanchez et al., MIDL 2025):

* ``constant``: the final patch and batch for the whole run (the baseline).
* ``pgps-efficiency`` / ``pgps-performance``: Progressive Growing of Patch
  Size. The patch grows one axis at a time (journal rule: the axis with the
  smallest ``current + step``, ties to the lowest axis; or the MICCAI
  round-robin from axis 1). Efficiency keeps the batch size; Performance keeps
  the voxels per step, ``floor(B * prod(final) / prod(patch))`` (the journal
  rule), or derives the batches backwards from the last stage by the voxel
  ratio of consecutive stages (PGPS+, the MICCAI rule); optionally capped.
* ``rpss``: every step draws one of the PGPS stages at random.
* ``augment``: every step draws each axis uniformly from the sizes the
  network takes within a range (optionally the final patch for a share of the
  steps, and a batch that keeps the voxels per step as Performance does).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..config import RunConfig, ScheduleOptions
from ..errors import InputError
from ..models.architectures import check_minimum_patch, minimum_patch, patch_divisor, patch_poolings, schedule_of
from ..models.planning import check_patch_size

SCHEDULES = ("constant", "pgps-efficiency", "pgps-performance", "rpss", "augment")
RANDOM_PATCH_SCHEDULES = ("rpss", "augment")
"""The schedules that draw a new patch shape at every step."""
GROWTH_RULES = ("journal", "miccai")
PERFORMANCE_BATCH_RULES = ("voxels", "miccai")


@dataclass(frozen=True)
class Stage:
    """Train ``epochs`` epochs on crops of ``patch`` (Z, Y, X) in batches of ``batch``."""

    patch: tuple[int, int, int]
    batch: int
    epochs: int

    @property
    def voxels_per_step(self) -> int:
        return self.batch * math.prod(self.patch)


@dataclass(frozen=True)
class Schedule:
    """What the trainer follows.

    Attributes:
        name: the schedule's name.
        stages: followed in order, each for its epochs; they add up to the total.
        choices: ``rpss``: each step draws one of these (their ``epochs`` is 0).
        axis_sizes: ``augment``: each step draws each axis from these sizes.
        final_share: ``augment``: the share of steps that take the final patch instead of a drawn one.
        keep_voxels: ``augment``: a drawn patch's batch keeps the final voxels per step
            (:func:`performance_batch`, capped by ``max_batch``); otherwise it is ``final_batch``.
        final_patch, final_batch: validation and inference use these.
    """

    name: str
    stages: tuple[Stage, ...]
    final_patch: tuple[int, int, int]
    final_batch: int
    choices: tuple[Stage, ...] = ()
    axis_sizes: tuple[tuple[int, ...], ...] = ()
    final_share: float = 0.0
    keep_voxels: bool = False
    max_batch: Optional[int] = None

    @property
    def epochs(self) -> int:
        return sum(s.epochs for s in self.stages)

    @property
    def draws(self) -> str:
        """How a step's (patch, batch) is chosen: "stages" (the current stage's), "choices" (one of
        :attr:`choices` at random, ``rpss``) or "axis_sizes" (each axis from :attr:`axis_sizes`, ``augment``)."""
        if self.choices:
            return "choices"
        return "axis_sizes" if self.axis_sizes else "stages"

    def draw(self, stage: Stage, rng: np.random.Generator) -> tuple[tuple[int, int, int], int]:
        """The (patch, batch) of one step within ``stage``; random unless :attr:`draws` is "stages"."""
        if self.draws == "choices":
            choice = self.choices[int(rng.integers(len(self.choices)))]
            return choice.patch, choice.batch
        if self.draws == "axis_sizes":
            if self.final_share > 0 and rng.random() < self.final_share:
                return self.final_patch, stage.batch
            patch = tuple(int(sizes[int(rng.integers(len(sizes)))]) for sizes in self.axis_sizes)
            return patch, self._augment_batch(patch, stage.batch)
        return stage.patch, stage.batch

    def _augment_batch(self, patch: tuple[int, ...], batch: int) -> int:
        if not self.keep_voxels:
            return batch
        return int(performance_batch(batch, math.prod(self.final_patch), math.prod(patch), self.max_batch))

    def relative_voxels(self) -> float:
        """Voxels processed over the whole run relative to the constant schedule (expected value when random)."""
        constant = self.epochs * self.final_batch * math.prod(self.final_patch)
        if self.draws == "choices":
            return float(np.mean([c.voxels_per_step for c in self.choices])) * self.epochs / constant
        if self.draws == "axis_sizes":
            # every combination of axis sizes is equally likely: their volumes, as one array
            volumes = functools.reduce(np.multiply.outer, [np.asarray(s, dtype=np.int64) for s in self.axis_sizes]).ravel()
            batches = self.final_batch
            if self.keep_voxels:
                batches = performance_batch(self.final_batch, math.prod(self.final_patch), volumes, self.max_batch)
            drawn = float(np.mean(batches * volumes))
            per_step = self.final_share * self.final_batch * math.prod(self.final_patch) + (1 - self.final_share) * drawn
            return per_step * self.epochs / constant
        return sum(s.epochs * s.voxels_per_step for s in self.stages) / constant

    def to_dict(self) -> dict:
        """``{"stages": [{"patch", "batch", "epochs"}], "relative_voxels"}`` (plus the draw rule when random)."""
        out: dict = {
            "stages": [{"patch": list(s.patch), "batch": s.batch, "epochs": s.epochs} for s in self.stages],
            "relative_voxels": self.relative_voxels(),
        }
        if self.draws == "choices":
            out["random_stages"] = [{"patch": list(s.patch), "batch": s.batch} for s in self.choices]
        if self.draws == "axis_sizes":
            out["random_axis_sizes"] = [list(sizes) for sizes in self.axis_sizes]
            out["final_share"] = self.final_share
            out["batch_keeps_voxels"] = self.keep_voxels
        return out


def schedule_for(config: RunConfig, epochs: Optional[int] = None) -> Schedule:
    """The patch schedule a run with ``config`` trains with.

    The network's patch grid comes from the architecture registry (its divisor per axis as 2x poolings, and its
    minimum patch); the schedule's name (:func:`napari_pgps.models.architectures.schedule_of`: the network's
    default when the configuration names none) and options from ``config.curriculum``; the final patch
    (Z, Y, X) from ``config.model.patch_size``, whose network must be planned (kernel sizes and strides, unless
    the network has a fixed divisor); the final batch from ``config.training.batch_size``.

    Args:
        epochs: the run's epochs in place of ``config.training.epochs`` (a run planned to a time budget tries
            several; the configuration is not changed).

    Raises:
        InputError: the final patch is not on the network's grid or below its minimum; an unknown schedule or
            option.
    """
    model = config.model
    epochs = config.training.epochs if epochs is None else epochs
    check_patch_size(model.patch_size, patch_divisor(model), what="final patch")
    check_minimum_patch(model, model.patch_size)
    return build_schedule(schedule_of(config), model.patch_size, patch_poolings(model), epochs,
                          config.training.batch_size, config.curriculum.options, minimum_patch(model))


def build_schedule(
    name: str,
    final_patch: Sequence[int],
    poolings: Sequence[int],
    epochs: int,
    batch: int,
    options: Optional[ScheduleOptions] = None,
    minimum_patch: Sequence[int] = (1, 1, 1),
) -> Schedule:
    """The schedule called ``name``.

    Args:
        final_patch: (Z, Y, X), a multiple of ``2 ** poolings`` per axis.
        poolings: 2x poolings of the network per axis (Z, Y, X).
        epochs: total epochs E.
        batch: the final-stage batch size B.
        options: the tuning knobs (the defaults when ``None``).
        minimum_patch: the smallest size per axis the network takes (SwinUNETR: 64).

    Raises:
        InputError: unknown name or option.
    """
    options = ScheduleOptions() if options is None else options
    final = tuple(int(p) for p in final_patch)
    if epochs < 1 or batch < 1:
        raise InputError("a schedule needs at least 1 epoch and a batch of at least 1.")
    if options.performance_batch not in PERFORMANCE_BATCH_RULES:
        raise InputError(f"unknown Performance batch rule '{options.performance_batch}'; "
                         f"choose one of {', '.join(PERFORMANCE_BATCH_RULES)}.")
    if name == "constant":
        return Schedule(name, (Stage(final, batch, epochs),), final, batch)
    if name in ("pgps-efficiency", "pgps-performance"):
        mode = name.split("-")[1]
        return Schedule(name, tuple(pgps_stages(final, poolings, epochs, batch, mode, options, minimum_patch)), final, batch)
    if name == "rpss":
        count = len(growth_sizes(final, poolings, options, minimum_patch))
        stages = pgps_stages(final, poolings, count, batch, options.rpss_mode, options, minimum_patch)
        choices = tuple(Stage(s.patch, s.batch, 0) for s in stages)
        return Schedule(name, (Stage(final, batch, epochs),), final, batch, choices=choices)
    if name == "augment":
        sizes = augment_sizes(final, poolings, options.augment_range)
        sizes = tuple(tuple(v for v in axis if v >= m) or (f,) for axis, m, f in zip(sizes, minimum_patch, final))
        if not 0 <= options.augment_final_share < 1:
            raise InputError(f"augment final share {options.augment_final_share} must be in [0, 1).")
        if options.augment_mode not in ("efficiency", "performance"):
            raise InputError(f"unknown augment mode '{options.augment_mode}'; choose efficiency or performance.")
        return Schedule(
            name,
            (Stage(final, batch, epochs),),
            final,
            batch,
            axis_sizes=sizes,
            final_share=options.augment_final_share,
            keep_voxels=options.augment_mode == "performance",
            max_batch=options.max_batch,
        )
    raise InputError(f"unknown schedule '{name}'; choose one of {', '.join(SCHEDULES)}.")


def growth_sizes(
    final: Sequence[int], poolings: Sequence[int], options: Optional[ScheduleOptions] = None, minimum_patch: Sequence[int] = (1, 1, 1)
) -> list[tuple[int, int, int]]:
    """The patch sizes PGPS grows through, smallest first, ending with ``final``.

    Each size differs from the one before in one axis, by that axis's step
    ``2 ** p`` (clamped at the final size).
    """
    options = ScheduleOptions() if options is None else options
    if options.growth not in GROWTH_RULES:
        raise InputError(f"unknown growth rule '{options.growth}'; choose one of {', '.join(GROWTH_RULES)}.")
    step = [2**int(p) for p in poolings]
    if any(f % s for f, s in zip(final, step)):
        raise InputError(f"final patch {tuple(final)} is not a multiple of {tuple(step)} (the network's poolings).")
    current = list(step)
    if options.growth == "miccai":
        current[0] = min(2 * step[0], final[0])  # the MICCAI version starts at a 2x1x1 bottleneck
    sizes = [tuple(current)]
    turn = 1
    while tuple(current) != tuple(final):
        open_axes = [a for a in range(3) if current[a] < final[a]]
        if options.growth == "journal":
            axis = min(open_axes, key=lambda a: (current[a] + step[a], a))
        else:
            while turn % 3 not in open_axes:
                turn += 1
            axis = turn % 3
            turn += 1
        current[axis] = min(current[axis] + step[axis], final[axis])
        sizes.append(tuple(current))
    if options.growth == "journal" and not options.single_voxel_bottleneck and len(sizes) > 1:
        bottleneck = [c // s for c, s in zip(sizes[0], step)]
        if math.prod(bottleneck) == 1:
            sizes = sizes[1:]
    sizes = [s for s in sizes if all(v >= m for v, m in zip(s, minimum_patch))] or [tuple(final)]
    if options.start_fraction > 0:
        target = options.start_fraction * math.prod(final)
        first = next(i for i, s in enumerate(sizes) if math.prod(s) >= target)
        sizes = sizes[first:]
    return sizes


def pgps_stages(
    final: Sequence[int],
    poolings: Sequence[int],
    epochs: int,
    batch: int,
    mode: str,
    options: Optional[ScheduleOptions] = None,
    minimum_patch: Sequence[int] = (1, 1, 1),
) -> list[Stage]:
    """PGPS stages with their epochs and batch sizes.

    Epochs: with S stages, each of the first S-1 gets ``floor(g * E / (S-1))``
    when ``growth_fraction`` g < 1, else ``floor(E / S)``; the last stage takes
    the remainder. With fewer epochs than sizes (E < S), E evenly spaced sizes
    (the smallest and the final one included) train one epoch each, so the
    patch then grows by more than one step at a time.

    Batches: ``batch`` in Efficiency mode; in Performance mode per
    ``options.performance_batch``, worked out on every size before the sizes
    are thinned to the epochs, then capped by ``options.max_batch``.
    """
    options = ScheduleOptions() if options is None else options
    if mode not in ("efficiency", "performance"):
        raise InputError(f"unknown PGPS mode '{mode}'; choose efficiency or performance.")
    if not 0 < options.growth_fraction <= 1 or not 0 <= options.start_fraction <= 1:
        raise InputError("growth fraction must be in (0, 1] and start fraction in [0, 1].")
    sizes = growth_sizes(final, poolings, options, minimum_patch)
    if mode == "efficiency":
        batches = [batch] * len(sizes)
    elif options.performance_batch == "voxels":
        batches = [int(performance_batch(batch, math.prod(final), math.prod(size), options.max_batch)) for size in sizes]
    else:
        batches = miccai_batches(sizes, batch)
        if options.max_batch is not None:
            batches = [max(batch, min(b, options.max_batch)) for b in batches]
    if epochs < len(sizes):
        keep = sorted({int(round(i)) for i in np.linspace(0, len(sizes) - 1, epochs)})
        sizes = [sizes[i] for i in keep]
        batches = [batches[i] for i in keep]
    count = len(sizes)
    if options.growth_fraction < 1 and count > 1:
        each = int(options.growth_fraction * epochs) // (count - 1)
    else:
        each = epochs // count
    stages = []
    for index, (size, stage_batch) in enumerate(zip(sizes, batches)):
        span = each if index < count - 1 else epochs - each * (count - 1)
        if span <= 0:
            continue
        stages.append(Stage(tuple(size), stage_batch, span))
    return stages


def performance_batch(batch: int, final_voxels: int, patch_voxels, max_batch: Optional[int] = None):
    """The Performance batch of a patch of ``patch_voxels`` voxels (an int or an array of them):
    ``floor(batch * final_voxels / patch_voxels)``, at least ``batch``, at most ``max_batch`` (when given)."""
    keep = np.maximum(batch, batch * final_voxels // patch_voxels)
    return keep if max_batch is None else np.maximum(batch, np.minimum(keep, max_batch))


def miccai_batches(sizes: Sequence[Sequence[int]], batch: int) -> list[int]:
    """PGPS+ batches (the Performance mode of the MICCAI 2024 paper), one per size of ``sizes``.

    ``sizes`` are the stages' patches (Z, Y, X), smallest first, ending with
    the final one. The last stage takes ``batch``; going backwards, each stage
    takes ``floor(next batch * prod(next patch) / prod(patch))``, so the
    rounding down compounds and early batches are smaller than the journal's
    ``floor(B * prod(final) / prod(patch))`` (final 128^3, 5 poolings per axis,
    B = 2, MICCAI growth: 24, 12, 6, 4, 3, 2, 2, 2, 2 against 64, 32, 16, ...).
    The reference code (``plan_batch_size`` of its PGPS+ trainer) starts the
    chain from 2, nnU-Net's usual batch size, and raises every batch to at
    least B; starting from B is the same for B = 2.
    """
    batches = [batch]
    for index in range(len(sizes) - 2, -1, -1):
        batches.insert(0, batches[0] * math.prod(sizes[index + 1]) // math.prod(sizes[index]))
    return batches


def augment_sizes(final: Sequence[int], poolings: Sequence[int], size_range: tuple[float, float]) -> tuple[tuple[int, ...], ...]:
    """Per axis, the sizes the network takes between ``low * final`` and ``high * final``.

    An axis never drops to a single bottleneck voxel (one pooling step) unless
    its final size is one step: instance normalisation needs more than one voxel.
    """
    low, high = size_range
    if not 0 < low <= 1 <= high:
        raise InputError(f"augmentation range {size_range} must satisfy 0 < low <= 1 <= high.")
    out = []
    for f, p in zip(final, poolings):
        step = 2**int(p)
        sizes = tuple(range(step if f <= step else 2 * step, int(high * f) + 1, step))
        sizes = tuple(s for s in sizes if s >= low * f) or (f,)
        out.append(sizes)
    return tuple(out)


def stage_at(stages: Sequence[Stage], epoch: int) -> int:
    """Index of the stage that epoch ``epoch`` (0-based) belongs to."""
    end = 0
    for index, stage in enumerate(stages):
        end += stage.epochs
        if epoch < end:
            return index
    return len(stages) - 1


def stages_laid_out_again(stages: Sequence[Stage], done: int, epochs: int) -> tuple[Stage, ...]:
    """``stages`` laid out again for a run of ``epochs`` epochs of which ``done`` are trained (a run re-planned
    to its time budget).

    The stages already finished keep their epochs, and so does the part of the current stage already trained.
    The epochs left (``epochs - done``) are shared among the rest of the current stage and the stages not yet
    begun in proportion to their planned epochs, rounded by the largest remainders (each stage not yet begun at
    least one), so a schedule's rule (PGPS's equal stages) holds for what is left, however often a run is re-planned
    up and down. (Rounding each share down and giving the last stage the rest fed every re-plan's rounding to the
    final patch: a 45-minute PGPS run re-planned nine times ended with 1-3 epochs at each middle stage and 20 at the
    final one, where the schedule had 6 and 12.) With fewer epochs left than stages, evenly spaced ones train one
    epoch each, the last (final patch) always among them.
    """
    stages = tuple(stages)
    current = stage_at(stages, done)
    start = sum(s.epochs for s in stages[:current])
    begun = max(done - start, 0)
    pieces = [(stages[current], stages[current].epochs - begun)] + [(s, s.epochs) for s in stages[current + 1:]]
    left = max(epochs - done, 0)
    optional = 1 if begun else 0  # a stage already begun may end now
    needed = len(pieces) - optional
    if left < needed:
        picks = {int(p) for p in np.linspace(len(pieces) - 1, optional, left).round()}  # the last one first
        shares = [int(i in picks) for i in range(len(pieces))]
    else:
        minimum = [0 if i < optional else 1 for i in range(len(pieces))]
        shares = _apportioned(left, [max(w, 0) for _, w in pieces], minimum)
    laid = list(stages[:current])
    if begun:
        laid.append(Stage(stages[current].patch, stages[current].batch, begun + shares[0]))
        pieces, shares = pieces[1:], shares[1:]
    laid += [Stage(stage.patch, stage.batch, share) for (stage, _), share in zip(pieces, shares) if share > 0]
    return tuple(laid)


def _apportioned(total: int, weights: Sequence[int], minimum: Sequence[int]) -> list[int]:
    """``total`` split in proportion to ``weights`` by the largest remainders (ties to the later pieces: the final
    patch first), then each piece raised to its ``minimum`` with epochs from the pieces furthest above theirs.
    ``total`` must be at least ``sum(minimum)``; weights all zero share it evenly."""
    weight = sum(weights)
    ideal = [total * w / weight for w in weights] if weight else [total / len(weights)] * len(weights)
    shares = [math.floor(x) for x in ideal]
    by_remainder = sorted(range(len(shares)), key=lambda i: (ideal[i] - shares[i], i), reverse=True)
    for i in by_remainder[:total - sum(shares)]:
        shares[i] += 1
    for i, least in enumerate(minimum):
        while shares[i] < least:
            donor = max(range(len(shares)), key=lambda j: (shares[j] - minimum[j], j))
            shares[donor] -= 1
            shares[i] += 1
    return shares


def crops_per_case(batch: int, final_batch: int) -> int:
    """With a batch larger than the final one, ``ceil(batch / B)`` crops come from each case read (as in the reference)."""
    return max(1, math.ceil(batch / final_batch))
