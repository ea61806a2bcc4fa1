"""napari-pgps against nnU-Net v2 at equal wall-clock training budgets: same machine, same training cases, same
held-out cases, every model's predictions scored by napari-pgps's own folder scorer.

    .venv/bin/python benchmarks/nnunet_peer.py --data ../shared/data/Task04_Hippocampus --out runs/nnunet-peer \\
        --budget-minutes 15 [--checkpoints-at 0.33,0.67,1.0] [--schedules constant,pgps-efficiency,pgps-performance] \\
        [--split-from RUN] [--seed 0] [--max-cases N] [--tools nnunet,napari-pgps] [--venv /tmp/nnunet-venv]

    # a smoke test of every stage (a few minutes' training; timings from it mean nothing)
    .venv/bin/python benchmarks/nnunet_peer.py --data ../shared/data/Task04_Hippocampus --out /tmp/peer-smoke \\
        --budget-minutes 2 --checkpoints-at 1.0 --schedules constant --max-cases 20

Run it with the project's own ``.venv/bin/python`` (napari-pgps installed there). nnU-Net v2 lives in a
separate virtual environment (``--venv``, created when missing) and is only called through that
environment's commands and Python; nothing of it enters this repository.

Stages, in order (each one's commands and logs land in ``--out``; a stage whose results are already there
is reused, so a rerun after a failure goes on where it stopped):

1. **nnU-Net's environment**: ``python -m venv VENV``, ``VENV/bin/pip install -c constraints torch==2.13.0``
   (the machine's CPU wheel; the constraints file keeps pip from pulling a CUDA torch), then ``VENV/bin/pip
   install -c constraints nnunetv2==2.8.1`` (the newest release that installs when that one does not). That
   torchvision's compiled operators do not load with the CPU torch, and nnU-Net's trainer lookup by name
   imports every trainer module, ``primus_trainers.py`` among them, which imports timm, which imports
   torchvision (docs/platform.md). So nothing here looks a trainer up by name: a small driver, generated into
   ``OUT/nnunet/driver/``, imports ``nnUNetTrainer`` from its module, subclasses it and calls
   ``run_training`` itself; for prediction it hands nnU-Net's predictor that class instead of the lookup.
   site-packages is not edited.
2. **The raw dataset**: ``--data`` (Decathlon layout, or nnU-Net v2 raw layout) becomes
   ``OUT/nnunet/raw/DatasetNNN_Name`` (``CASE_0000.nii.gz`` images and ``CASE.nii.gz`` labels, symlinks to the
   originals; 4D multi-channel Decathlon images split per channel), with a ``dataset.json`` holding
   ``channel_names``, ``labels`` (name -> value), ``numTraining`` and ``file_ending``; then
   ``nnUNetv2_plan_and_preprocess -d NNN -c 3d_fullres --verify_dataset_integrity`` with the default planner.
3. **The split**: napari-pgps's (``--split-from RUN`` reads ``RUN/splits.json``; otherwise it is computed as
   ``napari-pgps train`` does: ``split_cases`` with validation fraction 0.2 and ``--seed``), written as
   nnU-Net's ``splits_final.json`` with fold 0 = that split, so nnU-Net trains fold 0 on exactly
   napari-pgps's training cases. Every napari-pgps run's own ``splits.json`` is checked against it.
4. **nnU-Net training** (3d_fullres, its default trainer: its network, batch size, augmentation, loss, SGD
   with poly decay, on ``-device cpu`` as ``nnUNetv2_train`` sets it up: all cores as torch threads, its
   default data-augmentation processes). The driver's trainer first times a few iterations (2 warm-up, then
   ``--calibration-iterations``; the weights are put back and the optimiser made anew afterwards, so they
   train nothing), then sets ``num_iterations_per_epoch`` (5 to 25, about 10 epochs) and ``num_epochs`` so
   the iterations fit ``--budget-minutes``; the poly learning rate decays over those epochs. After every epoch
   the epochs left are counted again at the run's own pace so far (the load may change; the poly decay is
   stretched or shortened to match: logged as ``replan`` in ``budget_log.jsonl``). Its per-epoch
   validation runs ``--nnunet-val-iterations`` batches (default 2). Training time is the sum of the training
   iterations' wall times (waiting for batches included; nnU-Net's per-epoch validation, checkpoint writing
   and start-up excluded, as napari-pgps's training time excludes its validation); should the machine slow
   down, training stops when that sum reaches the budget. A checkpoint is written when it crosses each
   ``--checkpoints-at`` fraction of the budget (``checkpoint_budgetNNN.pth``; fractions the run did not reach
   are written at its end, with the time actually trained).
5. **nnU-Net prediction** of the held-out cases with each of those checkpoints (nnU-Net's predictor: sliding
   window, step 0.5, Gaussian weighting, on the CPU; mirroring test-time augmentation off, to keep it cheap:
   recorded as ``use_mirroring: false``), ``CASE.nii.gz`` per case in ``OUT/predictions/nnunet_budgetNNN``.
6. **napari-pgps training** for each of ``--schedules``: ``napari-pgps train --data DIR --out RUN --schedule S
   --time-budget M --seed SEED --device cpu``: napari-pgps plans its own run to the budget (its step cost at
   every stage size measured, validations included in the budget) and otherwise keeps its CPU defaults.
   Dice against time comes from its validations (``metrics.jsonl``: step, training seconds, mean Dice on the
   run's validation cases); the final model segments the held-out images with ``napari-pgps segment --model RUN
   --input OUT/heldout/images --output OUT/predictions/napari-pgps_S``.
7. **Scoring**: every prediction folder by ``napari_pgps.tasks.evaluation.evaluate_folder`` against
   ``OUT/heldout/data``, a Decathlon-layout folder of symlinks to the held-out cases' original files (Dice,
   HD95, surface Dice at 1 mm, precision, recall).
8. **Output** in ``--out``: ``results.json`` (every measurement, the tools' versions, the machine, the
   budgets, the seeds, the commands), ``report.md`` (the table and the exact commands) and
   ``dice_vs_time.png`` (held-out Dice against training time, one line per tool / schedule).

``--max-cases N`` predicts and scores only the first N held-out cases (sorted by name); training always uses
the whole training split, and napari-pgps's in-training validations always cover its whole validation split.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

DEFAULT_VENV = "/tmp/nnunet-venv"
NNUNET_VERSION = "2.8.1"
TORCH_VERSION = "2.13.0"
CONFIGURATION = "3d_fullres"
PLANS = "nnUNetPlans"
TRAINER = "nnUNetTrainerBudget"
FOLD = 0
DRIVER_NAME = "nnunet_budget_driver.py"
SETTINGS_FILE = "settings.json"
DEFAULT_SCHEDULES = "constant,pgps-efficiency,pgps-performance"
VALIDATION_FRACTION = 0.2
"""napari-pgps's held-out share (``data.validation_fraction``)."""


