"""``napari-pgps bench``: every schedule trained with the same seeds and split, side by side, for the same
number of epochs, for the same wall-clock time (``time_budget``), or at each of several time budgets (``budgets``:
Dice against the budget, shortest budget first).

Each (schedule, seed) run trains in a fresh process, so warm-up and memory
peaks do not leak from one run into the next. Measured per run: Dice per
label on the held-out split at the final patch size, training wall time
(steps only; validation excluded) and the whole run's wall time (preparation,
the budget's timed steps, validations and checkpoints included), the training time at which the validation
Dice first reached the constant schedule's final Dice, and peak memory (the
process's peak resident set size on the CPU, ``torch.cuda.max_memory_allocated``
on CUDA). Written to the report folder: ``results.json``, ``report.md``, the PNG
figures, and each run's result as it ends (:data:`RUNS_FOLDER`), so a stopped bench goes on where it stopped.

With a test split (``test_fraction``; 0.2 by default with several budgets) each run trains in a run folder and its
reported Dice is its final model's on the test cases, scored after training by the code of ``napari-pgps evaluate
--split test`` (the validation curve stays what the run saw); the test Dice of its best-validation checkpoint is
kept beside it.
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence

import numpy as np

from ..config import RunConfig
from ..errors import InputError
from ..files import write_text_atomically

if TYPE_CHECKING:
    from ..events import StepDone

PROFILES = {
    # CI: a few minutes on 2 CPU cores.
    "quick": {"max_cases": 12, "epochs": 14, "iterations_per_epoch": 2, "base_channels": 8, "validate_every": 7},
    # The figures in docs/benchmarks.md: the CPU default network, 28 epochs so every PGPS stage gets 2.
    "full": {"max_cases": None, "epochs": 28, "iterations_per_epoch": 40, "base_channels": None, "validate_every": 4},
    # What `napari-pgps train --time-budget T` does: the configuration as the user has it (the recipe plans the rest).
    "default": {},
}
BUDGETS_TEST_FRACTION = 0.2
"""The test split of a bench at several budgets unless one is given."""


RUNS_FOLDER = "runs"
"""Each measured (schedule, seed) is saved in the report folder's ``runs/SCHEDULE-seedN.json`` (with several budgets
``runs/BUDGET/SCHEDULE-seedN.json``, e.g. ``runs/15m/pgps-efficiency-seed0.json``) with the configuration it
trained and the version of the recipe that planned it (:data:`napari_pgps.engine.recipe.RECIPE_VERSION`; a file
without one is version 1): a bench started again in the same folder (after a stop, or with more seeds, schedules or
budgets) keeps the runs whose configuration and recipe are unchanged (or whose recipe's changes leave them as they
were: :func:`napari_pgps.engine.recipe.trained_as_this_recipe`) and trains the others (replacing a kept result only
with ``--overwrite``). Delete the file (or the folder) to measure a run again."""
RUN_FOLDERS = "models"
"""Where the runs with a test split train (``models/[BUDGET/]SCHEDULE-seedN``): deleted once measured unless kept."""


@dataclass
class BenchSettings:
    data: str
    schedules: list[str]
    """Schedule names; ``NAME+pdl`` adds the PDL data curriculum to schedule NAME (e.g. ``constant+pdl``)."""
    seeds: int = 3
    first_seed: int = 0
    """The runs use seeds ``first_seed`` to ``first_seed + seeds - 1`` (e.g. one seed measured again on another machine)."""
    profile: Optional[str] = None
    """One of :data:`PROFILES`; ``None``: "default" with ``budgets``, else "full"."""
    epochs: Optional[int] = None
    iterations_per_epoch: Optional[int] = None
    device: str = "auto"
    time_budget: Optional[float] = None
    """Seconds: every run planned to this wall-clock time (its epochs set by the planner) instead of equal epochs."""
    budgets: Optional[list[float]] = None
    """Seconds: several time budgets instead of ``time_budget``, each trained with every schedule and seed, the
    shortest first."""
    max_seeded_budget: Optional[float] = None
    """Seconds: budgets longer than this train only the first seed (e.g. 3 seeds up to 45 minutes, 1 at 120)."""
    test_fraction: Optional[float] = None
    """Share of the cases set aside as a test split (``data.test_fraction``), the reported Dice then being each
    final model's on them; ``None``: :data:`BUDGETS_TEST_FRACTION` with ``budgets``, else the configuration's."""
    keep_runs: bool = False
    """Keep the run folders of the runs with a test split (:data:`RUN_FOLDERS`) instead of deleting them."""
    config: Optional[str] = None
    """A YAML configuration every run starts from (``RunConfig.load``); the profile and the settings above override it."""

    def __post_init__(self) -> None:
        if self.profile is None:
            self.profile = "default" if self.budgets else "full"
        if self.test_fraction is None and self.budgets:
            self.test_fraction = BUDGETS_TEST_FRACTION

    def runs_at(self, budget: Optional[float]) -> list[int]:
        """The seeds trained at ``budget`` (only the first above :attr:`max_seeded_budget`)."""
        seeds = list(range(self.first_seed, self.first_seed + self.seeds))
        above = budget is not None and self.max_seeded_budget is not None and budget > self.max_seeded_budget
        return seeds[:1] if above else seeds

    def all_budgets(self) -> list[Optional[float]]:
        """The budgets in the order they are trained: ``budgets`` shortest first, else ``[time_budget]``."""
        return sorted(self.budgets) if self.budgets else [self.time_budget]


def budget_label(seconds: float) -> str:
    """A budget as a folder name and in tables: ``900`` -> ``"15m"``, ``20`` -> ``"20s"``, ``90`` -> ``"90s"``."""
    return f"{seconds / 60:g}m" if seconds % 60 == 0 else f"{seconds:g}s"


def bench_config(settings: BenchSettings, schedule: str, seed: int, budget: Optional[float] = None) -> RunConfig:
    """The configuration of one bench run: ``settings.config`` (or the defaults), the profile, then the explicit
    overrides; ``budget`` (seconds) is the run's time budget (``settings.time_budget`` when ``None``).

    The "default" profile changes nothing but the data, schedule, seed, device, budget, test split and the epochs
    and steps given, so the run is what ``napari-pgps train --time-budget`` trains.
    """
    budget = settings.time_budget if budget is None else budget
    profile = PROFILES[settings.profile]
    config = RunConfig.load(settings.config) if settings.config else RunConfig()
    config.data.path = settings.data
    if profile:
        config.data.max_cases = profile["max_cases"]
        config.model.base_channels = profile["base_channels"]
        config.training.epochs = profile["epochs"]
        config.training.validate_every = profile["validate_every"]
        config.training.iterations_per_epoch = profile["iterations_per_epoch"]
    config.curriculum.schedule, _, extra = schedule.partition("+")
    config.curriculum.pdl.enabled = extra == "pdl"
    config.training.seed = seed
    config.training.device = settings.device
    if settings.epochs or (budget is not None and profile):
        config.training.epochs = settings.epochs  # with a budget, a cap only when given
    if budget is not None:
        config.training.time_budget = budget
    if settings.iterations_per_epoch:
        config.training.iterations_per_epoch = settings.iterations_per_epoch
    if settings.test_fraction is not None:
        config.data.test_fraction = settings.test_fraction
    return config


def run_one(config_dict: dict[str, Any], run_dir: Optional[str] = None) -> dict[str, Any]:
    """Train one (schedule, seed, budget) and return its measurements (runs in a child process); with a run folder
    (a test split), then score its models on the test cases (:func:`test_scores`)."""
    import torch

    from ..engine import fold
    from .training import train

    config = RunConfig.from_dict(config_dict)
    started = time.perf_counter()
    progress = fold(train(config, run_dir))
    wall = time.perf_counter() - started
    run, final = progress.started, progress.validations[-1]
    per_epoch: dict[int, dict[str, Any]] = {}
    for step in progress.steps:
        entry = per_epoch.setdefault(step.epoch, {"voxels": 0, "steps": 0, "patch": list(step.patch), "batch": step.batch})
        entry["steps"] += 1
        entry["voxels"] += step.batch * int(np.prod(step.patch))
    if run.device.startswith("CUDA"):
        peak = torch.cuda.max_memory_allocated() / 2**20
        memory_kind = "GPU MiB allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        memory_kind = "process peak RSS MiB"
    measured = {
        "schedule": run.schedule,
        "seed": config.training.seed,
        "device": run.device,
        "planned_epochs": run.epochs,
        "completed_epochs": progress.finished.epochs_completed,
        "time_budget": run.time_budget,
        "wall_seconds": wall,
        "training_seconds": progress.training_seconds,
        "dice_per_label": final.result.dice_per_label,
        "mean_dice": final.result.mean_dice,
        "validation_dice": final.result.mean_dice,
        "dice_on": "validation",
        "curve": [{"epoch": v.result.epoch, "training_seconds": v.training_seconds, "mean_dice": v.result.mean_dice}
                  for v in progress.validations],
        "stages": [{"stage": s.stage, "epoch": s.epoch, "patch": list(s.patch), "batch": s.batch} for s in progress.stages_started],
        "class_balance": [{"stage": s.stage, "patch": list(s.patch), "batch": s.batch, "class_fractions": list(s.class_fractions)}
                          for s in progress.stages_finished],
        "volume_class_fractions": list(run.volume_class_fractions),
        "label_names": list(run.label_names),
        "epochs": [{"epoch": e, **v} for e, v in sorted(per_epoch.items())],
        "final_patch_step_seconds": final_patch_step_seconds(progress.steps),
        "peak_memory_mib": peak,
        "memory_kind": memory_kind,
    }
    if run_dir is not None:
        measured.update(test_scores(Path(run_dir), config.data.path, config.training.device))
    return measured


def final_patch_step_seconds(steps: Sequence[StepDone]) -> Optional[float]:
    """The median seconds of the steps at the run's final patch and batch (its last step's): how fast the machine
    trained this run. On a shared 2-core machine it differed by up to 1.7x between runs of one bench (1.22-2.04 s at
    the hippocampus final patch, docs/benchmarks.md section 14), so runs at equal wall time trained unequal steps.
    ``steps``: the run's :class:`napari_pgps.events.StepDone` events (a run folder's: ``read_events`` of its
    metrics.jsonl); ``None`` without steps."""
    if not steps:
        return None
    final = (steps[-1].patch, steps[-1].batch)
    return float(statistics.median(s.seconds for s in steps if (s.patch, s.batch) == final))


def test_scores(run_dir: Path, data: str, device: str) -> dict[str, Any]:
    """The test-case scores of a finished run: its final model's (the one it keeps: the averaged weights where
    ``training.weight_averaging`` is "ema"), as ``napari-pgps evaluate --model RUN --split test`` gives them, and its
    best-validation checkpoint's mean Dice (``None`` where the run kept none)."""
    from ..engine import load_model
    from ..engine.file_names import BEST, CONFIG_FILE, FINAL
    from .evaluation import evaluate_model

    final = evaluate_model(load_model(run_dir / FINAL, device), data, split="test")
    best = evaluate_model(load_model(run_dir / BEST, device), data, split="test") if (run_dir / BEST).is_file() else None
    return {
        "mean_dice": final["mean_dice"],
        "dice_per_label": final["dice_per_label"],
        "dice_on": "test",
        "test_cases": len(final["cases"]),
        "test_means": final["means"],
        "best_checkpoint_test_dice": best["mean_dice"] if best is not None else None,
        "weight_averaging": RunConfig.load(run_dir / CONFIG_FILE).training.weight_averaging or "none",
    }


