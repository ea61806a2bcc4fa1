"""``napari-pgps train`` and ``napari-pgps prune``: a training run, its events printed as lines as they come.

Ctrl-C asks the run to stop after the current step (its last checkpoint is kept, exit status 130); a second
Ctrl-C aborts at once.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from pathlib import Path
from typing import Iterator

from ..config import DEVICES, OPTIMIZERS, PRUNING_RULES, RunConfig, use_pruning_rule
from ..curriculum import SCHEDULES
from ..engine.progress import METRICS_FILE
from ..engine.file_names import BEST, CONFIG_FILE, FINAL, LAST, SPLITS_FILE
from ..errors import InputError
from ..files import check_writable
from ..models.architectures import ARCHITECTURES

TRAIN_HELP = f"""Train a segmentation network on a dataset folder.

The run folder (a new one, unless --resume) receives {CONFIG_FILE} (the whole
resolved configuration), {SPLITS_FILE} (the training, validation and test case names),
{METRICS_FILE} (one JSON object per event) and {LAST} /
{BEST} / {FINAL}. Ctrl-C stops after the current step
and keeps the last checkpoint; --resume continues from it.

The recipe: what the run trains with (schedule, length, augmentation, weight
averaging, network, final patch) is chosen from the device, the time budget and
the data, and printed before the first step, one "recipe:" line per part with
its reason. With no flag a CPU run fills its 15m budget with PGPS Efficiency,
which beat the constant patch at equal time (docs/benchmarks.md, section 10).
--config and the flags override any part; the line then says so.

