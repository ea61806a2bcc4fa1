"""The ``napari-pgps`` command line: a thin face over the engine.

Every problem with the user's input ends in one line on stderr that names
the file or option and what to do, and exit status 2. Under torchrun only
rank 0 prints.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Iterator, Optional, Sequence

from . import __version__
from .config import DEVICES, OPTIMIZERS, PRUNING_RULES, RunConfig, use_pruning_rule
from .curriculum import SCHEDULES
from .engine.budget import parse_duration
from .engine.inference import RUNTIMES
from .engine.metrics import SURFACE_TOLERANCE_MM
from .engine.progress import size_text
from .errors import InputError
from .files import WriteError, check_outputs, check_writable, write_text_atomically
from .models import ARCHITECTURES

EXIT_INPUT = 2


def main(argv: Optional[Sequence[str]] = None) -> int:
    with _only_rank_zero_prints(), _sigterm_ends_as_an_exception():
        parser = _parser()
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help()
            return EXIT_INPUT
        try:
            return args.run(args)
        except InputError as exc:
            print(f"napari-pgps {args.command}: error: {exc}", file=sys.stderr)
            return EXIT_INPUT
        except OSError as exc:
            line = file_fault(exc)
            if line is None:  # not about a file: a fault of the program, shown with its traceback
                raise
            print(f"napari-pgps {args.command}: error: {line}", file=sys.stderr)
            return EXIT_INPUT


_WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
"""System errors that only writing meets: a full disk or quota, a read-only file system, a file too large."""


def file_fault(exc: OSError) -> Optional[str]:
    """One line for a file the command could not write or use, or ``None`` for a system error about no file.

    A write (:class:`napari_pgps.files.WriteError` names the output; the old file is kept) or a full disk:
    ``cannot write PATH: No space left on device; free space or choose another folder``.
    """
    where = f" {exc.filename}" if exc.filename else ""
    reason = exc.strerror or str(exc)
    if isinstance(exc, WriteError) or exc.errno in _WRITE_ERRNOS:
        return f"cannot write{where}: {reason}; free space or choose another folder."
    if exc.filename:
        return f"cannot use{where}: {reason}; check the path and its permissions."
    return None


@contextlib.contextmanager
def _only_rank_zero_prints() -> Iterator[None]:
    """Under torchrun the ranks other than 0 print nothing: rank 0 reports progress and the (shared) input errors.

    A crash still shows its traceback: the interpreter prints it after ``main`` has returned.
    """
    if os.environ.get("RANK", "0") == "0":
        yield
        return
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        yield


@contextlib.contextmanager
def _sigterm_ends_as_an_exception() -> Iterator[None]:
    """SIGTERM (``kill``, a job scheduler's stop, a CI time limit) ends the command as an exception would: its
    ``finally`` and ``with`` blocks run, so the bench's training process and the data loader's worker processes end
    with it instead of running on, orphaned; the run's last checkpoint (written atomically) is kept. Exit status
    143 (128 + SIGTERM), as if killed by it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def end(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, end)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_OVERWRITE_HELP = ("replace outputs that exist (without it they are refused before any work); an input is never "
                   "overwritten")

_PRUNING_RULE_HELP = ("PSP-Seg's options as a set: reference (the PSP-Seg code's behaviour, the default; made for "
                      "1,000 epochs) or short-run (our earlier choices, which prune within tens of epochs)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-pgps",
        description="Train 3D segmentation networks with patch-size curricula, and segment volumes.",
    )
    parser.add_argument("--version", action="version", version=f"napari-pgps {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a network on a dataset folder", description=_TRAIN_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", metavar="DIR", help="dataset folder (Decathlon or nnU-Net v2 raw layout)")
    p.add_argument("--out", metavar="RUN_DIR", required=True, help="run folder for config.yaml, metrics.jsonl and checkpoints")
    p.add_argument("--config", metavar="FILE.yaml", help="start from this configuration; flags override it")
    p.add_argument("--schedule", choices=SCHEDULES,
                   help="patch-size schedule (default: constant, model kind FP, or the network's own: augment for "
                        "hypernet; augment: AP; pgps-*: PGPS)")
    p.add_argument("--pdl", action="store_true", help="add the Progressive Deep Learning data curriculum (cases by similarity)")
    p.add_argument("--time-budget", metavar="DURATION",
                   help="plan the run to end within this time (15m, 1h30m, 90s; a number is minutes): epochs from "
                        "step times measured at each stage size, validations included; --epochs then caps them "
                        "(default on a CPU: 25 epochs within 15m)")
    p.add_argument("--epochs", type=int, metavar="N", help="epochs (default: from the device; CPU 25)")
    p.add_argument("--iterations-per-epoch", type=int, metavar="N", help="steps per epoch (default: from the device; CPU 50)")
    p.add_argument("--batch-size", type=int, metavar="N", help="crops per step at the final patch size (default 2)")
    p.add_argument("--patch-size", type=int, nargs=3, metavar=("Z", "Y", "X"), help="final patch size (default: planned from the data)")
    p.add_argument("--architecture", choices=list(ARCHITECTURES), metavar="NETWORK",
                   help="network (default dynunet, or prm with --progressive-pruning): "
                        + "; ".join(f"{name}: {spec.description}" for name, spec in ARCHITECTURES.items()))
    p.add_argument("--prm-variant", choices=("S", "B", "L"), help="PSP-Seg network size with --architecture prm (default S)")
    p.add_argument("--progressive-pruning", action="store_true",
                   help="PSP-Seg: prune PRM branches during training (implies --architecture prm)")
    p.add_argument("--pruning-rule", choices=tuple(PRUNING_RULES), help=_PRUNING_RULE_HELP)
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="optimiser (default: sgd on CUDA, adamw on CPU/MPS)")
    p.add_argument("--learning-rate", type=float, metavar="LR", help="initial learning rate (default 1e-2 SGD, 1e-3 AdamW)")
    p.add_argument("--max-cases", type=int, metavar="N", help="use only the first N cases (quick runs)")
    p.add_argument("--seed", type=int, metavar="S", help="random seed for the split, sampling and weights (default 0)")
    p.add_argument("--fold", type=int, metavar="K",
                   help="train fold K (0-based) of a cross-validation instead of the 80/20 held-out split")
    p.add_argument("--folds", type=int, metavar="N", help="folds of the cross-validation (default 5)")
    p.add_argument("--device", choices=DEVICES, help="compute device (default auto: CUDA, else MPS, else CPU)")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--init-from", metavar="MODEL",
                   help="start from the weights of a trained model (run folder, checkpoint or model package .zip): its "
                        "network, patch, spacing and preprocessing are taken (--patch-size may differ if the network "
                        "still takes the weights), its labels and channels must be the data's; a new run from epoch 0 "
                        "with a fresh optimiser, not a resume")
    p.add_argument("--quiet", action="store_true", help="print only validation results and the summary")
    p.set_defaults(run=_train)

    p = sub.add_parser("segment", help="segment a volume or a folder of volumes",
                       description="Segment NIfTI or TIFF volumes with a trained model (several: an ensemble, their "
                       "probabilities averaged); prints each label's volume.")
    p.add_argument("--model", required=True, nargs="+", metavar="RUN_DIR_OR_CHECKPOINT")
    p.add_argument("--input", required=True, metavar="FILE_OR_DIR")
    p.add_argument("--output", required=True, metavar="FILE_OR_DIR")
    p.add_argument("--patch-size", type=int, nargs=3, metavar=("Z", "Y", "X"), help="sliding-window size (default: the training patch)")
    p.add_argument("--tta", action="store_true", help="mirroring test-time augmentation: every flip of the axes the model was trained "
                   "to flip (8 for nnunet/mirror augmentation; slower); skipped, with a note, for a model "
                   "trained without mirroring")
    p.add_argument("--no-postprocessing", action="store_true", help="leave out the post-processing chosen for the model")
    p.add_argument("--uncertainty", action="store_true",
                   help="also write each segmentation's uncertainty beside it, NAME_uncertainty.nii.gz: the entropy of "
                        "the label probabilities per voxel (float32, 0 certain .. 1 uniform over the labels), same affine")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--runtime", choices=RUNTIMES, default="torch", help=_RUNTIME_HELP)
    p.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    p.set_defaults(run=_segment)

    p = sub.add_parser("export", help="write a trained model as one .zip file to share (a model package)",
                       description=_EXPORT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="RUN_DIR_OR_CHECKPOINT",
                   help="run folder (its final, else last checkpoint), checkpoint or model package")
    p.add_argument("--out", required=True, metavar="MODEL.zip", help="the package to write")
    p.add_argument("--overwrite", "--force", dest="overwrite", action="store_true",
                   help="replace MODEL.zip if it exists (--force is the same)")
    p.add_argument("--onnx", action="store_true",
                   help="also put the network into MODEL.zip as an ONNX graph, network.onnx (dynamic batch, windows "
                        "of the patch size; checked against torch), for segment and evaluate --runtime onnx")
    p.add_argument("--patch-size", type=int, nargs=3, metavar=("Z", "Y", "X"),
                   help="with --onnx: the ONNX network's window; a hypernetwork is baked at it (default: the "
                        "training patch)")
    p.set_defaults(run=_export)

    p = sub.add_parser("evaluate", help="score a model, an ensemble, the folds of a cross-validation, or a folder of "
                       "segmentations against a dataset's labels",
                       description=_EVALUATE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", metavar="RUN_DIR_OR_CHECKPOINT",
                   help="model(s) to segment with; several: the folds of a cross-validation (with --split "
                        "validation) or an ensemble (with --ensemble)")
    p.add_argument("--predictions", metavar="DIR", help="a folder of segmentation files (CASE.nii.gz) made by any tool")
    p.add_argument("--data", required=True, metavar="DIR")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    p.add_argument("--split", choices=("all", "validation", "training"), default="all",
                   help="evaluate all cases, or only the model's held-out (validation) or training cases")
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
    p.add_argument("--runtime", choices=RUNTIMES, default="torch", help=_RUNTIME_HELP)
    p.set_defaults(run=_evaluate)

    p = sub.add_parser("postprocess", help="choose a model's post-processing on its validation cases",
                       description="Segment the validation cases of a model (or of every fold of a cross-validation, "
                       "pooled), decide which largest-connected-component steps raise their Dice (nnU-Net's rule) and "
                       "write postprocessing.json into each run folder; segment and evaluate then apply it.")
    p.add_argument("--model", required=True, nargs="+", metavar="RUN_DIR")
    p.add_argument("--data", required=True, metavar="DIR")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.set_defaults(run=_postprocess)

    p = sub.add_parser("schedule", help="print a patch-size schedule without training",
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

    p = sub.add_parser("prune", help="make a smaller network: channel-prune a trained model, or train with PSP-Seg pruning",
                       description=_PRUNE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", metavar="RUN_DIR_OR_CHECKPOINT", help="trained model to channel-prune (Torch-Pruning)")
    p.add_argument("--progressive", action="store_true", help="train a PRM network and prune its branches during training (PSP-Seg)")
    p.add_argument("--data", required=True, metavar="DIR", help="dataset folder: fine-tuning / training and the validation cases")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="new run folder for the pruned model and pruning_report.md")
    p.add_argument("--ratio", type=float, default=0.5, help="channel pruning: share of every layer's channels removed (default 0.5)")
    p.add_argument("--steps", type=int, default=5, help="channel pruning: iterative steps (default 5)")
    p.add_argument("--fine-tune-epochs", type=int, metavar="N", help="channel pruning: fine-tune epochs (default: half of the model's)")
    p.add_argument("--prm-variant", choices=("S", "B", "L"), default="S", help="progressive: PSP-Seg network size (default S)")
    p.add_argument("--pruning-rule", choices=tuple(PRUNING_RULES), help="progressive: " + _PRUNING_RULE_HELP)
    p.add_argument("--baseline", metavar="RUN_DIR", help="progressive: trained run to compare with in the report (e.g. the default network)")
    p.add_argument("--retrain", action="store_true", help="progressive: then train the pruned architecture again from fresh "
                   "weights for the same epochs, into RUN_DIR (the pruning run is kept in RUN_DIR/pruning-run)")
    p.add_argument("--config", metavar="FILE.yaml", help="progressive: start from this training configuration")
    p.add_argument("--epochs", type=int, metavar="N", help="progressive: epochs (default: from the device)")
    p.add_argument("--iterations-per-epoch", type=int, metavar="N", help="progressive: steps per epoch")
    p.add_argument("--max-cases", type=int, metavar="N", help="progressive: use only the first N cases")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--quiet", action="store_true", help="print only validation results, pruning and the report")
    p.set_defaults(run=_prune)

    p = sub.add_parser("bench", help="train several schedules side by side and report Dice, time and memory",
                       description="Train every schedule with the same seeds, split and epochs; write results.json, "
                       "report.md and PNG figures to REPORT_DIR. Each run's result is kept in REPORT_DIR/runs as it "
                       "ends: the same command started again trains only the runs not measured yet with the same "
                       "configuration.")
    p.add_argument("--data", required=True, metavar="DIR")
    p.add_argument("--out", required=True, metavar="REPORT_DIR")
    p.add_argument("--schedules", default="constant,pgps-efficiency,pgps-performance", help="comma-separated; must include constant; NAME+pdl adds the PDL data curriculum, e.g. constant+pdl")
    p.add_argument("--seeds", type=int, default=3, metavar="N")
    p.add_argument("--first-seed", type=int, default=0, metavar="N",
                   help="the seeds are N to N + seeds - 1 (default 0): e.g. --first-seed 2 --seeds 1 measures seed 2 alone")
    p.add_argument("--profile", choices=("quick", "full"), default="full", help="quick: a few minutes for CI; full: the documented figures")
    p.add_argument("--epochs", type=int, metavar="N")
    p.add_argument("--iterations-per-epoch", type=int, metavar="N")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--time-budget", metavar="DURATION",
                   help="train every schedule for the same wall-clock time (e.g. 15m), its epochs planned to it")
    p.add_argument("--config", metavar="FILE.yaml",
                   help="every run starts from this configuration (e.g. data: {augmentation: mirror}); the profile, "
                   "the schedule, the seed and the flags above override it")
    p.add_argument("--overwrite", action="store_true",
                   help="measure again, and replace, the runs kept in REPORT_DIR with another configuration (without "
                        "it such a folder is refused; runs of the same configuration are always kept)")
    p.set_defaults(run=_bench)

    p = sub.add_parser("info", help="print what napari-pgps reads from a volume file (shape, spacing, orientation)",
                       description=_INFO_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="FILE", help="a volume: NIfTI (.nii, .nii.gz) or TIFF (.tif, .tiff)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    p.set_defaults(run=_info)

    p = sub.add_parser("demo", help="open napari with sample data, the widgets and a quick schedule",
                       description="The demo: napari with a generated phantom, the Curriculum, Train and Segment widgets "
                       "docked and a quick PGPS schedule ready (press Start in the Train widget). With --headless: the "
                       "same training without a window, writing figures, and a segmentation of an unseen phantom.")
    p.add_argument("--headless", action="store_true", help="run without a window and write the figures to --out")
    p.add_argument("--out", metavar="DIR", default="demo-output", help="folder for the demo's data, run and results")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.set_defaults(run=_demo)
    return parser


_TRAIN_HELP = """Train a segmentation network on a dataset folder.

The run folder (a new one, unless --resume) receives config.yaml (the whole
resolved configuration), splits.json (the training and validation case names),
metrics.jsonl (one JSON object per event) and checkpoint_last.pt /
checkpoint_best.pt / checkpoint_final.pt. Ctrl-C stops after the current step
and keeps the last checkpoint; --resume continues from it.

Model kinds (recorded in the checkpoint as "kind"):
  FP    fixed patch: --schedule constant (the default)
  AP    patch-size augmentation: --schedule augment (a quarter of the steps at
        the final patch; the others draw each axis from the sizes the network
        takes in 0.25..1.5 x the final patch, with the batch that keeps the
        voxels per step)
  HN    patch-size hypernetwork: --architecture hypernet (an MLP generates the
        DynUNet's weights from the patch size; trains with --schedule augment)
  PGPS  progressive growing of patch size: --schedule pgps-efficiency or
        pgps-performance
AP and HN models segment well at patch sizes other than the training one
(napari-pgps evaluate --patch-sizes 16:64:8 measures it).
"""


# -- train --------------------------------------------------------------------
def _train(args: argparse.Namespace) -> int:
    from .engine import TrainingControl
    from .tasks.training import train

    overrides = [name for name in ("data", "config", "schedule", "epochs", "iterations_per_epoch", "batch_size",
                                   "patch_size", "architecture", "optimizer", "learning_rate", "max_cases", "seed",
                                   "fold", "folds", "time_budget", "init_from", "prm_variant", "pruning_rule")
                 if getattr(args, name) is not None]
    overrides += [name for name in ("pdl", "progressive_pruning") if getattr(args, name)]  # store_true flags
    if args.resume:
        if overrides:
            flags = ", ".join("--" + n.replace("_", "-") for n in overrides)
            raise InputError(f"--resume continues with the run's stored configuration; drop {flags}.")
        config = RunConfig()
    else:
        config = RunConfig.load(args.config) if args.config else RunConfig()
        _apply_train_flags(config, args)
        config.validate()
        if not config.data.path:
            raise InputError("no training data: give --data DIR (or data.path in --config).")
    if args.device:
        config.training.device = args.device
    check_writable(args.out, folder=True)

    control = TrainingControl()
    previous = signal.signal(signal.SIGINT, lambda *_: _request_stop(control, previous))
    try:
        return _print_events(train(config, Path(args.out), control=control, resume=args.resume), args.quiet)
    finally:
        signal.signal(signal.SIGINT, previous)


def _prune(args: argparse.Namespace) -> int:
    from .engine import TrainingControl
    from .tasks.pruning import prune_trained_model, train_progressively_pruned

    if args.progressive == (args.model is not None):
        raise InputError("give either --model RUN_DIR (channel pruning of a trained model) or --progressive (PSP-Seg).")
    out = check_writable(args.out, folder=True)
    control = TrainingControl()
    if args.progressive:
        config = RunConfig.load(args.config) if args.config else RunConfig()
        config.data.path = str(args.data)
        config.model.prm_variant = args.prm_variant
        config.training.device = args.device
        if args.retrain:
            config.pruning.retrain = True
        if args.pruning_rule is not None:
            use_pruning_rule(config, args.pruning_rule)
        for name, section in (("epochs", config.training), ("iterations_per_epoch", config.training), ("max_cases", config.data)):
            if getattr(args, name) is not None:
                setattr(section, name, getattr(args, name))
        config.validate()
        events = train_progressively_pruned(config, out, baseline=args.baseline, control=control)
    else:
        events = prune_trained_model(args.model, args.data, out, ratio=args.ratio, steps=args.steps,
                                     fine_tune_epochs=args.fine_tune_epochs, device=args.device, control=control)
    previous = signal.signal(signal.SIGINT, lambda *_: _request_stop(control, previous))
    try:
        return _print_events(events, args.quiet)
    finally:
        signal.signal(signal.SIGINT, previous)


def _request_stop(control, previous) -> None:
    if control.stop_requested:
        raise KeyboardInterrupt
    print("\nstopping after this step (Ctrl-C again to abort at once)...", file=sys.stderr, flush=True)
    control.stop()


def _apply_train_flags(config: RunConfig, args: argparse.Namespace) -> None:
    if args.data is not None:
        config.data.path = str(args.data)
    for name in ("max_cases", "fold", "folds"):
        if getattr(args, name) is not None:
            setattr(config.data, name, getattr(args, name))
    if args.schedule is not None:
        config.curriculum.schedule = args.schedule
    if args.pdl:
        config.curriculum.pdl.enabled = True
    if args.patch_size is not None:
        config.model.patch_size = tuple(args.patch_size)
    if args.architecture is not None:
        config.model.architecture = args.architecture
    if args.progressive_pruning:
        config.pruning.enabled = True
    if args.prm_variant is not None:
        config.model.prm_variant = args.prm_variant
    if args.pruning_rule is not None:
        use_pruning_rule(config, args.pruning_rule)
    for name in ("epochs", "iterations_per_epoch", "batch_size", "optimizer", "learning_rate", "seed"):
        if getattr(args, name) is not None:
            setattr(config.training, name, getattr(args, name))
    if args.time_budget is not None:
        config.training.time_budget = parse_duration(args.time_budget)
    if args.init_from is not None:
        config.training.init_from = str(args.init_from)


def _print_events(events, quiet: bool) -> int:
    """Print a line for each event worth telling; 130 when the run was stopped, else 0."""
    from .engine import TrainingProgress, describe_event

    progress = TrainingProgress()
    for event in events:
        line = describe_event(event, progress.update(event), quiet=quiet)
        if line is not None:
            print(line, flush=True)
    if progress.finished is not None and progress.finished.stopped:
        print("resume with: napari-pgps train --out RUN_DIR --resume", flush=True)
        return 130
    return 0


_PRUNE_HELP = """Make a smaller network, two ways:

  napari-pgps prune --model runs/default --data DIR --out runs/pruned [--ratio 0.5]
      structured channel pruning of a trained model with Torch-Pruning (L2 magnitude,
      iterative steps), then a short fine-tune on the model's training cases;
  napari-pgps prune --progressive --data DIR --out runs/psp [--baseline runs/default] [--retrain]
      PSP-Seg: train a PRM network and prune its branches during training (as the
      reference code does; the pruning: section of --config picks our earlier choices),
      with --retrain then train the pruned architecture again from fresh weights.

Both write pruning_report.md: parameters, FLOPs, peak forward memory at the final patch,
time to segment one validation volume and Dice on the validation cases, before and after.
The pruned model segments like any other (napari-pgps segment --model runs/pruned).
"""


_EVALUATE_HELP = """Score segmentations against the labels of a dataset folder, per case and per label:
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
  napari-pgps evaluate --model RUN_F0 RUN_F1 ... --data DIR --split validation
      the folds of a cross-validation: each on its own validation cases, then pooled
  napari-pgps evaluate --model RUN_A RUN_B --ensemble --data DIR
  napari-pgps evaluate --predictions DIR --data DIR
      a folder of CASE.nii.gz files made by any tool (nnU-Net's included), each on its
      reference's grid

--runtime onnx segments as segment --runtime onnx does (ONNX Runtime on the CPU, with
the ONNX network inside a package written by export --onnx).
"""

_RUNTIME_HELP = ("what runs the network in the sliding window: torch (default) or onnx, ONNX Runtime on the CPU with "
                 "the ONNX network inside a package written by export --onnx")


_EXPORT_HELP = """Write a trained model as one .zip file (a model package) to share or archive.

It holds the weights (a plain file of tensors, read with torch.load(weights_only=True),
which refuses any pickled object but tensors: nothing in the file is run), the run's resolved configuration
(config.yaml: network plan, patch, spacing, orientation, channels, labels,
normalisation), the split (splits.json), the post-processing choice when the run
has one, a model card (model_card.md) and a manifest (napari-pgps-model.json).
segment, evaluate, the Segment widget and train --init-from take the .zip
wherever they take a run folder.

  napari-pgps export --model runs/hippocampus --out hippocampus.zip

--onnx also puts the network into the package as network.onnx (opset 17, input "image" of
preprocessed windows of --patch-size, default the training patch, with a dynamic batch axis;
output "logits"; a hypernetwork is baked at that window), after checking that ONNX Runtime's
logits are within 1e-4 of torch's on a window of one of the model's cases; the manifest lists
its size and SHA-256 like every member's. segment and evaluate --runtime onnx run it on the
CPU from the .zip; other tools can take it out with unzip MODEL.zip network.onnx.

  napari-pgps export --model runs/hippocampus --out hippocampus.zip --onnx
"""


def _export(args: argparse.Namespace) -> int:
    from .engine.package import read_model_package
    from .tasks.export import export_model

    check_writable(args.out)
    check_outputs([args.out], [args.model], overwrite=args.overwrite)
    path = export_model(args.model, args.out, overwrite=args.overwrite, onnx=args.onnx, patch_size=args.patch_size)
    manifest = read_model_package(path)["package"]
    members = ", ".join(manifest["members"])
    print(f"{path}: {manifest['architecture']} ({manifest['parameters']:,} parameters, kind {manifest['kind']}), "
          f"{path.stat().st_size / 1e6:.1f} MB: {members}", flush=True)
    if "onnx" in manifest:
        from .engine.onnx_runtime import describe

        print(f"{path} ({manifest['onnx']['member']}): {describe(manifest['onnx'])}", flush=True)
    return 0


# -- segment ------------------------------------------------------------------
def _segment(args: argparse.Namespace) -> int:
    """Segment every input, one image in memory at a time, after checking all of them and all outputs.

    Nothing is written before every input is known to be good: the outputs are planned and checked first
    (:func:`segment_plan`), then every input is read once and dropped (the reader refuses a damaged file, NaN or
    infinite values, channels of differing geometry; :func:`check_segmentable` a single slice or another number
    of channels than the model takes), and only then is each read again, segmented
    and written. A header-only check would be cheaper but would miss bad values and damaged data; reading twice
    costs little beside segmenting, and memory no longer grows with the folder.
    """
    from .data.volume import read_image, write_volume
    from .engine import load_model, segment_volume
    from .engine.inference import check_segmentable
    from .engine.metrics import entropy_map
    from .models import check_inference_patch

    models = [load_model(path, args.device, runtime=args.runtime) for path in args.model]
    model = models[0]
    if args.patch_size:
        for each in models:
            check_inference_patch(each.config.model, args.patch_size)
    plan = segment_plan(args, model.config.model.in_channels)
    for paths, _ in plan:  # read and check every input before writing anything
        check_segmentable(models, read_image(paths))
    for paths, out in plan:
        image = read_image(paths)
        result = segment_volume(models, image, patch_size=args.patch_size, mirror=args.tta,
                                keep_probabilities=args.uncertainty, postprocess=not args.no_postprocessing)
        write_volume(result.labels, out)
        volumes = ", ".join(f"{name} {v['ml']:.3f} mL ({v['voxels']} voxels)" for name, v in result.volumes.items())
        notes = "".join(f"; {note}" for note in result.notes)
        if args.uncertainty:
            written = write_volume(result.labels.with_array(entropy_map(result.probabilities)), _uncertainty_path(out))
            notes += f"; uncertainty in {written.name}"
        print(f"{out}: {volumes}{notes}", flush=True)
    return 0


def segment_plan(args: argparse.Namespace, channels: int) -> list[tuple[list[Path], Path]]:
    """Each image to segment (its channel files) and the file its segmentation goes to, checked before any work.

    ``--output`` is one file for one input file, else a folder (one that exists, or a name ending in ``/``). The
    outputs (with ``--uncertainty`` their uncertainty files too) are refused when their folder cannot be written,
    when one would replace an input (the output folder being the input folder included), when two would be one
    file, or when one exists and ``--overwrite`` is not given.

    Raises:
        InputError: one line naming the input or output and what to do.
    """
    from .data.volume import case_name

    source, target = Path(args.input), Path(args.output)
    inputs = segment_inputs(source, channels)
    many = len(inputs) > 1 or source.is_dir() or target.is_dir() or args.output.endswith(("/", "\\"))
    check_writable(target, folder=many)
    if not many and case_name(target) == target.name:
        raise InputError(f"{target}: choose an output ending in .nii.gz, .nii, .tif or .tiff.")
    if many and target.is_dir() and source.is_dir() and os.path.samefile(source, target):
        raise InputError(f"{target}: is the input folder; write the segmentations to another folder, an input is "
                         "never overwritten.")
    plan = [(paths, target / _output_name(paths[0]) if many else target) for paths in inputs]
    outputs = [out for _, out in plan] + ([_uncertainty_path(out) for _, out in plan] if args.uncertainty else [])
    check_outputs(outputs, [source, *(path for paths in inputs for path in paths), *args.model],
                  overwrite=args.overwrite)
    return plan


def _uncertainty_path(output: Path) -> Path:
    """``CASE.nii.gz`` -> ``CASE_uncertainty.nii.gz`` beside it (the output's own suffix is kept)."""
    from .data.volume import case_name

    name = case_name(output)
    return output.with_name(f"{name}_uncertainty{output.name[len(name):]}")


def segment_inputs(source: Path, channels: int) -> list[list[Path]]:
    """The images to segment, each as its channel files: a file (4D for several channels), a folder of such files,
    or a folder of nnU-Net style ``CASE_0000``, ``CASE_0001``, ... files (one per channel)."""
    from .data.volume import case_name, is_volume_file

    if not source.exists():
        raise InputError(f"{source}: input not found.")
    if not source.is_dir():
        return [[source]]
    files = sorted(p for p in source.iterdir() if is_volume_file(p))
    if not files:
        raise InputError(f"{source}: no NIfTI or TIFF volume in this folder.")
    firsts = [p for p in files if case_name(p).endswith("_0000")]
    if channels == 1 or not firsts:
        return [[p] for p in files]
    groups = []
    for first in firsts:
        stem, suffix = case_name(first)[:-5], first.name[len(case_name(first)):]
        paths = [first.with_name(f"{stem}_{c:04d}{suffix}") for c in range(channels)]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise InputError(f"{source}: the model takes {channels} channels; case '{stem}' lacks {', '.join(missing)}.")
        groups.append(paths)
    return groups


def _output_name(path: Path) -> str:
    """nnU-Net names inputs CASE_0000.nii.gz and outputs CASE.nii.gz; other names are kept."""
    from .data.volume import case_name

    name = case_name(path)
    suffix = path.name[len(name):]
    if name.endswith("_0000"):
        name = name[:-5]
    return name + suffix


# -- evaluate -----------------------------------------------------------------
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


def _evaluate(args: argparse.Namespace) -> int:
    from .engine import load_model
    from .tasks.evaluation import evaluate_folder, evaluate_folds, evaluate_model, evaluate_patch_sizes

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


def _postprocess(args: argparse.Namespace) -> int:
    from .engine import load_model
    from .tasks.postprocessing import choose_for_models

    models = [load_model(path, args.device) for path in args.model]
    chosen, evidence = choose_for_models(models, args.data, progress=lambda name: print(f"{name} segmented", flush=True))
    print(f"post-processing chosen on {evidence['cases']} validation cases: {chosen.describe(models[0].config.labels)}")
    for step, dice in evidence.items():
        if isinstance(dice, dict):
            print(f"  {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in dice.items() if v is not None))
    return 0


# -- schedule and bench --------------------------------------------------------
def _schedule(args: argparse.Namespace) -> int:
    from .curriculum import ScheduleOptions, build_schedule
    from .models import check_patch_size

    check_patch_size(args.final_patch, [2**p for p in args.poolings], what="final patch")
    schedule = build_schedule(args.mode, args.final_patch, args.poolings, args.epochs, args.batch_size,
                              ScheduleOptions(growth=args.growth, max_batch=args.max_batch, performance_batch=args.performance_batch,
                                                              single_voxel_bottleneck=args.single_voxel_bottleneck))
    if args.json:
        print(json.dumps(schedule.to_dict()))
        return 0
    print(f"{'stage':>5}  {'patch (Z x Y x X)':>18}  {'batch':>5}  {'epochs':>6}  {'voxels/step vs final':>20}")
    final = schedule.final_batch * schedule.final_patch[0] * schedule.final_patch[1] * schedule.final_patch[2]
    for i, stage in enumerate(schedule.stages, 1):
        print(f"{i:>5}  {size_text(stage.patch):>18}  {stage.batch:>5}  {stage.epochs:>6}  {stage.voxels_per_step / final:>20.3f}")
    if schedule.choices:
        print("each step draws one of: " + ", ".join(f"{size_text(c.patch)} (batch {c.batch})" for c in schedule.choices))
    if schedule.axis_sizes:
        print("each step draws per axis: " + "; ".join(f"{a}: {list(s)}" for a, s in zip("ZYX", schedule.axis_sizes)))
        rule = "keeps the final voxels per step" if schedule.keep_voxels else "stays the batch size"
        print(f"{schedule.final_share:.0%} of the steps take the final patch instead; a drawn patch's batch {rule}")
    print(f"relative voxels vs constant: {schedule.relative_voxels():.3f}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .tasks.bench import BenchSettings, replaced_runs, run_bench

    settings = BenchSettings(data=str(args.data), schedules=[s.strip() for s in args.schedules.split(",") if s.strip()],
                             seeds=args.seeds, first_seed=args.first_seed, profile=args.profile, epochs=args.epochs,
                             iterations_per_epoch=args.iterations_per_epoch, device=args.device,
                             time_budget=parse_duration(args.time_budget) if args.time_budget else None,
                             config=args.config)
    out = check_writable(args.out, folder=True)
    if out.is_dir() and Path(args.data).is_dir() and os.path.samefile(out, args.data):
        raise InputError(f"{out}: is the dataset folder; write the report to another folder.")
    replaced = replaced_runs(settings, out)
    if replaced and not args.overwrite:
        raise InputError(f"{out}: keeps {len(replaced)} run(s) measured with another configuration (e.g. "
                         f"{replaced[0].name}); choose another folder, or add --overwrite to measure them again.")
    run_bench(settings, out, progress=lambda line: print(line, flush=True))
    print((Path(args.out) / "report.md").read_text())
    return 0


# -- info ---------------------------------------------------------------------
_INFO_HELP = """Print what napari-pgps reads from a volume file: what training, segment and
the napari reader will see.

  shape        the voxels (Z, Y, X)
  channels     1, or C of a 4D NIfTI or a TIFF hyperstack
  spacing_mm   the voxel size (Z, Y, X) in mm (TIFF: from its resolution unit or ImageJ unit)
  orientation  where the file's voxel axes point, in the file's order (i, j, k) = (X, Y, Z):
               RAS is i to the right, j anterior, k superior (nibabel's aff2axcodes)
  affine       voxel (i, j, k, 1) to world (x, y, z, 1) in mm, RAS+
  dtype        the voxel type stored in the file
  values       the value range; and the label values of a map of a few whole numbers
  notes        what reading assumed (e.g. spacing unknown, 1 mm assumed), or what will be refused

The --json keys shape, channels, spacing_mm and orientation are stable. A file that cannot
be read ends with one line saying why, exit status 2.
"""


def _info(args: argparse.Namespace) -> int:
    from .data.info import describe_file, info_text

    description = describe_file(args.file)
    print(json.dumps(description) if args.json else info_text(description))
    return 0


# -- demo ---------------------------------------------------------------------
def _demo(args: argparse.Namespace) -> int:
    if not args.headless and not has_display():
        print(f"no display found: running the headless demo instead (results in {args.out}/)", flush=True)
        args.headless = True
    if args.headless:
        from .demo import run_headless_demo

        run_headless_demo(check_writable(args.out, folder=True), device=args.device)
        return 0
    import napari

    from .demo import open_demo_viewer

    open_demo_viewer(device=args.device)
    napari.run()
    return 0


def has_display() -> bool:
    """False on Linux without an X or Wayland display (a server, CI); napari cannot open a window there."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


if __name__ == "__main__":
    sys.exit(main())