class PeerError(RuntimeError):
    """A stage failed; the message says which and where its log is."""


# -- the nnU-Net driver, written to OUT/nnunet/driver at run time ------------------------------------------------
DRIVER_SOURCE = '''"""Written by napari-pgps benchmarks/nnunet_peer.py; run with nnU-Net's own virtual environment.

nnU-Net v2's default trainer fitted to a wall-clock budget, and prediction with it. The trainer class is
imported from its module and subclassed here (not looked up by name, which imports every trainer module
and with it torchvision, whose operators do not load with the CPU torch).

    python nnunet_budget_driver.py train --dataset DatasetNNN_Name --budget-seconds S --fractions 0.33,1.0 \\\\
        [--calibration-iterations 5] [--iterations-per-epoch N] [--val-iterations 2]
    python nnunet_budget_driver.py predict --model-folder DIR --checkpoint checkpoint_budget100.pth \\\\
        --input DIR --output DIR [--processes 2]
"""

import argparse
import copy
import json
import math
import os
import statistics
import time

import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

WARMUP_ITERATIONS = 2


def checkpoint_name(fraction):
    """checkpoint_budget033.pth for 0.33 of the budget."""
    return f"checkpoint_budget{int(round(fraction * 100)):03d}.pth"


class nnUNetTrainerBudget(nnUNetTrainer):
    """nnUNetTrainer with its epochs and iterations per epoch set from a wall-clock budget.

    Everything else (network, batch size, augmentation, loss, optimiser, poly learning rate) is the parent's.
    """

    budget_seconds = 60.0
    fractions = (1.0,)
    calibration_iterations = 5
    fixed_iterations_per_epoch = None
    val_iterations = 2
    log_path = None

    def log_record(self, **record):
        """Append one JSON line to the budget log and print it."""
        record["time"] = time.time()
        print("BUDGET", json.dumps(record), flush=True)
        if self.log_path:
            with open(self.log_path, "a") as handle:
                handle.write(json.dumps(record) + "\\n")

    def calibrate(self):
        """Seconds per training iteration, timed on throwaway iterations (the weights are put back)."""
        weights = copy.deepcopy(self.network.state_dict())
        self.network.train()
        times = []
        for i in range(WARMUP_ITERATIONS + self.calibration_iterations):
            start = time.perf_counter()
            self.train_step(next(self.dataloader_train))
            if i >= WARMUP_ITERATIONS:
                times.append(time.perf_counter() - start)
        self.network.load_state_dict(weights)
        return times

    def plan_budget(self, seconds_per_iteration):
        """Iterations per epoch and epochs that fit the budget.

        The iterations per epoch are 5 to 25 (fewer only when the budget holds fewer), chosen to leave few of
        the budget's iterations unused and to give about 10 epochs (one unused iteration weighs as much as
        two epochs away from 10).
        """
        total = max(1, int(self.budget_seconds // seconds_per_iteration))
        if self.fixed_iterations_per_epoch:
            per_epoch = min(self.fixed_iterations_per_epoch, total)
            return per_epoch, total // per_epoch
        candidates = range(min(5, total), min(25, total) + 1)
        per_epoch = min(candidates, key=lambda p: total - (total // p) * p + 0.5 * abs(total // p - 10))
        return per_epoch, total // per_epoch

    def replan(self, trained, iterations):
        """After an epoch: the epochs that still fit the budget at this run's pace so far, rounded to the nearest
        (a last epoch that would overrun is cut at the budget).

        The calibration is a few iterations on a machine whose load may change; the poly learning rate is
        stretched or shortened to the new number of epochs.
        """
        pace = trained / max(iterations, 1)
        left = (self.budget_seconds - trained) / pace / self.num_iterations_per_epoch
        epochs = self.current_epoch + max(0, int(round(left)))
        if epochs != self.num_epochs:
            self.log_record(event="replan", after_epoch=self.current_epoch, seconds_per_iteration=pace,
                            epochs_before=self.num_epochs, epochs=epochs)
            self.num_epochs = epochs
            if hasattr(self.lr_scheduler, "max_steps"):
                self.lr_scheduler.max_steps = epochs

    def save_budget_checkpoint(self, fraction, trained, iterations, wall_start):
        """Write the checkpoint of one budget fraction and log where in the run it was taken."""
        name = checkpoint_name(fraction)
        self.save_checkpoint(join(self.output_folder, name))
        self.log_record(event="checkpoint", fraction=fraction, file=name, training_seconds=trained,
                        iterations=iterations, epoch=self.current_epoch,
                        wall_seconds=time.perf_counter() - wall_start)

    def run_training(self):
        """nnU-Net's training loop, timed per iteration, with the budget's checkpoints and stop."""
        wall_start = time.perf_counter()
        self.on_train_start()
        self.log_record(event="started", seconds=time.perf_counter() - wall_start, batch_size=self.batch_size,
                        patch_size=list(self.configuration_manager.patch_size),
                        da_processes=get_allowed_n_proc_DA(), torch_threads=torch.get_num_threads())
        calibration_start = time.perf_counter()
        times = self.calibrate()
        seconds_per_iteration = statistics.median(times)
        per_epoch, epochs = self.plan_budget(seconds_per_iteration)
        self.num_iterations_per_epoch = per_epoch
        self.num_epochs = epochs
        self.num_val_iterations_per_epoch = self.val_iterations
        self.optimizer, self.lr_scheduler = self.configure_optimizers()
        self.log_record(event="plan", calibration_times=times, seconds_per_iteration=seconds_per_iteration,
                        calibration_seconds=time.perf_counter() - calibration_start,
                        warmup_iterations=WARMUP_ITERATIONS, iterations_per_epoch=per_epoch, epochs=epochs,
                        val_iterations=self.val_iterations, budget_seconds=self.budget_seconds)
        pending = sorted(self.fractions)
        trained, iterations, stopped = 0.0, 0, False
        while self.current_epoch < self.num_epochs:
            epoch = self.current_epoch
            self.on_epoch_start()
            self.on_train_epoch_start()
            outputs = []
            for _ in range(self.num_iterations_per_epoch):
                start = time.perf_counter()
                outputs.append(self.train_step(next(self.dataloader_train)))
                trained += time.perf_counter() - start
                iterations += 1
                while pending and trained >= pending[0] * self.budget_seconds:
                    self.save_budget_checkpoint(pending.pop(0), trained, iterations, wall_start)
                if trained >= self.budget_seconds:
                    stopped = True
                    break
            self.on_train_epoch_end(outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                val_outputs = [self.validation_step(next(self.dataloader_val))
                               for _ in range(self.num_val_iterations_per_epoch)]
                self.on_validation_epoch_end(val_outputs)
            self.on_epoch_end()
            self.log_record(event="epoch", epoch=epoch, training_seconds=trained, iterations=iterations,
                            train_loss=float(self.logger.get_value("train_losses", step=-1)),
                            pseudo_dice=[float(v) for v in self.logger.get_value("dice_per_class_or_region", step=-1)])
            if stopped:
                break
            self.replan(trained, iterations)
        for fraction in pending:
            self.save_budget_checkpoint(fraction, trained, iterations, wall_start)
        self.on_train_end()
        self.log_record(event="end", training_seconds=trained, iterations=iterations,
                        epochs_completed=self.current_epoch, stopped_at_budget=stopped,
                        wall_seconds=time.perf_counter() - wall_start)


def train(args):
    """Train fold 0 of 3d_fullres within the budget, as nnUNetv2_train -device cpu would set it up."""
    torch.set_num_threads(os.cpu_count() or 1)
    nnUNetTrainerBudget.budget_seconds = args.budget_seconds
    nnUNetTrainerBudget.fractions = tuple(float(f) for f in args.fractions.split(","))
    nnUNetTrainerBudget.calibration_iterations = args.calibration_iterations
    nnUNetTrainerBudget.fixed_iterations_per_epoch = args.iterations_per_epoch
    nnUNetTrainerBudget.val_iterations = args.val_iterations
    base = join(nnUNet_preprocessed, args.dataset)
    plans = load_json(join(base, args.plans + ".json"))
    plans["continue_training"] = False
    trainer = nnUNetTrainerBudget(plans=plans, configuration=args.configuration, fold=args.fold,
                                  dataset_json=load_json(join(base, "dataset.json")), device=torch.device("cpu"))
    trainer.log_path = join(trainer.output_folder, "budget_log.jsonl")
    if os.path.exists(trainer.log_path):
        os.remove(trainer.log_path)
    trainer.run_training()


def predict(args):
    """Segment a folder of CASE_0000 images with one checkpoint; no mirroring."""
    torch.set_num_threads(os.cpu_count() or 1)
    import nnunetv2.inference.predict_from_raw_data as inference

    lookup = inference.recursive_find_trainer_class_by_name
    inference.recursive_find_trainer_class_by_name = (
        lambda name: nnUNetTrainerBudget if name == nnUNetTrainerBudget.__name__ else lookup(name))
    predictor = inference.nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                          perform_everything_on_device=False, device=torch.device("cpu"),
                                          verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(args.model_folder, use_folds=(args.fold,),
                                                   checkpoint_name=args.checkpoint)
    start = time.perf_counter()
    predictor.predict_from_files(args.input, args.output, save_probabilities=False, overwrite=True,
                                 num_processes_preprocessing=args.processes,
                                 num_processes_segmentation_export=args.processes)
    print("PREDICTED", json.dumps({"seconds": time.perf_counter() - start, "checkpoint": args.checkpoint}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train")
    p.add_argument("--dataset", required=True)
    p.add_argument("--budget-seconds", type=float, required=True)
    p.add_argument("--fractions", default="1.0")
    p.add_argument("--calibration-iterations", type=int, default=5)
    p.add_argument("--iterations-per-epoch", type=int, default=None)
    p.add_argument("--val-iterations", type=int, default=2)
    p.add_argument("--configuration", default="3d_fullres")
    p.add_argument("--plans", default="nnUNetPlans")
    p.add_argument("--fold", type=int, default=0)
    p.set_defaults(run=train)
    p = sub.add_parser("predict")
    p.add_argument("--model-folder", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--fold", type=int, default=0)
    p.set_defaults(run=predict)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
'''