def run_bench(settings: BenchSettings, out: Path, progress=print, train: bool = True) -> dict[str, Any]:
    """Train every schedule for every seed (at every budget), then write results.json, report.md and the figures
    (with several budgets, again after every run, so a bench stopped part-way reports what it measured).

    With ``train=False`` nothing is trained: the report is written from the runs kept in ``out`` with the same
    configuration (``bench --report-only``: e.g. the figures of a bench that runs in parts, between its parts).

    Raises:
        InputError: ``train=False`` and no run of these settings is kept in ``out``.
    """
    check_settings(settings)
    runs: list[dict[str, Any]] = []
    planned = list(_planned_runs(settings, out))
    if not train and not any(_measured_before(saved, config) for *_, config, saved in planned):
        other = next((saved for *_, saved in planned if saved.exists()), None)
        found = f" ({other.relative_to(out)}: {why_not_kept(other)})" if other is not None else ""
        raise InputError(f"{out}: keeps no run of this bench's configuration and recipe yet{found}, so there is "
                         "nothing to report; run the same command without --report-only to train them.")
    out.mkdir(parents=True, exist_ok=True)
    for i, (budget, seed, schedule, config, saved) in enumerate(planned):
        name = f"{budget_label(budget)}, " if settings.budgets else ""
        name += f"seed {seed}, {schedule}"
        result = _measured_before(saved, config)
        if result is not None:
            progress(f"{name}: measured before with the same configuration ({saved}), kept")
        elif not train:
            progress(f"{name}: {why_not_kept(saved)}, left out of the report")
            continue
        else:
            progress(f"{name}: training...")
            run_dir = _run_folder(out, saved) if config["data"]["test_fraction"] > 0 else None
            result = _train_in_child(config, run_dir)
            result["schedule"] = schedule  # the bench's name: constant+pdl trains the constant schedule
            result["budget"] = budget
            saved.parent.mkdir(parents=True, exist_ok=True)
            kept = {"config": config, "recipe_version": _recipe_version(), "result": result}
            write_text_atomically(saved, json.dumps(kept, indent=1) + "\n")
            if run_dir is not None and not settings.keep_runs:
                shutil.rmtree(run_dir, ignore_errors=True)
        runs.append(result)
        on_test = " on the test cases" if result.get("dice_on") == "test" else ""
        progress(f"{name}: mean Dice {result['mean_dice']:.4f}{on_test}, "
                 f"{result['training_seconds']:.0f} s training, peak {result['peak_memory_mib']:.0f} MiB")
        if train and settings.budgets and i + 1 < len(planned):
            _write_results(runs, settings, out)  # after every run: a bench stopped part-way reports what it measured
    return _write_results(runs, settings, out)


