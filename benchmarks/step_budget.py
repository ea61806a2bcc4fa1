"""How far one training budget gets: validation Dice every 5 epochs for one optimiser setting.

Used to choose the CPU defaults (docs/benchmarks.md, "Choosing the CPU defaults").
The step count decides the Dice, not the device, so the variants were run side
by side on one GPU, in fp32 to match the CPU:

    python benchmarks/step_budget.py NAME OPTIMIZER LR DEEP_SUPERVISION(0|1) EPOCHS ITERATIONS [DEVICE] --data DIR

Prints one line per validation and a final ``RESULT NAME [[epoch, mean Dice], ...] seconds``.
"""

from __future__ import annotations

import argparse
import json
import time

from napari_pgps import RunConfig, train
from napari_pgps.events import Validated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("optimizer", choices=("sgd", "adamw"))
    parser.add_argument("learning_rate", type=float)
    parser.add_argument("deep_supervision", choices=("0", "1"))
    parser.add_argument("epochs", type=int)
    parser.add_argument("iterations", type=int)
    parser.add_argument("device", nargs="?", default="auto")
    parser.add_argument("--data", required=True)
    args = parser.parse_args()

    config = RunConfig()
    config.data.path = args.data
    config.model.deep_supervision = args.deep_supervision == "1"
    config.training.optimizer = args.optimizer
    config.training.learning_rate = args.learning_rate
    config.training.epochs = args.epochs
    config.training.iterations_per_epoch = args.iterations
    config.training.validate_every = 5
    config.training.device = args.device
    config.training.mixed_precision = False
    start = time.time()
    history = []
    for event in train(config):
        if isinstance(event, Validated):
            history.append((event.epoch, round(event.mean_dice, 4)))
            print(args.name, event.epoch, round(event.mean_dice, 4), round(time.time() - start), flush=True)
    print("RESULT", args.name, json.dumps(history), round(time.time() - start), flush=True)


if __name__ == "__main__":
    main()