# -- running and recording commands ------------------------------------------------------------------------------
@dataclass
class Recorder:
    """Runs the stages' commands, each with its log, and keeps them (with their wall times) in ``commands.json``,
    so that a rerun that reuses a stage still reports how it was made."""

    out: Path
    commands: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        path = self.out / "commands.json"
        if path.exists():
            self.commands = json.loads(path.read_text())

    def seconds(self, name: str) -> float | None:
        """Wall seconds of the last successful run of stage ``name``."""
        done = [c for c in self.commands if c["stage"] == name and c.get("exit") == 0]
        return done[-1]["seconds"] if done else None

    def run(self, name: str, command: Sequence[str], *, env: dict | None = None, cwd: Path | None = None
            ) -> tuple[float, str]:
        """Run ``command``, its output into ``logs/NAME.log``; returns (wall seconds, output).

        Raises:
            PeerError: the command failed (the message ends with its log's last lines).
        """
        log = self.out / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        shown = " ".join(_quote(str(c)) for c in command)
        extra = {k: v for k, v in (env or {}).items() if os.environ.get(k) != v}
        record = {"stage": name, "command": shown, "env": extra, "log": str(log), "at": time.strftime("%H:%M:%S")}
        self.commands.append(record)
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {shown}", flush=True)
        start = time.perf_counter()
        with open(log, "w") as handle:
            handle.write(f"$ {shown}\n")
            handle.flush()
            result = subprocess.run([str(c) for c in command], check=False, stdout=handle, stderr=subprocess.STDOUT,
                                    cwd=cwd, env={**os.environ, **(env or {})})
        seconds = time.perf_counter() - start
        record.update(seconds=seconds, exit=result.returncode)
        (self.out / "commands.json").write_text(json.dumps(self.commands, indent=1))
        output = log.read_text(errors="replace")
        if result.returncode != 0:
            tail = "\n".join(output.splitlines()[-25:])
            raise PeerError(f"{name} failed (exit {result.returncode}); log: {log}\n{tail}")
        return seconds, output