def check_settings(settings: BenchSettings) -> None:
    """Refuse settings the bench cannot run, saying what to change.

    Raises:
        InputError: an unknown schedule, no constant baseline, a bad seed count, budget or test fraction.
    """
    from ..curriculum import SCHEDULES
    from ..data.dataset import read_dataset_info

    unknown = [s for s in settings.schedules if s.partition("+")[0] not in SCHEDULES or s.partition("+")[2] not in ("", "pdl")]
    if unknown:
        raise InputError(f"unknown schedule(s) {', '.join(unknown)}; choose from {', '.join(SCHEDULES)}, each "
                         "optionally with +pdl (the PDL data curriculum).")
    if "constant" not in settings.schedules:
        raise InputError("the bench compares against the constant schedule: include 'constant' in --schedules.")
    if settings.seeds < 1:
        raise InputError("--seeds must be at least 1.")
    if settings.first_seed < 0:
        raise InputError("--first-seed must be 0 or more.")
    if settings.profile not in PROFILES:
        raise InputError(f"unknown profile '{settings.profile}'; choose one of {', '.join(PROFILES)}.")
    if settings.budgets is not None and settings.time_budget is not None:
        raise InputError("give either --time-budget (one budget) or --budgets (several), not both.")
    if settings.budgets is not None and (not settings.budgets or len(set(settings.budgets)) != len(settings.budgets)):
        raise InputError("--budgets: give each budget once, comma-separated, e.g. --budgets 5m,15m,45m.")
    if any(b is not None and b <= 0 for b in settings.all_budgets()):
        raise InputError(f"--{'budgets' if settings.budgets else 'time-budget'} must be longer than zero.")
    if settings.max_seeded_budget is not None and not settings.budgets:
        raise InputError("--max-seeded-budget limits the seeds of the longer of several budgets: give --budgets too.")
    if settings.test_fraction is not None and not 0 <= settings.test_fraction < 1:
        raise InputError(f"--test-fraction must be in [0, 1), not {settings.test_fraction:g} (0.2: a fifth of the "
                         "cases are test cases).")
    read_dataset_info(settings.data)


