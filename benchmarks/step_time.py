"""Median training-step time of the default network on real cases, for comparing two versions of the code.

    python benchmarks/step_time.py --data DIR [--cases 30] [--epochs 2] [--steps 40] [--skip 5]

Trains the default CPU configuration (no validation) on the first ``--cases`` cases and prints the median
``StepDone.seconds`` after the first ``--skip`` steps (shape warm-up). To compare two commits, run it
alternately from each checkout (``PYTHONPATH=<checkout>/src``), twice each.
"""

from __future__ import annotations

import argparse
import statistics

from napari_pgps import RunConfig, train
from napari_pgps.events import StepDone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--cases", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40, help="steps per epoch")
    parser.add_argument("--skip", type=int, default=5, help="first steps left out of the median")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    config = RunConfig()
    config.data.path = args.data
    config.data.max_cases = args.cases
    config.training.epochs = args.epochs
    config.training.iterations_per_epoch = args.steps
    config.training.validate_every = args.epochs + 1
    config.training.device = args.device
    seconds = [event.seconds for event in train(config) if isinstance(event, StepDone)]
    print(f"median step {statistics.median(seconds[args.skip:]):.4f} s over {len(seconds) - args.skip} steps")


if __name__ == "__main__":
    main()
