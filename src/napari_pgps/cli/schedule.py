"""``napari-pgps schedule`` and ``napari-pgps bench``: a patch-size schedule printed without training, and
schedules trained side by side."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..config import DEVICES, RunConfig, ScheduleOptions
from ..curriculum import SCHEDULES, schedule_for
from ..engine.progress import size_text
from ..errors import InputError
from ..files import check_writable
from ..models.planning import UNetPlan
from ..tasks.bench import BUDGETS_TEST_FRACTION


# -- schedule -----------------------------------------------------------------
def add_schedule(commands) -> None:
    p = commands.add_parser("schedule", help="print a patch-size schedule without training",
                            description="Print the stages of a schedule: patch (Z Y X), batch and epochs per stage, and the "
                            "voxels it processes relative to the constant schedule.")
    p.add_argument("--final-patch", type=int, nargs=3, required=True, metavar=("Z", "Y", "X"))
    p.add_argument("--poolings", type=int, nargs=3, required=True, metavar=("PZ", "PY", "PX"), help="2x poolings of the network per axis")
    p.add_argument("--epochs", type=int, required=True, metavar="N")
    p.add_argument("--batch-size", type=int, required=True, metavar="B", help="the final-stage batch size")
    p.add_argument("--mode", required=True, choices=SCHEDULES, metavar="MODE", help="one of " + ", ".join(SCHEDULES))
    p.add_argument("--growth", choices=("journal", "miccai"), default="journal", help="PGPS growth rule (default journal)")
    p.add_argument("--max-batch", type=int, metavar="N", help="cap on the Performance mode's batch")
    p.add_argument("--performance-batch", choices=("voxels", "miccai"), default="voxels",
                   help="Performance batch rule: voxels (the journal's, the default) or miccai (PGPS+, backwards from the last stage)")
    p.add_argument("--single-voxel-bottleneck", action="store_true",
                   help="start from the reference's minimum patch (1-voxel bottleneck), as in the paper's worked example")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=_schedule)


def _schedule(args: argparse.Namespace) -> int:
    schedule = schedule_for(schedule_config(args))
    if args.json:
        print(json.dumps(schedule.to_dict()))
        return 0
    print(f"{'stage':>5}  {'patch (Z x Y x X)':>18}  {'batch':>5}  {'epochs':>6}  {'voxels/step vs final':>20}")
    final = schedule.final_batch * schedule.final_patch[0] * schedule.final_patch[1] * schedule.final_patch[2]
    for i, stage in enumerate(schedule.stages, 1):
        print(f"{i:>5}  {size_text(stage.patch):>18}  {stage.batch:>5}  {stage.epochs:>6}  {stage.voxels_per_step / final:>20.3f}")
    if schedule.draws == "choices":
        print("each step draws one of: " + ", ".join(f"{size_text(c.patch)} (batch {c.batch})" for c in schedule.choices))
    if schedule.draws == "axis_sizes":
        print("each step draws per axis: " + "; ".join(f"{a}: {list(s)}" for a, s in zip("ZYX", schedule.axis_sizes)))
        rule = "keeps the final voxels per step" if schedule.keep_voxels else "stays the batch size"
        print(f"{schedule.final_share:.0%} of the steps take the final patch instead; a drawn patch's batch {rule}")
    print(f"relative voxels vs constant: {schedule.relative_voxels():.3f}")
    return 0


def schedule_config(args: argparse.Namespace) -> RunConfig:
    """The run configuration the ``schedule`` flags describe: the default network (DynUNet) with ``--poolings`` 2x
    poolings per axis (Z, Y, X), its final patch, epochs, batch, schedule and schedule options.

    Raises:
        InputError: a negative number of poolings.
    """
    if min(args.poolings) < 0:
        raise InputError(f"--poolings: a network pools each axis 0 or more times, got {' '.join(map(str, args.poolings))}.")
    config = RunConfig()
    plan = UNetPlan.with_poolings(args.poolings)
    config.model.kernel_sizes, config.model.strides = plan.kernel_sizes, plan.strides
    config.model.patch_size = tuple(args.final_patch)
    config.training.epochs, config.training.batch_size = args.epochs, args.batch_size
    config.curriculum.schedule = args.mode
    config.curriculum.options = ScheduleOptions(growth=args.growth, max_batch=args.max_batch,
                                                performance_batch=args.performance_batch,
                                                single_voxel_bottleneck=args.single_voxel_bottleneck)
    return config


# -- bench --------------------------------------------------------------------
def add_bench(commands) -> None:
    p = commands.add_parser("bench", help="train several schedules side by side and report Dice, time and memory",
                            description="Train every schedule with the same seeds, split and epochs (or wall time, or "
                            "at each of several time budgets); write results.json, report.md and PNG figures to "
                            "REPORT_DIR. Each run's result is kept in REPORT_DIR/runs as it ends: the same command "
                            "started again trains only the runs not measured yet with the same configuration, so a long "
                            "bench (e.g. --budgets 5m,15m,45m,120m --seeds 3 --max-seeded-budget 45m) can run in parts, "
                            "shortest budget first.")
    p.add_argument("--data", required=True, metavar="DIR")
    p.add_argument("--out", required=True, metavar="REPORT_DIR")
    p.add_argument("--schedules", default="constant,pgps-efficiency,pgps-performance", help="comma-separated; must include constant; NAME+pdl adds the PDL data curriculum, e.g. constant+pdl")
    p.add_argument("--seeds", type=int, default=3, metavar="N")
    p.add_argument("--first-seed", type=int, default=0, metavar="N",
                   help="the seeds are N to N + seeds - 1 (default 0): e.g. --first-seed 2 --seeds 1 measures seed 2 alone")
    p.add_argument("--profile", choices=("quick", "full", "default"),
                   help="quick: a few minutes for CI; full: the documented figures (28 epochs of 40 steps, validated "
                        "every 4); default: the configuration as napari-pgps train has it, only the schedule, seed, "
                        "budget and test split set (default: default with --budgets, else full)")
    p.add_argument("--epochs", type=int, metavar="N")
    p.add_argument("--iterations-per-epoch", type=int, metavar="N")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--time-budget", metavar="DURATION",
                   help="train every schedule for the same wall-clock time (e.g. 15m), its epochs planned to it")
    p.add_argument("--budgets", metavar="DURATIONS",
                   help="several time budgets, comma-separated (e.g. 5m,15m,45m,120m): every schedule and seed at each, "
                        "shortest first; the report plots Dice against the budget")
    p.add_argument("--max-seeded-budget", metavar="DURATION",
                   help="with --budgets: budgets longer than this train only the first seed (e.g. --seeds 3 "
                        "--max-seeded-budget 45m: 3 seeds up to 45 minutes, 1 above)")
    p.add_argument("--test-fraction", type=float, metavar="F",
                   help="set this share of the cases aside as a test split (the same for every run); each run's Dice "
                        "is then its final model's on them, as evaluate --split test scores it (default: "
                        f"{BUDGETS_TEST_FRACTION:g} with --budgets, else 0: the validation Dice)")
    p.add_argument("--keep-runs", action="store_true",
                   help="keep the run folders of the runs with a test split (REPORT_DIR/models) instead of deleting "
                        "them once measured")
    p.add_argument("--config", metavar="FILE.yaml",
                   help="every run starts from this configuration (e.g. data: {augmentation: mirror}); the profile, "
                   "the schedule, the seed and the flags above override it")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: write results.json, report.md and the figures from the runs kept in REPORT_DIR "
                        "with this configuration (the runs not measured yet are left out and listed)")
    p.add_argument("--overwrite", action="store_true",
                   help="measure again, and replace, the runs kept in REPORT_DIR with another configuration (without "
                        "it such a folder is refused; runs of the same configuration are always kept)")
    p.set_defaults(run=_bench)


def _bench(args: argparse.Namespace) -> int:
    from ..engine.budget import parse_duration
    from ..tasks.bench import BenchSettings, check_settings, replaced_runs, run_bench, why_not_kept

    settings = BenchSettings(data=str(args.data), schedules=[s.strip() for s in args.schedules.split(",") if s.strip()],
                             seeds=args.seeds, first_seed=args.first_seed, profile=args.profile, epochs=args.epochs,
                             iterations_per_epoch=args.iterations_per_epoch, device=args.device,
                             time_budget=parse_duration(args.time_budget) if args.time_budget else None,
                             budgets=[parse_duration(b) for b in args.budgets.split(",")] if args.budgets else None,
                             max_seeded_budget=parse_duration(args.max_seeded_budget) if args.max_seeded_budget else None,
                             test_fraction=args.test_fraction, keep_runs=args.keep_runs, config=args.config)
    check_settings(settings)
    out = check_writable(args.out, folder=True)
    if out.is_dir() and Path(args.data).is_dir() and os.path.samefile(out, args.data):
        raise InputError(f"{out}: is the dataset folder; write the report to another folder.")
    replaced = replaced_runs(settings, out)
    if replaced and not args.overwrite and not args.report_only:
        raise InputError(f"{out}: keeps {len(replaced)} run(s) measured with another configuration or an earlier "
                         f"recipe (e.g. {replaced[0].relative_to(out)}: {why_not_kept(replaced[0])}); choose another "
                         "folder, or add --overwrite to measure them again.")
    run_bench(settings, out, progress=lambda line: print(line, flush=True), train=not args.report_only)
    print((Path(args.out) / "report.md").read_text())
    return 0