def _train_in_child(config: dict[str, Any], run_dir: Optional[Path]) -> dict[str, Any]:
    """:func:`run_one` in a fresh process (spawned: no warm-up or memory peak leaks into the next run); a run folder
    left by a run stopped part-way is cleared first."""
    if run_dir is not None:
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.parent.mkdir(parents=True, exist_ok=True)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(run_one, (config,) if run_dir is None else (config, str(run_dir)))


def _write_results(runs: list[dict[str, Any]], settings: BenchSettings, out: Path) -> dict[str, Any]:
    """results.json, report.md and the figures of the runs measured so far."""
    from .bench_report import write_budget_report, write_figures, write_report

    results = summarize_budgets(runs, settings) if settings.budgets else summarize(runs, settings)
    write_text_atomically(out / "results.json", json.dumps(results, indent=1) + "\n")
    if settings.budgets:
        write_budget_report(results, out)
    else:
        write_figures(results, out)
        write_report(results, out)
    return results


def _planned_runs(settings: BenchSettings, out: Path) -> Iterator[tuple[Optional[float], int, str, dict[str, Any], Path]]:
    """(budget, seed, schedule, configuration, the file its result is kept in) of every run of the bench, in the
    order they are trained: by budget (shortest first), then seed, then schedule."""
    for budget in settings.all_budgets():
        folder = out / RUNS_FOLDER / (budget_label(budget) if settings.budgets else "")
        for seed in settings.runs_at(budget):
            for schedule in settings.schedules:
                saved = folder / f"{schedule}-seed{seed}.json"
                yield budget, seed, schedule, bench_config(settings, schedule, seed, budget).to_dict(), saved