def _quote(text: str) -> str:
    return text if re.fullmatch(r"[\w@%+=:,./-]+", text) else "'" + text.replace("'", "'\\''") + "'"


def _link(target: Path, link: Path) -> None:
    """A symlink ``link`` -> ``target`` (absolute), replacing an old one."""
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target.resolve())


# -- 1. nnU-Net's environment ------------------------------------------------------------------------------------
def setup_nnunet_venv(venv: Path, version: str, recorder: Recorder) -> dict:
    """Create ``venv`` with the CPU torch and nnunetv2 (``version``, else the newest that installs).

    Returns:
        ``{"nnunetv2", "torch", "torchvision", "python", "pip_constraints"}`` of that environment.

    Raises:
        PeerError: pip failed, or the torch installed is not a CPU build.
    """
    python = venv / "bin" / "python"
    constraints = venv / "napari-pgps-constraints.txt"
    if not python.exists():
        recorder.run("venv-create", [sys.executable, "-m", "venv", str(venv)])
    constraints.write_text(f"torch=={TORCH_VERSION}\n")
    installed = _venv_versions(python)
    if installed.get("torch", "").split("+")[0] != TORCH_VERSION:
        recorder.run("venv-torch", [venv / "bin" / "pip", "install", "-c", constraints, f"torch=={TORCH_VERSION}"])
    if installed.get("nnunetv2") is None:
        try:
            recorder.run("venv-nnunetv2", [venv / "bin" / "pip", "install", "-c", constraints, f"nnunetv2=={version}"])
        except PeerError as exc:
            print(f"nnunetv2=={version} did not install ({str(exc).splitlines()[0]}); trying the newest release",
                  flush=True)
            recorder.run("venv-nnunetv2-newest", [venv / "bin" / "pip", "install", "-c", constraints, "nnunetv2"])
    installed = _venv_versions(python)
    if installed.get("nnunetv2") is None:
        raise PeerError(f"{venv}: nnunetv2 is not importable after installing it; see {recorder.out / 'logs'}.")
    if installed.get("torch_cuda"):
        raise PeerError(f"{venv}: torch {installed['torch']} is a CUDA build; this benchmark wants the CPU torch "
                        f"({TORCH_VERSION}). Remove the environment and rerun.")
    installed["pip_constraints"] = constraints.read_text().strip()
    return installed


def _venv_versions(python: Path) -> dict:
    """Versions of python, torch (and whether it is a CUDA build), torchvision and nnunetv2 in another venv."""
    code = ("import json, sys, importlib.metadata as m\n"
            "out = {'python': sys.version.split()[0]}\n"
            "for name in ('torch', 'torchvision', 'nnunetv2', 'dynamic-network-architectures', 'batchgeneratorsv2'):\n"
            "    try: out[name] = m.version(name)\n"
            "    except m.PackageNotFoundError: out[name] = None\n"
            "try:\n"
            "    import torch; out['torch_cuda'] = torch.version.cuda\n"
            "except Exception as e: out['torch_error'] = str(e)\n"
            "print(json.dumps(out))\n")
    if not python.exists():
        return {}
    result = subprocess.run([str(python), "-c", code], check=False, capture_output=True, text=True)
    return json.loads(result.stdout) if result.returncode == 0 else {}


def nnunet_env(root: Path) -> dict:
    """nnU-Net's three folders, all under ``root``."""
    return {"nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "preprocessed"),
            "nnUNet_results": str(root / "results")}


# -- 2. the raw dataset and nnU-Net's planning ------------------------------------------------------------------
def file_ending(path: Path) -> str:
    """``.nii.gz`` or ``.nii``."""
    for ending in (".nii.gz", ".nii"):
        if path.name.endswith(ending):
            return ending
    raise PeerError(f"{path}: only NIfTI datasets (.nii.gz, .nii) can be given to nnU-Net by this benchmark.")


def convert_dataset(data: Path, raw_root: Path, dataset_id: int) -> tuple[str, str]:
    """Write ``raw_root/DatasetNNN_Name`` from a napari-pgps dataset folder; returns (dataset name, file ending).

    Single-channel images and every label map are symlinked; a Decathlon 4D image with several channels is
    split into one file per channel.
    """
    import nibabel as nib
    import numpy as np

    from napari_pgps.data.dataset import case_files, read_dataset_info

    info = read_dataset_info(data)
    files = case_files(info)
    meta = json.loads((data / "dataset.json").read_text())
    title = re.sub(r"[^A-Za-z0-9]+", "", str(meta.get("name") or data.name)) or "Data"
    name = f"Dataset{dataset_id:03d}_{title}"
    ending = file_ending(files[0].labels)
    target = raw_root / name
    (target / "imagesTr").mkdir(parents=True, exist_ok=True)
    (target / "labelsTr").mkdir(parents=True, exist_ok=True)
    channels = len(info.channels)
    for case in files:
        if file_ending(case.labels) != ending or any(file_ending(p) != ending for p in case.images):
            raise PeerError(f"{case.labels}: the dataset mixes file endings; nnU-Net wants one ({ending}).")
        _link(case.labels, target / "labelsTr" / f"{case.name}{ending}")
        if len(case.images) == channels:
            for c, image in enumerate(case.images):
                _link(image, target / "imagesTr" / f"{case.name}_{c:04d}{ending}")
            continue
        volume = nib.load(str(case.images[0]))
        if volume.ndim != 4 or volume.shape[3] != channels:
            raise PeerError(f"{case.images[0]}: expected {channels} channels (dataset.json), found shape "
                            f"{volume.shape}.")
        array = np.asanyarray(volume.dataobj)
        for c in range(channels):
            out = target / "imagesTr" / f"{case.name}_{c:04d}{ending}"
            if not out.exists():
                nib.save(nib.Nifti1Image(array[..., c], volume.affine, volume.header), str(out))
    labels: dict[str, int] = {}
    for value, label in sorted(info.labels.items()):
        labels[label if label not in labels else f"{label}_{value}"] = int(value)
    dataset_json = {"name": title, "description": f"converted from {data.resolve()} by benchmarks/nnunet_peer.py",
                    "channel_names": {str(i): c for i, c in enumerate(info.channels)}, "labels": labels,
                    "numTraining": len(files), "file_ending": ending}
    (target / "dataset.json").write_text(json.dumps(dataset_json, indent=1))
    return name, ending


