"""``napari-pgps bench``: every schedule trained with the same seeds and split, side by side, for the same
number of epochs or (``time_budget``) for the same wall-clock time.

Each (schedule, seed) run trains in a fresh process, so warm-up and memory
peaks do not leak from one run into the next. Measured per run: Dice per
label on the held-out split at the final patch size, training wall time
(steps only; validation excluded) and the whole run's wall time (preparation,
the budget's timed steps, validations and checkpoints included), the training time at which the validation
Dice first reached the constant schedule's final Dice, and peak memory (the
process's peak resident set size on the CPU, ``torch.cuda.max_memory_allocated``
on CUDA). Written to the report folder: ``results.json``, ``report.md``, the PNG
figures, and each run's result as it ends (:data:`RUNS_FOLDER`), so a stopped bench goes on where it stopped.
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from ..config import RunConfig
from ..errors import InputError
from ..files import write_text_atomically

PROFILES = {
    # CI: a few minutes on 2 CPU cores.
    "quick": {"max_cases": 12, "epochs": 14, "iterations_per_epoch": 2, "base_channels": 8, "validate_every": 7},
    # The figures in docs/benchmarks.md: the CPU default network, 28 epochs so every PGPS stage gets 2.
    "full": {"max_cases": None, "epochs": 28, "iterations_per_epoch": 40, "base_channels": None, "validate_every": 4},
}


RUNS_FOLDER = "runs"
"""Each measured (schedule, seed) is saved in the report folder's ``runs/SCHEDULE-seedN.json`` with the configuration it
trained: a bench started again in the same folder (after a stop, or with more seeds or schedules) keeps the runs whose
configuration is unchanged and trains the others. Delete the file (or the folder) to measure a run again."""


@dataclass
class BenchSettings:
    data: str
    schedules: list[str]
    """Schedule names; ``NAME+pdl`` adds the PDL data curriculum to schedule NAME (e.g. ``constant+pdl``)."""
    seeds: int = 3
    first_seed: int = 0
    """The runs use seeds ``first_seed`` to ``first_seed + seeds - 1`` (e.g. one seed measured again on another machine)."""
    profile: str = "full"
    epochs: Optional[int] = None
    iterations_per_epoch: Optional[int] = None
    device: str = "auto"
    time_budget: Optional[float] = None
    """Seconds: every run planned to this wall-clock time (its epochs set by the planner) instead of equal epochs."""
    config: Optional[str] = None
    """A YAML configuration every run starts from (``RunConfig.load``); the profile and the settings above override it."""


def bench_config(settings: BenchSettings, schedule: str, seed: int) -> RunConfig:
    """The configuration of one bench run: ``settings.config`` (or the defaults), the profile, then the explicit overrides."""
    profile = PROFILES[settings.profile]
    config = RunConfig.load(settings.config) if settings.config else RunConfig()
    config.data.path = settings.data
    config.data.max_cases = profile["max_cases"]
    config.model.base_channels = profile["base_channels"]
    config.curriculum.schedule, _, extra = schedule.partition("+")
    config.curriculum.pdl.enabled = extra == "pdl"
    config.training.seed = seed
    config.training.device = settings.device
    config.training.epochs = settings.epochs or profile["epochs"]
    if settings.time_budget is not None:
        config.training.time_budget = settings.time_budget
        config.training.epochs = settings.epochs  # a cap only when given
    config.training.iterations_per_epoch = settings.iterations_per_epoch or profile["iterations_per_epoch"]
    config.training.validate_every = profile["validate_every"]
    return config


def run_one(config_dict: dict[str, Any]) -> dict[str, Any]:
    """Train one (schedule, seed) and return its measurements (runs in a child process)."""
    import torch

    from ..engine import fold
    from .training import train

    config = RunConfig.from_dict(config_dict)
    started = time.perf_counter()
    progress = fold(train(config))
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
    return {
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
        "curve": [{"epoch": v.result.epoch, "training_seconds": v.training_seconds, "mean_dice": v.result.mean_dice}
                  for v in progress.validations],
        "stages": [{"stage": s.stage, "epoch": s.epoch, "patch": list(s.patch), "batch": s.batch} for s in progress.stages_started],
        "class_balance": [{"stage": s.stage, "patch": list(s.patch), "batch": s.batch, "class_fractions": list(s.class_fractions)}
                          for s in progress.stages_finished],
        "volume_class_fractions": list(run.volume_class_fractions),
        "label_names": list(run.label_names),
        "epochs": [{"epoch": e, **v} for e, v in sorted(per_epoch.items())],
        "peak_memory_mib": peak,
        "memory_kind": memory_kind,
    }


def run_bench(settings: BenchSettings, out: Path, progress=print) -> dict[str, Any]:
    """Train every schedule for every seed, then write results.json, report.md and the figures."""
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
    if settings.time_budget is not None and settings.time_budget <= 0:
        raise InputError("--time-budget must be longer than zero.")
    read_dataset_info(settings.data)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    context = multiprocessing.get_context("spawn")
    for seed, schedule, config, saved in _planned_runs(settings, out):
        result = _measured_before(saved, config)
        if result is not None:
            progress(f"seed {seed}, {schedule}: measured before with the same configuration ({saved}), kept")
        else:
            progress(f"seed {seed}, {schedule}: training...")
            with context.Pool(1) as pool:
                result = pool.apply(run_one, (config,))
            result["schedule"] = schedule  # the bench's name: constant+pdl trains the constant schedule
            saved.parent.mkdir(exist_ok=True)
            write_text_atomically(saved, json.dumps({"config": config, "result": result}, indent=1) + "\n")
        runs.append(result)
        progress(f"seed {seed}, {schedule}: mean Dice {result['mean_dice']:.4f}, "
                 f"{result['training_seconds']:.0f} s training, peak {result['peak_memory_mib']:.0f} MiB")
    results = summarize(runs, settings)
    write_text_atomically(out / "results.json", json.dumps(results, indent=1) + "\n")
    from .bench_report import write_figures, write_report

    write_figures(results, out)
    write_report(results, out)
    return results


def _planned_runs(settings: BenchSettings, out: Path) -> Iterator[tuple[int, str, dict[str, Any], Path]]:
    """(seed, schedule, configuration, the file its result is kept in) of every run of the bench, in order."""
    for seed in range(settings.first_seed, settings.first_seed + settings.seeds):
        for schedule in settings.schedules:
            saved = out / RUNS_FOLDER / f"{schedule}-seed{seed}.json"
            yield seed, schedule, bench_config(settings, schedule, seed).to_dict(), saved


def replaced_runs(settings: BenchSettings, out: Path) -> list[Path]:
    """The results kept in ``out`` that the bench would measure again and replace: saved with another configuration
    (the command line asks for ``--overwrite`` before it does)."""
    return [saved for _, _, config, saved in _planned_runs(settings, out)
            if saved.exists() and _measured_before(saved, config) is None]


def _measured_before(path: Path, config: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The result saved at ``path`` by an earlier bench in the same report folder, if it trained ``config``."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict):
        return None
    try:  # read as a configuration: one saved in an earlier form (flat schedule options) is the same
        same = RunConfig.from_dict(saved.get("config")).to_dict() == json.loads(json.dumps(config))
    except InputError:
        return None
    return saved.get("result") if same else None


def _time_to_reach(curve: Sequence[dict], target: float) -> Optional[float]:
    for point in curve:
        if point["mean_dice"] >= target:
            return point["training_seconds"]
    return None


def summarize(runs: list[dict], settings: BenchSettings) -> dict[str, Any]:
    """Per schedule: Dice mean and spread over seeds, median time ratio to constant, time to constant's Dice, memory."""
    constant = {r["seed"]: r for r in runs if r["schedule"] == "constant"}
    for r in runs:
        base = constant[r["seed"]]
        r["time_ratio"] = r["training_seconds"] / base["training_seconds"]
        reached = _time_to_reach(r["curve"], base["mean_dice"])
        r["time_to_constant_dice"] = reached
        r["time_to_constant_dice_ratio"] = reached / base["training_seconds"] if reached is not None else None
    summary = {}
    for name in settings.schedules:
        mine = [r for r in runs if r["schedule"] == name]
        dice = [r["mean_dice"] for r in mine]
        reached = [r["time_to_constant_dice_ratio"] for r in mine if r["time_to_constant_dice_ratio"] is not None]
        summary[name] = {
            "mean_dice": float(np.mean(dice)),
            "dice_std": float(np.std(dice)),
            "dice_per_label": {k: float(np.mean([r["dice_per_label"][k] for r in mine])) for k in mine[0]["dice_per_label"]},
            "time_ratio_median": float(statistics.median(r["time_ratio"] for r in mine)),
            "training_seconds_median": float(statistics.median(r["training_seconds"] for r in mine)),
            "time_to_constant_dice_ratio_median": float(statistics.median(reached)) if reached else None,
            "reached_constant_dice": f"{len(reached)}/{len(mine)}",
            "peak_memory_mib_median": float(statistics.median(r["peak_memory_mib"] for r in mine)),
            "relative_dice_change": None,
        }
    base_dice = summary["constant"]["mean_dice"]
    for name, entry in summary.items():
        entry["relative_dice_change"] = (entry["mean_dice"] - base_dice) / base_dice
        entry["dice_points_vs_constant"] = 100 * (entry["mean_dice"] - base_dice)
    return {
        "settings": {**settings.__dict__, "profile_values": PROFILES[settings.profile]},
        "device": runs[0]["device"],
        "memory_kind": runs[0]["memory_kind"],
        "summary": summary,
        "runs": runs,
    }