def _run_folder(out: Path, saved: Path) -> Path:
    """The run folder of the run whose result is kept at ``saved``: ``models/[BUDGET/]SCHEDULE-seedN``."""
    return out / RUN_FOLDERS / saved.relative_to(out / RUNS_FOLDER).with_suffix("")


def replaced_runs(settings: BenchSettings, out: Path) -> list[Path]:
    """The results kept in ``out`` that the bench would measure again and replace: saved with another configuration
    or by an earlier recipe (the command line asks for ``--overwrite`` before it does)."""
    return [saved for *_, config, saved in _planned_runs(settings, out)
            if saved.exists() and _measured_before(saved, config) is None]


def _recipe_version() -> int:
    """:data:`napari_pgps.engine.recipe.RECIPE_VERSION` (imported here: the engine brings torch, which the command
    line's help need not wait for)."""
    from ..engine.recipe import RECIPE_VERSION

    return RECIPE_VERSION


def _of_this_recipe(saved: dict[str, Any]) -> bool:
    """Whether the run kept as ``saved`` (:func:`_kept`) trained what this recipe plans
    (:func:`napari_pgps.engine.recipe.trained_as_this_recipe`)."""
    from ..engine.recipe import trained_as_this_recipe

    result = saved.get("result")
    result = result if isinstance(result, dict) else {}
    return trained_as_this_recipe(_version_of(saved), result.get("time_budget"), result.get("final_patch_step_seconds"))


def _kept(path: Path) -> Optional[dict[str, Any]]:
    """The run kept at ``path`` (``{"config", "recipe_version", "result"}``), or ``None`` where none can be read."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


def _version_of(saved: dict[str, Any]) -> int:
    """The recipe version of a kept run (:func:`_kept`): 1 where it was kept before versions were."""
    return saved.get("recipe_version", 1)


def _measured_before(path: Path, config: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The result saved at ``path`` by an earlier bench in the same report folder, if it trained ``config`` with
    this recipe (:func:`_of_this_recipe`)."""
    saved = _kept(path)
    if saved is None or not _of_this_recipe(saved):
        return None
    try:  # read as a configuration: one saved in an earlier form (flat schedule options) is the same
        same = RunConfig.from_dict(saved.get("config")).to_dict() == json.loads(json.dumps(config))
    except InputError:
        return None
    return saved.get("result") if same else None


def why_not_kept(path: Path) -> str:
    """Why the result at ``path`` is not this bench's (:func:`_measured_before` gave none), in a few words."""
    saved = _kept(path)
    if saved is None:
        return "not measured yet" if not path.exists() else "kept in a file that cannot be read"
    version = _version_of(saved)
    if not _of_this_recipe(saved):
        return f"kept from an earlier recipe (version {version}; this one is {_recipe_version()})"
    return "kept with another configuration"


def _time_to_reach(curve: Sequence[dict], target: float) -> Optional[float]:
    for point in curve:
        if point["mean_dice"] >= target:
            return point["training_seconds"]
    return None


def summarize(runs: list[dict], settings: BenchSettings) -> dict[str, Any]:
    """Per schedule: Dice mean and spread over seeds, median time ratio to constant, time to constant's Dice, memory."""
    return {
        "settings": {**settings.__dict__, "profile_values": PROFILES[settings.profile]},
        "device": runs[0]["device"],
        "memory_kind": runs[0]["memory_kind"],
        "summary": schedule_summary(runs, settings.schedules),
        "runs": runs,
    }


def summarize_budgets(runs: list[dict], settings: BenchSettings) -> dict[str, Any]:
    """A bench at several budgets: per budget (shortest first) the :func:`schedule_summary` of its runs, and the
    check that Dice rises with the budget (:func:`monotonicity`); only the budgets measured so far."""
    budgets = [{"budget": b, "label": budget_label(b), "summary": _budget_summary(mine, settings.schedules)}
               for b in settings.all_budgets() if (mine := [r for r in runs if r["budget"] == b])]
    return {
        "settings": {**settings.__dict__, "profile_values": PROFILES[settings.profile]},
        "device": runs[0]["device"],
        "memory_kind": runs[0]["memory_kind"],
        "dice_on": runs[0].get("dice_on", "validation"),
        "budgets": budgets,
        "monotonicity": monotonicity(budgets, settings.schedules),
        "runs": runs,
    }


