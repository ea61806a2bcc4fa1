"""``napari-pgps evaluate`` and ``napari-pgps postprocess``: score a model's segmentations against a dataset's
labels, and choose its post-processing on its validation cases."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Sequence

from ..config import DEVICES, RUNTIMES
from ..engine.metrics import SURFACE_TOLERANCE_MM
from ..engine.file_names import POSTPROCESSING_FILE
from ..engine.progress import size_text
from ..errors import InputError
from ..files import check_outputs, check_writable, write_text_atomically
from .segment import OVERWRITE_HELP, RUNTIME_HELP

EVALUATE_HELP = """Score segmentations against the labels of a dataset folder, per case and per label:
Dice (nnU-Net's convention: a label absent from both is not counted, a label
predicted where the reference has none scores 0), the 95th-percentile Hausdorff
distance and the surface Dice at --tolerance mm (both in the reference's
spacing), precision and recall. A label that only one of the two maps holds (a
missed or a spurious structure) gets the image's diagonal in mm as its HD95,
longer than any distance inside it, so a miss makes the mean HD95 worse (as in
the Medical Segmentation Decathlon's scoring); absent from both, not counted.
Label values that dataset.json does not declare are refused; nnU-Net v2's
"ignore" label is not scored, and the reference's ignore voxels are left out.

  napari-pgps evaluate --model RUN --data DIR [--split validation]
  napari-pgps evaluate --model RUN --data DIR --split test
      the cases train --test-fraction set aside: never trained, validated or chosen on
  napari-pgps evaluate --model RUN_F0 RUN_F1 ... --data DIR --split validation
      the folds of a cross-validation: each on its own validation cases, then pooled
  napari-pgps evaluate --model RUN_A RUN_B --ensemble --data DIR
  napari-pgps evaluate --predictions DIR --data DIR
      a folder of CASE.nii.gz files made by any tool (nnU-Net's included), each on its
      reference's grid; a prediction may be in any volume format (CASE.nrrd, CASE.mha,
      CASE.nii, CASE.tif), whatever the dataset's own

The dataset's images and labels may be NIfTI, NRRD, MetaImage or TIFF (nnU-Net v2's
file_ending in dataset.json), a Decathlon dataset's images also DICOM series.