def plan_and_preprocess(venv: Path, dataset_id: int, dataset: str, env: dict, processes: int,
                        recorder: Recorder) -> dict:
    """nnU-Net's fingerprint, default plan and 3d_fullres preprocessing (skipped when already done).

    Returns:
        The 3d_fullres configuration of the plan (patch size, batch size, spacing, ...).
    """
    plans_file = Path(env["nnUNet_preprocessed"]) / dataset / f"{PLANS}.json"
    done = Path(env["nnUNet_preprocessed"]) / dataset / ".napari-pgps-preprocessed"
    if not done.exists():
        recorder.run("nnunet-plan-and-preprocess",
                     [venv / "bin" / "nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", CONFIGURATION,
                      "-np", str(processes), "-npfp", str(processes), "--verify_dataset_integrity", "--no_pbar"],
                     env=env)
        done.write_text("")
    plans = json.loads(plans_file.read_text())
    return plans["configurations"][CONFIGURATION]


# -- 3. the split and the held-out folders ------------------------------------------------------------------------
def napari_pgps_split(data: Path, seed: int, split_from: Path | None) -> dict:
    """napari-pgps's split: from ``split_from/splits.json``, else computed as ``napari-pgps train --seed`` does."""
    if split_from is not None:
        path = split_from / "splits.json" if split_from.is_dir() else split_from
        if not path.is_file():
            raise PeerError(f"{path}: not found; --split-from takes a napari-pgps run folder (with splits.json).")
        split = json.loads(path.read_text())
        return {"training": sorted(split["training"]), "validation": sorted(split["validation"]),
                "source": str(path)}
    from napari_pgps.data.dataset import case_files, read_dataset_info, split_cases

    names = [c.name for c in case_files(read_dataset_info(data))]
    training, validation = split_cases(names, VALIDATION_FRACTION, seed)
    return {"training": training, "validation": validation,
            "source": f"split_cases(validation_fraction={VALIDATION_FRACTION}, seed={seed})"}


def write_nnunet_split(split: dict, preprocessed: Path, raw: Path, ending: str) -> None:
    """nnU-Net's ``splits_final.json`` with fold 0 = the split (every case checked to exist)."""
    missing = [n for n in split["training"] + split["validation"] if not (raw / "labelsTr" / f"{n}{ending}").exists()]
    if missing:
        raise PeerError(f"the split names case(s) the dataset does not hold: {', '.join(missing[:5])}")
    (preprocessed / "splits_final.json").write_text(
        json.dumps([{"train": split["training"], "val": split["validation"]}], indent=1))


def write_heldout(data: Path, raw: Path, names: Sequence[str], ending: str, out: Path) -> tuple[Path, Path]:
    """The held-out cases as a Decathlon-layout folder of symlinks to the originals (for the scorer) and a folder
    of their ``CASE_0000`` images (for both tools' prediction); returns (data folder, images folder)."""
    from napari_pgps.data.dataset import case_files, read_dataset_info

    info = read_dataset_info(data)
    files = {c.name: c for c in case_files(info, names=names)}
    data_dir, images_dir = out / "data", out / "images"
    for folder in (data_dir / "imagesTr", data_dir / "labelsTr", images_dir):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    entries = []
    for name in names:
        case = files[name]
        _link(case.images[0], data_dir / "imagesTr" / f"{name}{ending}")
        _link(case.labels, data_dir / "labelsTr" / f"{name}{ending}")
        entries.append({"image": f"./imagesTr/{name}{ending}", "label": f"./labelsTr/{name}{ending}"})
        for image in sorted((raw / "imagesTr").glob(f"{name}_[0-9][0-9][0-9][0-9]{ending}")):
            _link(image, images_dir / image.name)
    meta = {"name": f"held-out cases of {data.resolve()}", "tensorImageSize": "3D",
            "modality": {str(i): c for i, c in enumerate(info.channels)},
            "labels": {str(v): n for v, n in sorted(info.labels.items())}, "numTraining": len(entries),
            "numTest": 0, "training": entries}
    (data_dir / "dataset.json").write_text(json.dumps(meta, indent=1))
    return data_dir, images_dir


# -- 4./5. nnU-Net training and prediction -------------------------------------------------------------------------
def nnunet_model_folder(env: dict, dataset: str) -> Path:
    return Path(env["nnUNet_results"]) / dataset / f"{TRAINER}__{PLANS}__{CONFIGURATION}"


def read_budget_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def train_nnunet(venv: Path, driver: Path, dataset: str, env: dict, budget_s: float, fractions: Sequence[float],
                 args: argparse.Namespace, recorder: Recorder) -> dict:
    """Train nnU-Net within the budget (reused when a finished run is there); returns its measurements."""
    fold_dir = nnunet_model_folder(env, dataset) / f"fold_{FOLD}"
    log = read_budget_log(fold_dir / "budget_log.jsonl")
    if not any(r["event"] == "end" for r in log):
        command = [venv / "bin" / "python", driver, "train", "--dataset", dataset, "--budget-seconds", f"{budget_s:g}",
                   "--fractions", ",".join(f"{f:g}" for f in fractions),
                   "--calibration-iterations", str(args.calibration_iterations),
                   "--val-iterations", str(args.nnunet_val_iterations)]
        if args.nnunet_iterations_per_epoch:
            command += ["--iterations-per-epoch", str(args.nnunet_iterations_per_epoch)]
        recorder.run("nnunet-train", command, env=env)
        log = read_budget_log(fold_dir / "budget_log.jsonl")
    wall = recorder.seconds("nnunet-train")
    events = {r["event"]: r for r in log}
    return {"process_wall_seconds": wall, "started": events.get("started"), "plan": events.get("plan"),
            "end": events.get("end"), "epochs": [r for r in log if r["event"] == "epoch"],
            "replans": [r for r in log if r["event"] == "replan"],
            "checkpoints": [r for r in log if r["event"] == "checkpoint"], "model_folder": str(fold_dir.parent)}


def predict_nnunet(venv: Path, driver: Path, env: dict, model_folder: Path, checkpoint: str, images: Path,
                   output: Path, expected: int, processes: int, recorder: Recorder) -> float | None:
    """Predict the held-out images with one checkpoint (skipped when every prediction is there)."""
    name = f"nnunet-predict-{Path(checkpoint).stem}"
    if not (output.is_dir() and len(list(output.glob("*.nii*"))) >= expected):
        output.mkdir(parents=True, exist_ok=True)
        recorder.run(name, [venv / "bin" / "python", driver, "predict", "--model-folder", model_folder,
                            "--checkpoint", checkpoint, "--input", images, "--output", output,
                            "--processes", str(processes)], env=env)
    return recorder.seconds(name)