def _budget_summary(runs: list[dict], schedules: Sequence[str]) -> dict[str, dict[str, Any]]:
    """:func:`schedule_summary` of one budget's runs, and per schedule its seeds, the medians of wall time, epochs
    and steps, and the mean test Dice of its best-validation checkpoints (``None`` without a test split)."""
    summary = schedule_summary(runs, schedules)
    for name, entry in summary.items():
        mine = [r for r in runs if r["schedule"] == name]
        best = [r["best_checkpoint_test_dice"] for r in mine if r.get("best_checkpoint_test_dice") is not None]
        entry.update(seeds=len(mine), wall_seconds_median=float(statistics.median(r["wall_seconds"] for r in mine)),
                     epochs_median=float(statistics.median(r["completed_epochs"] for r in mine)),
                     steps_median=float(statistics.median(sum(e["steps"] for e in r["epochs"]) for r in mine)),
                     best_checkpoint_test_dice=float(np.mean(best)) if best else None)
    return summary


def monotonicity(budgets: list[dict[str, Any]], schedules: Sequence[str]) -> list[dict[str, Any]]:
    """For each schedule, each budget's mean Dice against the next shorter budget's: ``{"schedule", "shorter",
    "longer" (budget labels), "shorter_dice", "longer_dice", "rises"}`` (``rises`` false where the longer budget's
    mean is lower)."""
    rows = []
    for name in schedules:
        for shorter, longer in zip(budgets, budgets[1:]):
            if name not in shorter["summary"] or name not in longer["summary"]:
                continue  # not measured at both yet
            before, after = shorter["summary"][name]["mean_dice"], longer["summary"][name]["mean_dice"]
            rows.append({"schedule": name, "shorter": shorter["label"], "longer": longer["label"],
                         "shorter_dice": before, "longer_dice": after, "rises": after >= before})
    return rows


def schedule_summary(runs: list[dict], schedules: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per schedule over its seeds: the reported Dice's mean and spread, points and relative change against
    constant, median time ratio to constant, time to constant's (validation) Dice, training time and memory.

    Only the schedules with runs; the comparisons with constant are ``None`` where constant has no run (of that
    seed) yet, as in a bench stopped part-way."""
    constant = {r["seed"]: r for r in runs if r["schedule"] == "constant"}
    for r in runs:
        base = constant.get(r["seed"])  # none yet: a bench stopped between a seed's runs
        r["time_ratio"] = r["training_seconds"] / base["training_seconds"] if base is not None else None
        reached = _time_to_reach(r["curve"], base.get("validation_dice", base["mean_dice"])) if base is not None else None
        r["time_to_constant_dice"] = reached
        r["time_to_constant_dice_ratio"] = reached / base["training_seconds"] if reached is not None else None
    summary = {}
    for name in schedules:
        mine = [r for r in runs if r["schedule"] == name]
        if not mine:
            continue
        dice = [r["mean_dice"] for r in mine]
        ratios = [r["time_ratio"] for r in mine if r["time_ratio"] is not None]
        reached = [r["time_to_constant_dice_ratio"] for r in mine if r["time_to_constant_dice_ratio"] is not None]
        summary[name] = {
            "mean_dice": float(np.mean(dice)),
            "dice_std": float(np.std(dice)),
            "dice_per_label": {k: float(np.mean([r["dice_per_label"][k] for r in mine])) for k in mine[0]["dice_per_label"]},
            "time_ratio_median": float(statistics.median(ratios)) if ratios else None,
            "training_seconds_median": float(statistics.median(r["training_seconds"] for r in mine)),
            "time_to_constant_dice_ratio_median": float(statistics.median(reached)) if reached else None,
            "reached_constant_dice": f"{len(reached)}/{len(mine)}",
            "peak_memory_mib_median": float(statistics.median(r["peak_memory_mib"] for r in mine)),
            "relative_dice_change": None,
        }
    base_dice = summary["constant"]["mean_dice"] if "constant" in summary else None
    for name, entry in summary.items():
        entry["relative_dice_change"] = (entry["mean_dice"] - base_dice) / base_dice if base_dice is not None else None
        entry["dice_points_vs_constant"] = 100 * (entry["mean_dice"] - base_dice) if base_dice is not None else None
    return summary
