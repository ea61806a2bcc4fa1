"""The training recipe: what a run trains with, chosen from its time budget, its data and its network, and why.

A run's recipe is the set of choices that decide how good a model its time buys: the patch schedule, how long it
trains, the augmentation, the weight averaging, the network's width and patch, and the step's arithmetic. Every
choice the configuration leaves automatic (``None``) is made here or by the device profile
(:mod:`.resolve`), by a rule that cites the measurement behind it (docs/benchmarks.md); a value the
configuration gives (``--config``, a flag, a widget) is kept and said to be the user's.

:func:`recipe_schedule` is the rule :func:`.resolve.resolve_config` applies; :func:`spacing_at_pace`,
:func:`schedule_at_pace` and :func:`augmentation_at_pace` are applied once a step has been timed (the spacing before
preprocessing, the others by the trainer before it plans its epochs); :func:`explain_recipe` gives one
:class:`Choice` per part of a resolved configuration, which ``train`` prints one line each before the first step
(the :class:`napari_pgps.events.RunStarted` event's ``recipe``) and the Train widget shows.

The rules, and the measurement behind each (2-core CPU, hippocampus, held-out Dice):

=====================  ===============================================  ============================================
part                   rule                                             measured
=====================  ===============================================  ============================================
schedule               a run planned to a time budget trains PGPS       equal wall time, 3 seeds: +0.35 points over
                       Efficiency when its network takes other patch    constant at 15 min, +0.34 at 45 min (3 of 3
                       sizes and it is not pruned; else the network's   seeds each; section 10); left atrium 15 min
                       own (constant, or augment for the                +1.4 points (issue 33's withheld cases).
                       hypernetwork)                                    Performance: +0.44 / +0.33, behind at 5 min
                                                                        and 20% more memory. Test split, 3 seeds:
                                                                        +1.61 at 5 min, +0.41 at 15, -0.03 at 45
                                                                        (level; section 14).
                       ... unless the budget holds fewer than           left atrium, 2-core AVX2 CPU, one seed: 15
                       ``MIN_STEPS`` steps at the final patch, timed    min, 72 steps at 96^3, PGPS -11.0 and -11.8
                       when the run starts (:func:`schedule_at_pace`):  points (stages thinned to 4 epochs, or all
                       then constant                                    15 kept); 45 min, 210 steps, PGPS +6.6
                                                                        (section 14)
length                 as many epochs as the budget holds: no cap       the capped default (25 epochs) used 5 of its
                       unless ``--epochs`` is given                     15 minutes (issue 33).
spacing                one level coarser than the data's (twice the     left atrium, 2-core AVX2 CPU, one seed:
                       spacing, :func:`coarser_spacing`) when the       1.25 mm instead of 0.625, 15 min +19.6
                       final patch leaves part of the median case out   points (constant), 45 min +6.8 (PGPS
                       and the budget holds fewer than                  Efficiency); 0.625 mm given 120 min 0.902,
                       ``COARSE_SPACING_STEPS`` steps at that patch,    level with 1.25 mm's 45 min; 1.25 mm given
                       timed before preprocessing                       120 min 0.912 (section 14)
                       (:func:`spacing_at_pace`); else the data's
augmentation           the device profile's (CPU: none), unless the     1,250 steps: none 0.876, mirroring 0.858,
                       budget holds at least ``LONG_RUN_STEPS`` steps   nnU-Net's 0.826 (section 2); ramped in from
                       at the final patch, timed when the run starts    none: -2.05 points at 15 min, -0.89 at 45,
                       (:func:`augmentation_at_pace`): then nnU-Net's,  +0.24 at 120 (one seed each, section 14).
                       ramped in from none over the middle half of
                       the epochs
=====================  ===============================================  ============================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ..config import RunConfig
from ..models.architectures import architecture, default_architecture
from .budget import MIN_STEPS

RECIPE_VERSION = 3
"""The recipe's revision, raised whenever a rule changes what a run of the same configuration trains with, so that a
result kept from an earlier recipe (the bench's kept runs) is not taken for this one's unless the new rule leaves it
as it was (:func:`trained_as_this_recipe`). 1: issue 33's recipe before the spacing rule; 2: the spacing rule
(:func:`spacing_at_pace`); 3: the augmentation rule for long runs (:func:`augmentation_at_pace`)."""

KEPT_STEPS_MARGIN = 1.5
"""How much faster than its run's median step at the final patch the step timed at its start may have been (a busy
machine slows a run's later steps): a kept run of version 2 counts as this recipe's only when its budget held fewer
than ``LONG_RUN_STEPS / KEPT_STEPS_MARGIN`` steps at that median (:func:`trained_as_this_recipe`)."""

LONG_RUN_STEPS = 6000
"""A run planned to a time budget whose augmentation is the CPU profile's none trains nnU-Net's augmentation, ramped
in from none (:data:`LONG_RUN_RAMP`), when its budget holds at least this many steps at the final patch
(:func:`augmentation_at_pace`).

Measured on the hippocampus (2-core AVX2 CPU, fp32, seed 0, 40 test cases, PGPS Efficiency): 120 minutes, about
9,000 steps' worth at the final patch (0.8 s each), 0.8836 with the ramp against 0.8812 without (validation 0.8937
against 0.8824: the plain run's stopped rising after 25 minutes, the ramped one's rose to its end); 45 minutes,
about 1,800 (1.5 s each), 0.8767 against 0.8856; 15 minutes 2.05 points below. 6,000 keeps below it every budget
measured to lose with the ramp and the issue's bf16 machine's 15 minutes (about 3,400 steps of 0.26 s, where plain
crops scored 0.887 withheld), and puts that machine's 45 minutes (about 10,000), whose plain runs drifted down,
above it."""

LONG_RUN_AUGMENTATION = "nnunet"
LONG_RUN_RAMP = (0.25, 0.75)
"""The shares of a long run's epochs over which :data:`LONG_RUN_AUGMENTATION` rises from none to full strength
(:func:`napari_pgps.data.augmentation.augmentation_strength`)."""

BUDGET_SCHEDULE = "pgps-efficiency"
"""The schedule of a run planned to a time budget (see the module's table)."""

COARSE_SPACING_STEPS = 1000
"""A run planned to a time budget whose final patch leaves part of the median case out trains at twice the data's
spacing (:func:`spacing_at_pace`) when its budget holds fewer than this many steps at that patch.

Measured on the left atrium (0.625 mm, final patch 96^3, 60 mm of a median case of 55 x 89 x 120 mm; 2-core AVX2 CPU,
one seed, 8 test cases), at twice the spacing (1.25 mm, patch 48 x 80 x 112 covering the median case, half the
voxels): 15 minutes (about 80 steps at 96^3) constant 0.838 against 0.643, +19.6 Dice points; 45 minutes (about
245) PGPS Efficiency 0.904 against 0.836, +6.8; 120 minutes (about 650) 0.912 against 0.902 (HD95 3.5 mm against
9.6). 1,000 keeps that CPU's 120 minutes (600-720 steps as the timing varies) on the measured side; where the full
resolution wins back is not measured."""


def trained_as_this_recipe(version: int, budget: Optional[float], final_patch_step_seconds: Optional[float]) -> bool:
    """Whether a run planned by the recipe of ``version`` trained what this one plans for its configuration: the same
    version, or version 2 where its budget (seconds) held fewer than ``LONG_RUN_STEPS / KEPT_STEPS_MARGIN`` steps of
    its median seconds at the final patch (``final_patch_step_seconds``), which version 3's one new rule
    (:func:`augmentation_at_pace`) leaves as they were."""
    if version == RECIPE_VERSION:
        return True
    if version != 2 or not budget or not final_patch_step_seconds:
        return False
    return budget / final_patch_step_seconds < LONG_RUN_STEPS / KEPT_STEPS_MARGIN


@dataclass(frozen=True)
class Choice:
    """One part of a run's recipe: its value and why."""

    part: str
    """What is chosen, in the user's words: "schedule", "length", "augmentation", ..."""
    value: str
    reason: str
    by_user: bool = False
    """The configuration gave it (``--config``, a flag, a widget); the recipe kept it."""

    def line(self) -> str:
        """``"schedule: pgps-efficiency (why)"``."""
        return f"{self.part}: {self.value} ({'your configuration' if self.by_user else self.reason})"


def is_budgeted(config: RunConfig, default_budget: Optional[float]) -> bool:
    """Whether a run of this configuration is planned to a time budget: it gives one, or gives no epochs on a
    device whose profile has a default budget (``default_budget``, seconds or ``None``)."""
    return config.training.time_budget is not None or (config.training.epochs is None and default_budget is not None)


def recipe_schedule(config: RunConfig, budgeted: bool) -> str:
    """The patch schedule a run trains with: the configuration's; else, for a run planned to a time budget whose
    network takes other patch sizes than its final one and is not pruned progressively, :data:`BUDGET_SCHEDULE`;
    else its network's own (:attr:`napari_pgps.models.architectures.Architecture.default_schedule`)."""
    if config.curriculum.schedule:
        return config.curriculum.schedule
    spec = architecture(config.model.architecture or default_architecture(config))
    varies = spec.default_schedule == "constant" and not spec.only_training_patch
    if budgeted and varies and not config.pruning.enabled:
        return BUDGET_SCHEDULE
    return spec.default_schedule


def schedule_choice(asked: RunConfig, resolved: RunConfig, budgeted: bool) -> Choice:
    """The schedule part of the recipe: ``resolved.curriculum.schedule`` (with ``resolved.model.architecture``)
    and why, for a run asked as ``asked`` (:func:`is_budgeted` says whether it is ``budgeted``)."""
    name = resolved.curriculum.schedule
    if asked.curriculum.schedule:
        return Choice("schedule", name, "", by_user=True)
    if name == BUDGET_SCHEDULE and budgeted:
        why = ("PGPS Efficiency beat the constant patch at equal time up to 15 min in every seed measured: +0.35 "
               "Dice points at 15 min and +0.34 at 45 min on a bf16 CPU (docs/benchmarks.md section 10); on test "
               "cases on a slower CPU +1.6 at 5 min, +0.4 at 15 min, level at 45 min (-0.03), and on the left "
               "atrium +6.6 at 45 min (section 14)")
    elif not budgeted:
        why = "a run of set epochs keeps the network's own schedule; the recipe's PGPS choice is for time budgets"
    elif asked.pruning.enabled:
        why = "PSP-Seg's pruning judges its losses epoch to epoch at one patch size"
    else:
        why = f"the {resolved.model.architecture} network's own"
    return Choice("schedule", name, why)


def schedule_at_pace(choice: Choice, final_patch_steps: float) -> Choice:
    """The schedule part again once the run's steps are timed: the recipe's PGPS Efficiency gives way to the
    constant patch when the budget holds fewer than ``MIN_STEPS`` steps at the final patch (``final_patch_steps``,
    :meth:`.budget.BudgetPlanner.final_patch_steps`); a schedule the configuration gave, or another rule's, is kept.

    Measured (the 2-core AVX2 CPU, left atrium, 15 minutes, 72 steps of 11 s at 96^3): PGPS Efficiency 11.0 and 11.8
    test Dice points behind constant, its stages thinned to 4 epochs or all 15 kept; where the budget held 158-360
    steps at the final patch it was ahead (hippocampus 5 minutes, +2.4 and +1.6 points over 3 seeds at 158-200 and
    310-360 steps; the issue's left atrium on the bf16 machine, about 200, +1.4; the left atrium at 45 minutes on the
    AVX2 CPU, 210, +6.6)."""
    if choice.by_user or choice.value != BUDGET_SCHEDULE or final_patch_steps >= MIN_STEPS:
        return choice
    return Choice("schedule", "constant",
                  f"the budget holds {final_patch_steps:.0f} steps at the final patch on this machine, fewer than "
                  f"the {MIN_STEPS} below which PGPS Efficiency lost to the constant patch: left atrium at 15 min on "
                  "a 2-core CPU, 72 steps, 11 test Dice points behind (docs/benchmarks.md section 14)")


def augmentation_at_pace(choice: Choice, final_patch_steps: float) -> tuple[Choice, Optional[tuple[float, float]]]:
    """The augmentation part again once the run's steps are timed: where it is the CPU profile's none (not the
    configuration's, nor another profile's), a budget that holds at least ``LONG_RUN_STEPS`` steps at the final patch
    (``final_patch_steps``, :meth:`.budget.BudgetPlanner.final_patch_steps`) trains :data:`LONG_RUN_AUGMENTATION`
    ramped in over :data:`LONG_RUN_RAMP` of its epochs. Returns the choice and, where it changed, the ramp to train
    (:attr:`napari_pgps.config.DataConfig.augmentation_ramp`), else ``None``."""
    if choice.by_user or choice.value != "none" or final_patch_steps < LONG_RUN_STEPS:
        return choice, None
    start, end = LONG_RUN_RAMP
    value = f"{LONG_RUN_AUGMENTATION}, from none at {start:.0%} of the run to full strength at {end:.0%}"
    why = (f"the budget holds {final_patch_steps:.0f} steps at the final patch on this machine, at least "
           f"{LONG_RUN_STEPS}: that long, plain crops stop teaching and augmentation pays; hippocampus, 120 min on a "
           "2-core CPU: 0.884 with it against 0.881 without (docs/benchmarks.md section 14)")
    return Choice("augmentation", value, why), LONG_RUN_RAMP


def coarser_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    """One level coarser than ``spacing`` (Z, Y, X, mm): the axes finer than half the coarsest doubled, or, where
    none is, all three (nnU-Net's low-resolution rule, which coarsens an anisotropic case's fine axes first)."""
    coarsest = max(spacing)
    fine = [s < coarsest / 2 for s in spacing]
    return tuple(float(2 * s if fine[a] or not any(fine) else s) for a, s in enumerate(spacing))


def _spacing_text(spacing: Sequence[float]) -> str:
    """``"1.25 x 1.25 x 1.25 mm"`` (Z, Y, X): the spacing part's value."""
    return " x ".join(f"{s:g}" for s in spacing) + " mm"


def spacing_without_timing(asked: RunConfig, resolved: RunConfig, median_shape: Sequence[int], budgeted: bool,
                           distributed: bool = False) -> Optional[Choice]:
    """The spacing part of the recipe where no step need be timed to choose it: the configuration's; the data's
    for a run of set epochs, a distributed run, one not resampled or given its patch, or one whose final patch
    covers the median case (``median_shape``, Z, Y, X at ``resolved.model.spacing``). ``None``: the step at the
    final patch is to be timed and the spacing chosen from it (:func:`spacing_at_pace`)."""
    model = resolved.model
    value = _spacing_text(model.spacing)
    if asked.model.spacing is not None:
        return Choice("spacing", value, "", by_user=True)
    if not resolved.preprocessing.resample:
        return Choice("spacing", value, "the cases' own: resampling is off")
    if not budgeted or distributed or asked.model.patch_size is not None:
        why = ("a run of set epochs" if not budgeted else "a distributed run" if distributed
               else "a run given its patch")
        return Choice("spacing", value, f"the data's (nnU-Net's rule); {why} is not coarsened")
    if all(p >= m for p, m in zip(model.patch_size, median_shape)):
        return Choice("spacing", value, "the data's (nnU-Net's rule): the final patch covers the median case")
    return None


def spacing_at_pace(resolved: RunConfig, median_shape: Sequence[int],
                    step_seconds: float) -> tuple[Choice, Optional[tuple[float, float, float]]]:
    """The spacing part of a budgeted run whose final patch leaves part of the median case out (``median_shape``,
    Z, Y, X), from the seconds of a training step at that patch on this machine (``step_seconds``): twice the
    spacing (:func:`coarser_spacing`) when the budget holds fewer than ``COARSE_SPACING_STEPS`` of them, else the
    data's. Returns the choice and the coarser spacing to plan the run at again (mm, Z, Y, X), or ``None``."""
    model = resolved.model
    steps = resolved.training.time_budget / max(step_seconds, 1e-9)
    covered = math.prod(min(p / m, 1.0) for p, m in zip(model.patch_size, median_shape))
    patch = "x".join(str(p) for p in model.patch_size)
    holds = (f"the budget holds at most {steps:.0f} steps at the data's {_spacing_text(model.spacing)} final patch "
             f"{patch} ({step_seconds:.1f} s a step timed on this machine), which covers {covered:.0%} of the median "
             "case")
    if steps >= COARSE_SPACING_STEPS:
        return Choice("spacing", _spacing_text(model.spacing), f"the data's (nnU-Net's rule): {holds}; "
                      f"{COARSE_SPACING_STEPS} or more train at full resolution"), None
    coarser = coarser_spacing(model.spacing)
    return Choice("spacing", _spacing_text(coarser),
                  f"{holds}, fewer than {COARSE_SPACING_STEPS}: one level coarser trains a patch that sees more of "
                  "the case in cheaper steps; left atrium on a 2-core CPU +19.6 Dice points at 15 min, +6.8 at 45 "
                  "min (docs/benchmarks.md section 14); segmentations are made on each input's own grid"), coarser


def _length_choice(asked: RunConfig, resolved: RunConfig, budgeted: bool) -> Choice:
    t = resolved.training
    if not budgeted:
        return Choice("length", f"{t.epochs} epochs x {t.iterations_per_epoch} steps",
                      "the device's default" if asked.training.epochs is None else "", by_user=asked.training.epochs is not None)
    budget = _minutes(t.time_budget)
    if asked.training.epochs is not None:
        return Choice("length", f"at most {asked.training.epochs} epochs within {budget}", "", by_user=True)
    whose = "your budget" if asked.training.time_budget is not None else "the device's default budget"
    return Choice("length", f"as many epochs as fit {budget}",
                  f"{whose}, planned from steps timed on this machine and checked as the run goes; the default "
                  "run capped at 25 epochs left 10 of its 15 minutes unused")


def _augmentation_choice(asked: RunConfig, resolved: RunConfig, device_type: str) -> Choice:
    data = resolved.data
    value = data.augmentation
    if data.augmentation_ramp is not None:
        start, end = data.augmentation_ramp
        value += f", from none at {start:.0%} of the run to full strength at {end:.0%}"
    if asked.data.augmentation is not None or asked.data.augmentation_ramp is not None:
        return Choice("augmentation", value, "", by_user=True)
    if device_type == "cpu":
        why = ("a short run learns more from plain crops: at 1,250 steps none 0.876, mirroring 0.858, nnU-Net's 0.826 "
               "(docs/benchmarks.md section 2); nnU-Net's ramped in from none cost 2.0 points at 15 min and 0.9 at 45 "
               f"min on a 2-core CPU (section 14); a budget that holds {LONG_RUN_STEPS} steps at the final patch, "
               "timed when the run starts, ramps it in")
    else:
        why = "the GPU profile's (not measured on a GPU yet)"
    return Choice("augmentation", value, why)


def _averaging_choice(asked: RunConfig, resolved: RunConfig) -> Choice:
    t = resolved.training
    value = t.weight_averaging or "none"
    if value == "ema":
        value = f"ema of the weights from {t.averaging_start:.0%} of the run"
    if asked.training.weight_averaging is not None:
        return Choice("weight averaging", value, "", by_user=True)
    return Choice("weight averaging", value, "the weights of the last step are kept")


def _width_choice(asked: RunConfig, resolved: RunConfig, device_type: str) -> Choice:
    model = resolved.model
    value = f"{model.base_channels} feature maps at the first level, {len(model.strides)} levels"
    if asked.model.base_channels is not None:
        return Choice("network", value, "", by_user=True)
    why = ("the CPU profile's: a wider network takes longer steps, so fewer fit the time; not yet measured against "
           "a wider one at equal time" if device_type == "cpu" else "the device profile's (nnU-Net's width)")
    return Choice("network", value, why)


def _patch_choice(asked: RunConfig, resolved: RunConfig) -> Choice:
    value = "x".join(str(p) for p in resolved.model.patch_size)
    if asked.model.patch_size is not None:
        return Choice("final patch", value, "", by_user=True)
    return Choice("final patch", value, "planned from the median case shape at the target spacing, within the "
                                        "device's voxel cap (nnU-Net's rule)")


def explain_recipe(asked: RunConfig, resolved: RunConfig, device_type: str, default_budget: Optional[float],
                   spacing: Optional[Choice] = None) -> tuple[Choice, ...]:
    """One :class:`Choice` per part of the recipe of ``resolved`` (:func:`.resolve.resolve_config` of ``asked``)
    on a device of type ``device_type`` ("cpu", "cuda", "mps") whose profile's default budget is
    ``default_budget`` seconds (or ``None``); ``spacing``: the spacing part as chosen
    (:func:`spacing_without_timing`, :func:`spacing_at_pace`), where it was."""
    budgeted = is_budgeted(asked, default_budget)
    return (schedule_choice(asked, resolved, budgeted), _length_choice(asked, resolved, budgeted),
            _augmentation_choice(asked, resolved, device_type), _averaging_choice(asked, resolved),
            _width_choice(asked, resolved, device_type),
            *((spacing,) if spacing is not None else ()), _patch_choice(asked, resolved))


_FROM_THE_MODEL = {"network": "base_channels", "spacing": "spacing", "final patch": "patch_size"}
"""The recipe's parts a run started from a trained model takes from it, and the model setting each is."""


def from_the_model(recipe: Sequence[Choice], asked: RunConfig, model: str) -> tuple[Choice, ...]:
    """``recipe`` of a run that starts from a trained model (``training.init_from``, ``model`` its path): the
    network, spacing and final patch that ``asked`` (the configuration before the model's was taken) leaves
    automatic are the model's, and said so."""
    name = Path(model).name
    return tuple(Choice(c.part, c.value, f"the model this run starts from ({name})")
                 if c.part in _FROM_THE_MODEL and getattr(asked.model, _FROM_THE_MODEL[c.part]) is None else c
                 for c in recipe)


def _minutes(seconds: float) -> str:
    minutes = seconds / 60
    return f"{minutes:.0f} min" if abs(minutes - round(minutes)) < 1e-9 else f"{seconds:.0f} s"
