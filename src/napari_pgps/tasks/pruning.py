"""The two ways to get a small network, as event generators for the command line and the Prune widget.

- :func:`prune_trained_model`: structured channel pruning of a trained model
  (Torch-Pruning), then a short fine-tune on the same training cases;
- :func:`train_progressively_pruned`: PSP-Seg, a PRM network pruned during
  training, and with ``pruning.retrain`` its final architecture trained again
  from fresh weights (the pruning run is then kept in ``PRUNING_RUN`` inside
  the output folder).

Both end with a :class:`PruningReport`: parameters, FLOPs and peak memory of
one forward pass at the final patch size, time to segment one validation
volume, and mean Dice on the validation cases, before and after; the report
is also written to ``pruning_report.json`` and ``pruning_report.md`` in the
run folder.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from ..config import RunConfig
from ..data.preprocessing import PreprocessingPlan, preprocess_image
from ..engine import SegmentationModel, TrainingControl, load_model
from ..errors import InputError
from ..events import ChannelPruningStep, Finished, PruningReport
from ..files import write_text_atomically
from ..models import ARCHITECTURES, architecture, build_network, count_parameters
from ..models.architectures import default_architecture
from ..models.prm import initial_branches
from ..pruning.channels import prune_channels
from .evaluation import evaluate_model, labelled_cases
from .pruning_report import ModelProfile, format_table, profile_network
from .training import train

REPORT_JSON = "pruning_report.json"
REPORT_MARKDOWN = "pruning_report.md"
PRUNING_RUN = "pruning-run"
"""With retraining: the folder, inside the output run, of the run that pruned the network."""
FINE_TUNE_SHARE = 0.5
"""Default fine-tune length as a share of the source run's epochs (half: 12 of 25 recovered Dice to within 1.01 points on the hippocampus, docs/benchmarks.md section 6)."""


def measure_model(model: SegmentationModel, data: Optional[str | Path], repeats: int = 3) -> ModelProfile:
    """Profile a model at its training patch; with ``data``, segment time and Dice on its validation cases."""
    image = None
    cases = labelled_cases(model, data, "validation") if data is not None else []
    if cases:
        image, _ = preprocess_image(cases[0].image, PreprocessingPlan.of(model.config))
    profile = profile_network(model.network, model.patch_size, model.device, image, repeats)
    if cases:
        profile.mean_dice = evaluate_model(model, data, split="validation")["mean_dice"]
    model.network.eval()
    return profile


def prune_trained_model(
    model: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    ratio: float = 0.5,
    steps: int = 5,
    fine_tune_epochs: Optional[int] = None,
    device: str = "auto",
    control: Optional[TrainingControl] = None,
) -> Iterator[Any]:
    """Channel-prune a trained model, fine-tune it into ``out`` and report before/after.

    Yields ChannelPruningStep (one per iterative step), the fine-tune's
    training events, then PruningReport. The source run is not modified.
    """
    if not 0.0 < ratio < 1.0:
        raise InputError(f"pruning ratio {ratio} must be between 0 and 1 (0.5 removes half of every layer's channels).")
    if steps < 1:
        raise InputError("pruning needs at least 1 iterative step.")
    out = _new_folder(out)
    control = control or TrainingControl()
    source = load_model(model, device)
    if not architecture(source.config.model).channel_prunable:
        prunable = ", ".join(name for name, spec in ARCHITECTURES.items() if spec.channel_prunable)
        raise InputError(f"channel pruning supports {prunable} networks, not {source.config.model.architecture}.")
    before = measure_model(source, data)

    network = source.network.train()
    example = torch.zeros(1, source.config.model.in_channels, *source.patch_size, device=source.device)
    for step in prune_channels(network, example, ratio, steps):
        yield ChannelPruningStep(step, steps, count_parameters(network))
        if control.stop_requested:
            yield Finished(stopped=True, epochs_completed=0, steps=0, training_seconds=0.0, final_mean_dice=None, checkpoint=None)
            return

    config = copy.deepcopy(source.config)
    config.model.channels_pruned = True
    config.data.path = str(data)
    config.training.device = device
    config.training.epochs = fine_tune_epochs or max(1, round(FINE_TUNE_SHARE * source.config.training.epochs))
    weights = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    finished = yield from _train_until_finished(config, out, control, weights)
    if finished.stopped:
        return
    after = measure_model(load_model(out, device), data)
    yield _report(out, "trained model", before, after)


def train_progressively_pruned(
    config: RunConfig,
    out: str | Path,
    *,
    baseline: Optional[str | Path] = None,
    control: Optional[TrainingControl] = None,
) -> Iterator[Any]:
    """Train a PRM network with progressive pruning into ``out``, then report it against ``baseline``.

    ``baseline`` is a trained run to compare with (e.g. the default network);
    without it the report compares with the unpruned starting network (no Dice).
    With ``config.pruning.retrain`` the pruning run goes to ``out/PRUNING_RUN``
    and ``out`` holds its final architecture (the unmasked branches) trained
    again from fresh weights with the same settings and epochs, and no
    pruning; the report is about that retrained model. Yields both trainings'
    events, then PruningReport.
    """
    out = _new_folder(out)
    config = copy.deepcopy(config)
    config.pruning.enabled = True
    config.model.architecture = default_architecture(config)
    control = control or TrainingControl()
    pruning_run = out / PRUNING_RUN if config.pruning.retrain else out
    finished = yield from _train_until_finished(config, pruning_run, control, None)
    if finished.stopped:
        return
    pruned = load_model(pruning_run, config.training.device)
    if config.pruning.retrain:
        finished = yield from _train_until_finished(retraining_config(pruned), out, control, None)
        if finished.stopped:
            return
        pruned = load_model(out, config.training.device)
    data = config.data.path
    if baseline is not None:
        before_name, before = "baseline", measure_model(load_model(baseline, config.training.device), data)
    else:
        start = copy.deepcopy(pruned.config.model)
        start.prm_branches = initial_branches(start.prm_variant, len(start.channels))
        unpruned = build_network(start).to(pruned.device)
        before_name, before = "unpruned start", profile_network(unpruned, pruned.patch_size, pruned.device)
    yield _report(out, before_name, before, measure_model(pruned, data))


def retraining_config(pruned: SegmentationModel) -> RunConfig:
    """The pruned run's resolved configuration for training its final architecture from scratch.

    The architecture is the network's unmasked branches (a mask still pending
    when the run ended stays out, as its branches did); pruning is off; the
    decoupling loss, data, split settings, optimiser and epochs are the run's.
    """
    config = copy.deepcopy(pruned.config)
    config.model.prm_branches = pruned.network.unmasked_kernels()
    config.pruning.enabled = False
    config.training.init_from = None
    return config


def _new_folder(out: str | Path) -> Path:
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out}: the output run folder exists and is not empty; choose a new folder.")
    return out


def _train_until_finished(config, out, control, weights) -> Iterator[Any]:
    finished = None
    for event in train(config, out, control=control, initial_weights=weights):
        if isinstance(event, Finished):
            finished = event
        yield event
    return finished


def _report(out: Path, before_name: str, before: ModelProfile, after: ModelProfile) -> PruningReport:
    table = format_table({before_name: before, "pruned": after})
    write_text_atomically(out / REPORT_MARKDOWN, table + "\n")
    path = out / REPORT_JSON
    write_text_atomically(path, json.dumps({"before_name": before_name, "before": before.to_dict(), "after": after.to_dict()}, indent=2))
    return PruningReport(before_name, before.to_dict(), after.to_dict(), table, str(path))