Model kinds (recorded in the checkpoint as "kind"):
  FP    fixed patch: --schedule constant (the default for a run of set epochs,
        e.g. --epochs N, or on a GPU)
  AP    patch-size augmentation: --schedule augment (a quarter of the steps at
        the final patch; the others draw each axis from the sizes the network
        takes in 0.25..1.5 x the final patch, with the batch that keeps the
        voxels per step)
  HN    patch-size hypernetwork: --architecture hypernet (an MLP generates the
        DynUNet's weights from the patch size; trains with --schedule augment)
  PGPS  progressive growing of patch size: --schedule pgps-efficiency (the
        default for a run planned to a time budget) or pgps-performance
AP and HN models segment well at patch sizes other than the training one
(napari-pgps evaluate --patch-sizes 16:64:8 measures it).
"""

PRUNE_HELP = """Make a smaller network, two ways:

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

PRUNING_RULE_HELP = ("PSP-Seg's options as a set: reference (the PSP-Seg code's behaviour, the default; made for "
                     "1,000 epochs) or short-run (our earlier choices, which prune within tens of epochs)")


# -- train --------------------------------------------------------------------
def add_train(commands) -> None:
    p = commands.add_parser("train", help="train a network on a dataset folder", description=TRAIN_HELP,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", metavar="DIR", help="dataset folder (Decathlon or nnU-Net v2 raw layout)")
    p.add_argument("--out", metavar="RUN_DIR", required=True,
                   help=f"run folder for {CONFIG_FILE}, {METRICS_FILE} and checkpoints")
    p.add_argument("--config", metavar="FILE.yaml",
                   help="start from this configuration (a value it gives overrides the recipe's); flags override it")
    p.add_argument("--schedule", choices=SCHEDULES,
                   help="patch-size schedule (default: the recipe's: pgps-efficiency for a run planned to a time "
                        "budget, as on a CPU with no flag, else the network's own: constant, model kind FP, or "
                        "augment for hypernet; augment: AP; pgps-*: PGPS)")
    p.add_argument("--pdl", action="store_true", help="add the Progressive Deep Learning data curriculum (cases by similarity)")
    p.add_argument("--time-budget", metavar="DURATION",
                   help="plan the run to fill this time (15m, 1h30m, 90s; a number is minutes): as many epochs as "
                        "fit, from step times measured at each stage size, validations included; --epochs then caps "
                        "them (default on a CPU: 15m, all of it; on a GPU none)")
    p.add_argument("--epochs", type=int, metavar="N",
                   help="epochs (default: as many as fit the time budget on a CPU, 50 on a GPU); without "
                        "--time-budget, a run of set epochs")
    p.add_argument("--iterations-per-epoch", type=int, metavar="N", help="steps per epoch (default: from the device; CPU 50)")
    p.add_argument("--batch-size", type=int, metavar="N", help="crops per step at the final patch size (default 2)")
    p.add_argument("--patch-size", type=int, nargs=3, metavar=("Z", "Y", "X"), help="final patch size (default: planned from the data)")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("Z", "Y", "X"),
                   help="target spacing in mm the cases are resampled to (default: nnU-Net's rule over the cases); "
                        "segmentations land back on each input's own grid. A coarser one trains a large volume's "
                        "short run far better: the left atrium at 1.25 mm instead of its 0.625, 15 min on a 2-core "
                        "CPU, test Dice 0.838 against 0.643 (docs/benchmarks.md section 14)")
    p.add_argument("--architecture", choices=list(ARCHITECTURES), metavar="NETWORK",
                   help="network (default dynunet, or prm with --progressive-pruning): "
                        + "; ".join(f"{name}: {spec.description}" for name, spec in ARCHITECTURES.items()))
    p.add_argument("--prm-variant", choices=("S", "B", "L"), help="PSP-Seg network size with --architecture prm (default S)")
    p.add_argument("--progressive-pruning", action="store_true",
                   help="PSP-Seg: prune PRM branches during training (implies --architecture prm)")
    p.add_argument("--pruning-rule", choices=tuple(PRUNING_RULES), help=PRUNING_RULE_HELP)
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="optimiser (default: sgd on CUDA, adamw on CPU/MPS)")
    p.add_argument("--learning-rate", type=float, metavar="LR", help="initial learning rate (default 1e-2 SGD, 1e-3 AdamW)")
    p.add_argument("--max-cases", type=int, metavar="N", help="use only the first N cases (quick runs)")
    p.add_argument("--seed", type=int, metavar="S", help="random seed for the split, sampling and weights (default 0)")
    p.add_argument("--fold", type=int, metavar="K",
                   help="train fold K (0-based) of a cross-validation instead of the 80/20 held-out split")
    p.add_argument("--folds", type=int, metavar="N", help="folds of the cross-validation (default 5)")
    p.add_argument("--test-fraction", type=float, metavar="F",
                   help="set this share of the cases aside as a test split first (the same cases for every seed and "
                        "fold), never trained, validated or chosen on; score them with evaluate --split test "
                        "(default 0: none)")
    p.add_argument("--device", choices=DEVICES, help="compute device (default auto: CUDA, else MPS, else CPU)")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--init-from", metavar="MODEL",
                   help="start from the weights of a trained model (run folder, checkpoint or model package .zip): its "
                        "network, patch, spacing and preprocessing are taken (--patch-size may differ if the network "
                        "still takes the weights), its labels and channels must be the data's; a new run from epoch 0 "
                        "with a fresh optimiser, not a resume")
    p.add_argument("--quiet", action="store_true", help="print only validation results and the summary")
    p.set_defaults(run=_train)


def _train(args: argparse.Namespace) -> int:
    from ..engine import TrainingControl
    from ..tasks.training import train

    overrides = [name for name in ("data", "config", "schedule", "epochs", "iterations_per_epoch", "batch_size",
                                   "patch_size", "spacing", "architecture", "optimizer", "learning_rate", "max_cases", "seed",
                                   "fold", "folds", "test_fraction", "time_budget", "init_from", "prm_variant", "pruning_rule")
                 if getattr(args, name) is not None]
    overrides += [name for name in ("pdl", "progressive_pruning") if getattr(args, name)]  # store_true flags
    if args.resume:
        if overrides:
            flags = ", ".join("--" + n.replace("_", "-") for n in overrides)
            raise InputError(f"--resume continues with the run's stored configuration; drop {flags}.")
        config = RunConfig()
    else:
        config = RunConfig.load(args.config) if args.config else RunConfig()
        apply_train_flags(config, args)
        config.validate()
        if not config.data.path:
            raise InputError("no training data: give --data DIR (or data.path in --config).")
    if args.device:
        config.training.device = args.device
    check_writable(args.out, folder=True)

    control = TrainingControl()
    with _ctrl_c_stops(control):
        return _print_events(train(config, Path(args.out), control=control, resume=args.resume), args.quiet)


