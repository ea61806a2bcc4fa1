"""A run planned to a time budget: each stage's timed step cost against its steps in training.

Trains one schedule to a budget (like ``train --time-budget``) and prints, per stage shape, the seconds a step was
timed at by the plan and the median and mean seconds of the stage's training steps, then the whole run's
planned and actual duration and any re-plans. ``--no-replan`` keeps the first plan (what the plan alone predicts).
It reads the trainer's plan (``_BudgetPlan.step_seconds``), which no event carries.

    python benchmarks/budget_pace.py --data DIR --schedule pgps-efficiency --budget 3m [--no-replan]
"""

from __future__ import annotations

import argparse
import collections
import time

import numpy as np

from napari_pgps import RunConfig, train
from napari_pgps.curriculum import Stage
from napari_pgps.engine import trainer
from napari_pgps.engine.budget import parse_duration
from napari_pgps.engine import TrainingProgress, describe_event
from napari_pgps.events import Finished, Replanned, RunStarted, StepDone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--schedule", default="pgps-efficiency")
    parser.add_argument("--budget", default="3m")
    parser.add_argument("--no-replan", action="store_true")
    args = parser.parse_args()

    plans = []
    plan_to_budget = trainer._Run._plan_to_budget

    def keep_plan(run):
        expected = plan_to_budget(run)
        plans.append(run._budget_plan)
        return expected

    trainer._Run._plan_to_budget = keep_plan
    if args.no_replan:
        trainer._Run._replan = lambda run, stage, seconds: None
    config = RunConfig()
    config.data.path = args.data
    config.curriculum.schedule = args.schedule
    config.training.time_budget = parse_duration(args.budget)
    config.training.epochs = 100_000  # the budget decides
    steps = collections.defaultdict(list)
    started, progress = time.perf_counter(), TrainingProgress()
    for event in train(config):
        progress.update(event)
        if isinstance(event, StepDone):
            steps[(event.patch, event.batch)].append(event.seconds)
        elif isinstance(event, (RunStarted, Replanned, Finished)):
            print(describe_event(event, progress))
    wall = time.perf_counter() - started
    print(f"\n{'patch':>12} {'batch':>5} {'steps':>5} {'timed s':>8} {'median s':>8} {'mean s':>8} {'median/timed':>12}")
    for (patch, batch), seconds in steps.items():
        timed = plans[0].step_seconds(Stage(patch, batch, 1))
        print(f"{'x'.join(map(str, patch)):>12} {batch:>5} {len(seconds):>5} {timed:8.4f} {np.median(seconds):8.4f} "
              f"{np.mean(seconds):8.4f} {np.median(seconds) / timed:12.2f}")
    print(f"\nwhole run (start-up, plan, steps, validations): {wall:.0f} s of a {config.training.time_budget:.0f} s budget")


if __name__ == "__main__":
    main()