--runtime onnx segments as segment --runtime onnx does (ONNX Runtime on the CPU, with
the ONNX network inside a package written by export --onnx).
"""


# -- evaluate -----------------------------------------------------------------
def add_evaluate(commands) -> None:
    p = commands.add_parser("evaluate", help="score a model, an ensemble, the folds of a cross-validation, or a folder of "
                            "segmentations against a dataset's labels",
                            description=EVALUATE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", metavar="RUN_DIR_OR_CHECKPOINT",
                   help="model(s) to segment with; several: the folds of a cross-validation (with --split "
                        "validation) or an ensemble (with --ensemble)")
    p.add_argument("--predictions", metavar="DIR", help="a folder of segmentation files (CASE.nii.gz, or CASE with "
                   "another volume ending: .nii, .nrrd, .mha, .tif) made by any tool")
    p.add_argument("--data", required=True, metavar="DIR")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--split", choices=("all", "validation", "training", "test"), default="all",
                   help="evaluate all cases, or only the model's held-out (validation), training or test cases (those "
                        "train --test-fraction set aside)")
    p.add_argument("--ensemble", action="store_true", help="average the models' probabilities")
    p.add_argument("--tolerance", type=float, default=SURFACE_TOLERANCE_MM, metavar="MM",
                   help=f"surface Dice tolerance in mm (default {SURFACE_TOLERANCE_MM:g})")
    p.add_argument("--patch-size", type=int, nargs=3, metavar=("Z", "Y", "X"))
    p.add_argument("--patch-sizes", nargs="+", metavar="SIZE",
                   help="evaluate at each inference patch size: N (isotropic), ZxYxX, or START:STOP:STEP (isotropic, "
                        "inclusive); e.g. --patch-sizes 16:64:8 or 32 40x56x40")
    p.add_argument("--tta", action="store_true")
    p.add_argument("--no-postprocessing", action="store_true", help="leave out the post-processing chosen for the model")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--runtime", choices=RUNTIMES, default="torch", help=RUNTIME_HELP)
    p.set_defaults(run=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from ..engine import load_model
    from ..tasks.evaluation import evaluate_folder, evaluate_folds, evaluate_model, evaluate_patch_sizes

    if (args.model is None) == (args.predictions is None):
        raise InputError("give either --model RUN [RUN ...] (segment, then score) or --predictions DIR (score a folder).")
    if args.json:
        check_writable(args.json)
        check_outputs([args.json], [args.data, *(args.model or []), *([args.predictions] if args.predictions else [])],
                      overwrite=args.overwrite)

    def tell(name, dice):
        print(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in dice.items()), flush=True)

    if args.predictions is not None:
        report = evaluate_folder(args.predictions, args.data, tolerance_mm=args.tolerance, progress=tell)
        _print_scores(report)
    else:
        models = [load_model(path, args.device, runtime=args.runtime) for path in args.model]
        postprocess = not args.no_postprocessing
        if args.patch_sizes:
            sizes = parse_patch_sizes(args.patch_sizes)
            report = evaluate_patch_sizes(models[0], args.data, sizes, split=args.split, mirror=args.tta,
                                          progress=lambda size, row: print(f"patch {size_text(size)}: mean Dice "
                                                                           f"{row['mean_dice']:.4f}", flush=True))
        elif len(models) > 1 and not args.ensemble:
            if args.split != "validation":
                raise InputError("several models are the folds of a cross-validation (add --split validation) or an "
                                 "ensemble (add --ensemble).")
            report = evaluate_folds(models, args.data, mirror=args.tta, postprocess=postprocess,
                                    tolerance_mm=args.tolerance, progress=tell)
            for fold in report["folds"]:
                print(f"fold {fold['fold']} ({len(fold['cases'])} cases): mean Dice {fold['mean_dice']:.4f}", flush=True)
            print("pooled over the folds:")
            _print_scores(report["pooled"])
        else:
            report = evaluate_model(models, args.data, split=args.split, patch_size=args.patch_size, mirror=args.tta,
                                    postprocess=postprocess, tolerance_mm=args.tolerance, progress=tell)
            _print_scores(report)
    if args.json:
        write_text_atomically(Path(args.json), json.dumps(report, indent=2) + "\n")
    return 0


def parse_patch_sizes(tokens: Sequence[str]) -> list[tuple[int, int, int]]:
    """``["16:64:8", "32", "40x56x40"]`` -> patch sizes (Z, Y, X); ranges are isotropic and include STOP."""
    sizes = []
    for token in tokens:
        try:
            if ":" in token:
                start, stop, step = (int(v) for v in token.split(":"))
                if step <= 0 or stop < start:
                    raise ValueError
                sizes += [(v, v, v) for v in range(start, stop + 1, step)]
            elif "x" in token.lower():
                z, y, x = (int(v) for v in token.lower().split("x"))
                sizes.append((z, y, x))
            else:
                sizes.append((int(token),) * 3)
        except ValueError:
            raise InputError(f"--patch-sizes: '{token}' is not N, ZxYxX or START:STOP:STEP.") from None
    return sizes


def _print_scores(report: dict) -> None:
    """The per-label means of every metric, and the mean Dice."""
    metrics = report["metrics"]
    print(f"{len(report['cases'])} cases: mean Dice {report['mean_dice']:.4f}")
    header = ["label", "Dice", "HD95 (mm)", f"surface Dice ({report['tolerance_mm']:g} mm)", "precision", "recall"]
    print("  " + " | ".join(header))
    for name in report["dice_per_label"]:
        cells = ["-" if math.isnan(metrics[m][name]) else f"{metrics[m][name]:.4f}"
                 for m in ("dice", "hd95", "surface_dice", "precision", "recall")]
        print("  " + " | ".join([name, *cells]))


# -- postprocess --------------------------------------------------------------
def add_postprocess(commands) -> None:
    p = commands.add_parser("postprocess", help="choose a model's post-processing on its validation cases",
                            description="Segment the validation cases of a model (or of every fold of a cross-validation, "
                            "pooled), decide which largest-connected-component steps raise their Dice (nnU-Net's rule) and "
                            f"write {POSTPROCESSING_FILE} into each run folder; segment and evaluate then apply it.")
    p.add_argument("--model", required=True, nargs="+", metavar="RUN_DIR")
    p.add_argument("--data", required=True, metavar="DIR")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.set_defaults(run=_postprocess)


def _postprocess(args: argparse.Namespace) -> int:
    from ..engine import load_model
    from ..tasks.postprocessing import choose_for_models

    models = [load_model(path, args.device) for path in args.model]
    chosen, evidence = choose_for_models(models, args.data, progress=lambda name: print(f"{name} segmented", flush=True))
    print(f"post-processing chosen on {evidence['cases']} validation cases: {chosen.describe(models[0].config.labels)}")
    for step, dice in evidence.items():
        if isinstance(dice, dict):
            print(f"  {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in dice.items() if v is not None))
    return 0