# -- 6. napari-pgps training ---------------------------------------------------------------------------------------
def pgps_command() -> list[str]:
    """``napari-pgps`` of the running environment."""
    script = Path(sys.executable).parent / "napari-pgps"
    return [str(script)] if script.exists() else [sys.executable, "-m", "napari_pgps"]


def run_finished(run: Path) -> bool:
    from napari_pgps.engine import fold, read_events

    return (run / "metrics.jsonl").is_file() and fold(read_events(run)).finished is not None


def train_pgps(data: Path, run: Path, schedule: str, budget_minutes: float, seed: int, split: dict,
               recorder: Recorder) -> dict:
    """``napari-pgps train`` for one schedule (reused when finished); its validations and times."""
    from napari_pgps.engine import fold, read_events

    if not run_finished(run):
        if run.exists():
            raise PeerError(f"{run}: an unfinished napari-pgps run is there; remove it (or finish it with "
                            f"napari-pgps train --out {run} --resume) and rerun.")
        recorder.run(f"napari-pgps-train-{schedule}",
                     pgps_command() + ["train", "--data", data, "--out", run, "--schedule", schedule,
                                       "--time-budget", f"{budget_minutes:g}m", "--seed", str(seed), "--device",
                                       "cpu", "--quiet"])
    wall = recorder.seconds(f"napari-pgps-train-{schedule}")
    own = json.loads((run / "splits.json").read_text())
    if sorted(own["training"]) != split["training"] or sorted(own["validation"]) != split["validation"]:
        raise PeerError(f"{run}/splits.json differs from the split nnU-Net was given ({split['source']}); "
                        "pass the same --seed as the run of --split-from.")
    progress = fold(read_events(run))
    started = progress.started
    return {"process_wall_seconds": wall, "epochs": started.epochs if started else None,
            "expected_seconds": started.expected_seconds if started else None,
            "training_seconds": progress.training_seconds,
            "steps": len(progress.steps),
            "validations": [{"step": v.step, "training_seconds": v.training_seconds, "epoch": v.result.epoch,
                             "mean_dice": v.result.mean_dice} for v in progress.validations],
            "started": {"device": progress.started.device, "final_patch": list(progress.started.final_patch),
                        "iterations_per_epoch": progress.started.iterations_per_epoch,
                        "parameters": progress.started.parameters, "architecture": progress.started.architecture}
            if progress.started else None}


def segment_pgps(run: Path, images: Path, output: Path, expected: int, recorder: Recorder) -> float | None:
    """``napari-pgps segment`` of the held-out images with a run's final model (skipped when done)."""
    name = f"napari-pgps-segment-{run.name}"
    if not (output.is_dir() and len(list(output.glob("*.nii*"))) >= expected):
        output.mkdir(parents=True, exist_ok=True)
        recorder.run(name, pgps_command() + ["segment", "--model", run, "--input", images, "--output", output])
    return recorder.seconds(name)


# -- 7. scoring --------------------------------------------------------------------------------------------------------
def score(predictions: Path, heldout: Path) -> dict:
    """napari-pgps's folder scorer on one prediction folder: means and per-label values, without per-case rows."""
    from napari_pgps.tasks.evaluation import evaluate_folder

    report = evaluate_folder(predictions, heldout)
    return {"mean_dice": report["mean_dice"], "dice_per_label": report["dice_per_label"], "means": report["means"],
            "cases": len(report["cases"]), "folder": str(predictions)}


