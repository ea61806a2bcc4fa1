"""The three models of a run trained with weight averaging, side by side on its test split.

A run trained with ``training.weight_averaging: ema`` and ``data.test_fraction`` keeps, in its final checkpoint,
the weight average (the model it keeps) and the raw weights of its last step; ``checkpoint_best.pt`` is the model
its validation cases chose. This scores all three on the run's test cases (which nothing in the run saw) with
the code of ``napari-pgps evaluate --split test``, and prints the validation curve of the average against the raw
weights from the run's log::

    napari-pgps train --data ../shared/data/Task04_Hippocampus --out runs/screen-ema --config screen-ema.yaml \\
        --schedule pgps-efficiency --epochs 133 --iterations-per-epoch 50 --seed 0
    python benchmarks/weight_averaging.py --run runs/screen-ema --data ../shared/data/Task04_Hippocampus

(``screen-ema.yaml``: ``{data: {test_fraction: 0.1}, training: {weight_averaging: ema, averaging_start: 0.75}}``.)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from napari_pgps.engine.checkpoint import load_checkpoint, save_checkpoint
from napari_pgps.engine.file_names import BEST, FINAL, LAST
from napari_pgps.engine.inference import load_model
from napari_pgps.engine.run_folder import RunFolder
from napari_pgps.events import Validated
from napari_pgps.tasks.evaluation import evaluate_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, type=Path, help="a run folder trained with weight averaging and a test split")
    parser.add_argument("--data", required=True, help="its dataset folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--stopped", action="store_true",
                        help="a run stopped before its end: its last checkpoint instead of its final one")
    args = parser.parse_args()
    kept_path = args.run / (LAST if args.stopped else FINAL)
    final = load_checkpoint(kept_path)
    if "raw_model" not in final:
        raise SystemExit(f"{args.run}: its final checkpoint holds no raw weights (was it trained with weight_averaging: ema?)")
    with tempfile.TemporaryDirectory() as scratch:
        raw = Path(scratch) / "raw.pt"
        save_checkpoint({**{k: v for k, v in final.items() if k not in ("raw_model", "weight_average")},
                         "model": final["raw_model"]}, raw)
        for name, model in (("weight average (kept, final checkpoint)", kept_path),
                            ("raw weights of the last step", raw),
                            ("best validation checkpoint", args.run / BEST)):
            report = evaluate_model(load_model(model, args.device), args.data, split="test")
            dice = ", ".join(f"{label} {value:.4f}" for label, value in report["dice_per_label"].items())
            print(f"{name}: test mean Dice {report['mean_dice']:.4f} ({dice}; {len(report['cases'])} cases)", flush=True)
    validated = [e for e in RunFolder(args.run).events() if isinstance(e, Validated)]
    print("\nepoch  validation Dice (kept)  raw weights")
    for event in validated:
        raw_dice = event.raw_mean_dice
        print(f"{event.epoch:5d}  {event.mean_dice:.4f}                  {'' if raw_dice is None else f'{raw_dice:.4f}'}")


if __name__ == "__main__":
    main()