def apply_train_flags(config: RunConfig, args: argparse.Namespace) -> None:
    """Set in ``config`` what the ``train`` flags given in ``args`` say (a flag not given leaves it as it is)."""
    if args.data is not None:
        config.data.path = str(args.data)
    for name in ("max_cases", "fold", "folds", "test_fraction"):
        if getattr(args, name) is not None:
            setattr(config.data, name, getattr(args, name))
    if args.schedule is not None:
        config.curriculum.schedule = args.schedule
    if args.pdl:
        config.curriculum.pdl.enabled = True
    if args.patch_size is not None:
        config.model.patch_size = tuple(args.patch_size)
    if args.spacing is not None:
        config.model.spacing = tuple(args.spacing)
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
        from ..engine.budget import parse_duration

        config.training.time_budget = parse_duration(args.time_budget)
    if args.init_from is not None:
        config.training.init_from = str(args.init_from)


# -- prune --------------------------------------------------------------------
def add_prune(commands) -> None:
    p = commands.add_parser("prune", help="make a smaller network: channel-prune a trained model, or train with PSP-Seg pruning",
                            description=PRUNE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", metavar="RUN_DIR_OR_CHECKPOINT", help="trained model to channel-prune (Torch-Pruning)")
    p.add_argument("--progressive", action="store_true", help="train a PRM network and prune its branches during training (PSP-Seg)")
    p.add_argument("--data", required=True, metavar="DIR", help="dataset folder: fine-tuning / training and the validation cases")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="new run folder for the pruned model and pruning_report.md")
    p.add_argument("--ratio", type=float, default=0.5, help="channel pruning: share of every layer's channels removed (default 0.5)")
    p.add_argument("--steps", type=int, default=5, help="channel pruning: iterative steps (default 5)")
    p.add_argument("--fine-tune-epochs", type=int, metavar="N", help="channel pruning: fine-tune epochs (default: half of the model's)")
    p.add_argument("--prm-variant", choices=("S", "B", "L"), default="S", help="progressive: PSP-Seg network size (default S)")
    p.add_argument("--pruning-rule", choices=tuple(PRUNING_RULES), help="progressive: " + PRUNING_RULE_HELP)
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


def _prune(args: argparse.Namespace) -> int:
    from ..engine import TrainingControl
    from ..tasks.pruning import prune_trained_model, train_progressively_pruned

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
    with _ctrl_c_stops(control):
        return _print_events(events, args.quiet)


# -- a run's events and Ctrl-C ---------------------------------------------------
def _print_events(events, quiet: bool) -> int:
    """Print a line for each event worth telling; 130 when the run was stopped, else 0."""
    from ..engine import TrainingProgress, describe_event

    progress = TrainingProgress()
    for event in events:
        line = describe_event(event, progress.update(event), quiet=quiet)
        if line is not None:
            print(line, flush=True)
    if progress.finished is not None and progress.finished.stopped:
        print("resume with: napari-pgps train --out RUN_DIR --resume", flush=True)
        return 130
    return 0


@contextlib.contextmanager
def _ctrl_c_stops(control) -> Iterator[None]:
    """Within the block the first Ctrl-C asks ``control`` (a :class:`napari_pgps.engine.TrainingControl`) to stop
    after the current step; the next one aborts at once (``KeyboardInterrupt``). The previous handler is put back
    after the block."""
    previous = signal.signal(signal.SIGINT, lambda *_: _request_stop(control))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _request_stop(control) -> None:
    if control.stop_requested:
        raise KeyboardInterrupt
    print("\nstopping after this step (Ctrl-C again to abort at once)...", file=sys.stderr, flush=True)
    control.stop()