# -- 8. the machine, the report and the figure ----------------------------------------------------------------------
def machine() -> dict:
    """CPU model, cores, memory and load."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor()
    memory = None
    try:
        memory = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return {"cpu": model, "cores": os.cpu_count(), "memory_bytes": memory, "platform": platform.platform(),
            "load_average": list(os.getloadavg())}


def versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for name in ("napari-pgps", "torch", "monai", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    try:
        out["napari-pgps_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], check=False, capture_output=True,
                                                   text=True,
                                                   cwd=Path(__file__).parent).stdout.strip() or None
    except OSError:
        out["napari-pgps_commit"] = None
    return out


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _minutes(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds / 60:.1f} min"


def write_report(results: dict, path: Path) -> None:
    """``report.md``: the table, how each row was made, and the exact commands."""
    budget = results["budget_minutes"]
    split, cpu, tools = results["split"], results["machine"], results["versions"]
    load_start = ", ".join(f"{v:.2f}" for v in cpu["load_average"])
    load_end = ", ".join(f"{v:.2f}" for v in results["load_average_end"])
    constraints = tools["nnunet"].get("pip_constraints", f"torch=={TORCH_VERSION}")
    lines = [
        f"# napari-pgps against nnU-Net v2 at a {budget:g}-minute training budget", "",
        (f"Data: `{results['data']}`; {len(split['training'])} training cases, {len(split['validation'])} held-out "
         f"(split: {split['source']}); scored: {results['scored_cases']} held-out case(s) with napari-pgps's "
         "`evaluate_folder`."),
        f"Machine: {cpu['cpu']}, {cpu['cores']} cores; load average at start {load_start}, at end {load_end}.",
        (f"nnU-Net v2 {tools['nnunet'].get('nnunetv2')} (torch {tools['nnunet'].get('torch')}), napari-pgps "
         f"{tools['napari-pgps'].get('napari-pgps')} (torch {tools['napari-pgps'].get('torch')})."), "",
        ("| tool / schedule | budget | training time | process wall time | held-out mean Dice | HD95 (mm) "
         "| surface Dice (1 mm) | notes |"),
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        means = (row.get("score") or {}).get("means", {})
        lines.append(f"| {row['name']} | {row['budget_fraction'] * budget:g} min | {_minutes(row['training_seconds'])} "
                     f"| {_minutes(row.get('process_wall_seconds'))} | {_fmt(means.get('dice'))} "
                     f"| {_fmt(means.get('hd95'), 2)} | {_fmt(means.get('surface_dice'))} | {row.get('notes', '')} |")
    notes = [
        ("Training time: the summed wall time of the training iterations (waiting for batches included; validation, "
         "checkpoint writing and start-up excluded). Process wall time: the whole training command (nnU-Net: with "
         "its start-up, calibration and per-epoch validation; napari-pgps: with data preparation and its "
         "validations), from `commands.json` when a stage was reused from an earlier run."),
        ("nnU-Net: default nnUNetTrainer (3d_fullres plan, its network, batch, augmentation, SGD and poly learning "
         "rate) with epochs and iterations per epoch fitted to the budget; predictions without mirroring test-time "
         "augmentation. Rows at a fraction of the budget are checkpoints of the same run (its learning rate not yet "
         "decayed), not separate runs."),
        ("napari-pgps: `napari-pgps train --time-budget` (its own planner: the step cost at every stage size measured, "
         "validations counted inside the budget); segmented without test-time augmentation. The dashed lines of the "
         f"figure are its own validations during training (Dice on all {len(split['validation'])} validation "
         "cases), the squares the held-out scores above."),
        (f"nnU-Net's environment: `python -m venv {results['nnunet_venv']}`, then `pip install -c CONSTRAINTS "
         f"torch=={TORCH_VERSION}` and `pip install -c CONSTRAINTS nnunetv2=={results['nnunet_version_asked']}` "
         f"(CONSTRAINTS: `{constraints}`); trained and predicted through the generated driver "
         f"`nnunet/driver/{DRIVER_NAME}` (imports nnUNetTrainer from its module: no trainer lookup by name, which "
         "would import torchvision)."),
    ]
    lines += [""] + [f"- {note}" for note in notes] + [""]
    if results.get("nnunet"):
        plan = results["nnunet"]["training"].get("plan") or {}
        replans = results["nnunet"]["training"].get("replans", [])
        then = f", then {replans[-1]['epochs']} epochs at the run's own pace" if replans else ""
        calibration = len(plan.get("calibration_times", []))
        lines.append(f"nnU-Net seconds per iteration (calibration, median of {calibration}): "
                     f"{_fmt(plan.get('seconds_per_iteration'), 2)} s; planned {plan.get('epochs')} epochs x "
                     f"{plan.get('iterations_per_epoch')} iterations ({plan.get('val_iterations')} validation "
                     f"iterations per epoch){then}.")
    lines += ["", "## Commands", "", "```bash"]
    for command in (c for c in results["commands"] if c.get("exit") == 0):
        env = " ".join(f"{k}={_quote(v)}" for k, v in command["env"].items())
        lines.append(f"{env + ' ' if env else ''}{command['command']}")
    lines += ["```", ""]
    path.write_text("\n".join(lines))


def plot(results: dict, path: Path) -> None:
    """Held-out Dice against training time, one line per tool / schedule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    nnunet_rows = [r for r in results["rows"] if r["tool"] == "nnunet" and r.get("score")]
    if nnunet_rows:
        ax.plot([r["training_seconds"] / 60 for r in nnunet_rows], [r["score"]["mean_dice"] for r in nnunet_rows],
                "o-", label="nnU-Net v2 (checkpoints, held-out)")
    for schedule, run in (results.get("napari_pgps") or {}).get("runs", {}).items():
        points = run["training"]["validations"]
        line, = ax.plot([p["training_seconds"] / 60 for p in points], [p["mean_dice"] for p in points], ".--",
                        label=f"napari-pgps {schedule} (its validations)")
        final = next((r for r in results["rows"] if r["name"] == f"napari-pgps / {schedule}" and r.get("score")), None)
        if final:
            ax.plot([final["training_seconds"] / 60], [final["score"]["mean_dice"]], "s", color=line.get_color(),
                    label=f"napari-pgps {schedule} (final, held-out)")
    ax.axvline(results["budget_minutes"], color="grey", lw=0.8, ls=":")
    ax.set_xlabel("training wall time (min)")
    ax.set_ylabel("held-out mean Dice")
    ax.set_title(f"Dice against training time, {results['budget_minutes']:g}-minute budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- main -----------------------------------------------------------------------------------------------------------
def parse_fractions(text: str) -> list[float]:
    try:
        fractions = sorted({float(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise PeerError(f"--checkpoints-at {text!r}: expected fractions such as 0.33,0.67,1.0.") from None
    if not fractions or fractions[0] <= 0 or fractions[-1] > 1:
        raise PeerError(f"--checkpoints-at {text!r}: fractions must be in (0, 1].")
    return fractions


def check_settings(out: Path, settings: dict) -> None:
    """Refuse an ``--out`` that holds another comparison's stages."""
    path = out / SETTINGS_FILE
    if path.exists():
        old = json.loads(path.read_text())
        keys = ("data", "budget_minutes", "checkpoints_at", "seed", "split_from", "dataset_id")
        changed = [k for k in keys if old.get(k) != settings.get(k)]
        if changed:
            raise PeerError(f"{out} holds a comparison made with other {', '.join(changed)}; use a new --out.")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path, help="dataset folder (Decathlon or nnU-Net v2 raw layout)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (stages found there are reused)")
    parser.add_argument("--budget-minutes", type=float, default=15.0, help="training budget per model (default 15)")
    parser.add_argument("--checkpoints-at", default="0.33,0.67,1.0",
                        help="nnU-Net checkpoints, fractions of the budget (default 0.33,0.67,1.0)")
    parser.add_argument("--schedules", default=DEFAULT_SCHEDULES,
                        help=f"napari-pgps schedules (default {DEFAULT_SCHEDULES})")
    parser.add_argument("--split-from", type=Path, default=None,
                        help="a napari-pgps run folder whose splits.json to use")
    parser.add_argument("--seed", type=int, default=0, help="napari-pgps's seed (and split seed), default 0")
    parser.add_argument("--max-cases", type=int, default=None, help="predict and score only the first N held-out cases")
    parser.add_argument("--tools", default="nnunet,napari-pgps", help="which tools to run (default both)")
    parser.add_argument("--venv", type=Path, default=Path(DEFAULT_VENV), help=f"nnU-Net's environment ({DEFAULT_VENV})")
    parser.add_argument("--nnunet-version", default=NNUNET_VERSION,
                        help=f"nnunetv2 to install (default {NNUNET_VERSION})")
    parser.add_argument("--dataset-id", type=int, default=501, help="nnU-Net dataset id (default 501)")
    parser.add_argument("--calibration-iterations", type=int, default=5, help="timed nnU-Net iterations (default 5)")
    parser.add_argument("--nnunet-iterations-per-epoch", type=int, default=None,
                        help="fix nnU-Net's iterations per epoch (default: 5-25 from the budget)")
    parser.add_argument("--nnunet-val-iterations", type=int, default=2, help="nnU-Net validation batches per epoch")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                        help="processes for nnU-Net's preprocessing and prediction (default: the cores)")
    args = parser.parse_args()
    try:
        run_comparison(args)
    except PeerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def run_comparison(args: argparse.Namespace) -> None:
    """Every stage, then results.json, report.md and dice_vs_time.png in ``args.out``."""
    data, out = args.data.resolve(), args.out.resolve()
    if not (data / "dataset.json").is_file():
        raise PeerError(f"{data}: no dataset.json; --data takes a Decathlon or nnU-Net v2 raw dataset folder.")
    if args.budget_minutes <= 0:
        raise PeerError("--budget-minutes must be positive.")
    tools = {t.strip() for t in args.tools.split(",") if t.strip()}
    if not tools or tools - {"nnunet", "napari-pgps"}:
        raise PeerError(f"--tools {args.tools!r}: choose from nnunet, napari-pgps.")
    schedules = [s.strip() for s in args.schedules.split(",") if s.strip()]
    fractions = parse_fractions(args.checkpoints_at)
    budget_s = args.budget_minutes * 60
    settings = {"data": str(data), "budget_minutes": args.budget_minutes, "checkpoints_at": fractions,
                "seed": args.seed, "split_from": str(args.split_from) if args.split_from else None,
                "dataset_id": args.dataset_id}
    check_settings(out, settings)
    recorder = Recorder(out)
    results: dict = {**settings, "schedules": schedules, "max_cases": args.max_cases, "machine": machine(),
                     "nnunet_venv": str(args.venv.resolve()), "nnunet_version_asked": args.nnunet_version,
                     "versions": {"napari-pgps": versions()}, "rows": [],
                     "seeds": {"napari-pgps": args.seed, "split": args.seed if not args.split_from else "from run",
                               "nnunet": "unseeded (nnU-Net's default)"},
                     "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(f"machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, load "
          f"{results['machine']['load_average']}", flush=True)

    venv = args.venv.resolve()
    results["versions"]["nnunet"] = setup_nnunet_venv(venv, args.nnunet_version, recorder) if "nnunet" in tools \
        else _venv_versions(venv / "bin" / "python")
    root = out / "nnunet"
    env = nnunet_env(root)
    for folder in env.values():
        Path(folder).mkdir(parents=True, exist_ok=True)
    dataset, ending = convert_dataset(data, Path(env["nnUNet_raw"]), args.dataset_id)
    raw = Path(env["nnUNet_raw"]) / dataset
    split = napari_pgps_split(data, args.seed, args.split_from.resolve() if args.split_from else None)
    results["split"] = split
    heldout = split["validation"][: args.max_cases] if args.max_cases else split["validation"]
    results["scored_cases"] = len(heldout)
    heldout_data, heldout_images = write_heldout(data, raw, heldout, ending, out / "heldout")
    predictions = out / "predictions"

    if "nnunet" in tools:
        results["nnunet"] = {"plan_3d_fullres": plan_and_preprocess(venv, args.dataset_id, dataset, env,
                                                                    args.processes, recorder)}
        write_nnunet_split(split, Path(env["nnUNet_preprocessed"]) / dataset, raw, ending)
        driver = root / "driver" / DRIVER_NAME
        driver.parent.mkdir(parents=True, exist_ok=True)
        driver.write_text(DRIVER_SOURCE)
        training = train_nnunet(venv, driver, dataset, env, budget_s, fractions, args, recorder)
        results["nnunet"].update(training=training, prediction={"use_mirroring": False, "tile_step_size": 0.5,
                                                                "device": "cpu", "seconds": {}})
        print(f"nnU-Net: {json.dumps(training['plan'])}", flush=True)
        for checkpoint in training["checkpoints"]:
            name = f"nnunet_{Path(checkpoint['file']).stem.replace('checkpoint_', '')}"
            folder = predictions / name
            seconds = predict_nnunet(venv, driver, env, Path(training["model_folder"]), checkpoint["file"],
                                     heldout_images, folder, len(heldout), args.processes, recorder)
            results["nnunet"]["prediction"]["seconds"][checkpoint["file"]] = seconds
            final = checkpoint is training["checkpoints"][-1]
            results["rows"].append({
                "tool": "nnunet", "name": f"nnU-Net v2 / checkpoint at {checkpoint['fraction']:.0%} of the budget",
                "budget_fraction": checkpoint["fraction"], "training_seconds": checkpoint["training_seconds"],
                "process_wall_seconds": training["process_wall_seconds"] if final else None,
                "iterations": checkpoint["iterations"], "checkpoint": checkpoint["file"],
                "notes": f"{checkpoint['iterations']} iterations" + (
                    ", stopped at the budget" if final and (training["end"] or {}).get("stopped_at_budget") else ""),
                "score": score(folder, heldout_data)})

    if "napari-pgps" in tools:
        pgps_root = out / "napari-pgps"
        results["napari_pgps"] = {"runs": {}}
        for schedule in schedules:
            run = pgps_root / schedule
            training = train_pgps(data, run, schedule, args.budget_minutes, args.seed, split, recorder)
            folder = predictions / f"napari-pgps_{schedule}"
            seconds = segment_pgps(run, heldout_images, folder, len(heldout), recorder)
            results["napari_pgps"]["runs"][schedule] = {"training": training, "segment_seconds": seconds}
            results["rows"].append({
                "tool": "napari-pgps", "name": f"napari-pgps / {schedule}", "budget_fraction": 1.0,
                "training_seconds": training["training_seconds"],
                "process_wall_seconds": training["process_wall_seconds"],
                "notes": f"{training['epochs']} epochs x {training['started']['iterations_per_epoch']} steps, "
                         f"planned {training['expected_seconds']:.0f} s",
                "score": score(folder, heldout_data)})

    results["load_average_end"] = list(os.getloadavg())
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    results["commands"] = recorder.commands
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    write_report(results, out / "report.md")
    plot(results, out / "dice_vs_time.png")
    print((out / "report.md").read_text(), flush=True)


if __name__ == "__main__":
    sys.exit(main())
