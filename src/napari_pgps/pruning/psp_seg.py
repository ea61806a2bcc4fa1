"""PSP-Seg as a training-loop plug-in: the decoupling loss and progressive pruning of a PRM network.

With a network whose registry entry is ``branch_prunable`` (the PRM network
of :mod:`napari_pgps.models.prm`), every step adds the functional
decoupling loss (:mod:`.decoupling`, weight ``pruning.decoupling_weight``),
computed from the features of the step's own forward pass. With
``pruning.enabled`` the :class:`~.progressive.ProgressivePruner` judges and
places masks at epoch starts (its calibration batches are crops at the
final patch and batch size) and hears each epoch's mean losses at its end:
"segmentation" (the trainer's), and the unweighted means "feature" (l1),
"foreground" (l2) and "decoupling" (l1 + l2), and "total" (segmentation +
weight x decoupling, the loss trained). Removed branches leave
``model.prm_branches`` in the run's configuration, so checkpoints rebuild the
pruned network.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Optional

import numpy as np
import torch

from ..config import PSP_SEG_METHOD
from ..errors import InputError
from ..events import PruningStep
from ..models import architecture
from ..plugins import TrainingPlugin, TrainingRun
from .decoupling import decoupling_terms
from .progressive import ProgressivePruner


class PSPSeg(TrainingPlugin):
    """Decoupling loss for a PRM network, and progressive pruning of its branches when ``pruning.enabled``."""

    name = PSP_SEG_METHOD

    def __init__(self) -> None:
        self.decoupling_weight = 0.0
        self.pruner: Optional[ProgressivePruner] = None
        self._features: Optional[tuple[list[torch.Tensor], list[torch.Tensor]]] = None
        self._decoupling: list[tuple[float, float]] = []  # (l1, l2) of each step of the epoch

    def start(self, run: TrainingRun) -> None:
        pruning = run.config.pruning  # resolve_config has checked that pruning comes with a branch-prunable network
        self.decoupling_weight = pruning.decoupling_weight if architecture(run.config.model).branch_prunable else 0.0
        if pruning.enabled:
            self.pruner = ProgressivePruner(run.network, pruning, run.config.training.epochs)
        if run.distributed and (self.pruner is not None or self.decoupling_weight):
            raise InputError("progressive pruning and the PRM network train in one process only; start without torchrun.")

    def notes(self, run: TrainingRun) -> list[str]:
        note = self.pruner.short_run_note() if self.pruner is not None and run.epoch == 0 else None
        return [note] if note else []

    def epoch_start(self, run: TrainingRun, epoch: int) -> Iterator[PruningStep]:
        if self.pruner is None:
            return
        actions = self.pruner.start_epoch(epoch, lambda: _calibration_batches(run), run.optimizer)
        if any(a.action == "removed" for a in actions):
            run.config.model.prm_branches = run.network.branch_kernels()
        for action in actions:
            yield PruningStep(epoch=epoch, **dataclasses.asdict(action))

    def forward(self, run: TrainingRun, images: torch.Tensor) -> Optional[torch.Tensor]:
        if not self.decoupling_weight:
            return None
        output, encoded, decoded = run.network.forward_with_features(images)
        self._features = (encoded, decoded)
        return output

    def loss_terms(self, run: TrainingRun, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.decoupling_weight:
            return {}
        encoded, decoded = self._features
        self._features = None
        feature, foreground = decoupling_terms(run.network, images, labels, encoded, decoded)
        self._decoupling.append((float(feature.detach()), float(foreground.detach())))
        return {"decoupling": self.decoupling_weight * (feature + foreground)}

    def epoch_end(self, run: TrainingRun, epoch: int, losses: dict[str, float]) -> None:
        losses = {**losses, "total": losses["segmentation"]}
        if self._decoupling:
            feature, foreground = (float(v) for v in np.mean(self._decoupling, axis=0))
            losses.update(feature=feature, foreground=foreground, decoupling=feature + foreground,
                          total=losses["segmentation"] + self.decoupling_weight * (feature + foreground))
            self._decoupling = []
        if self.pruner is not None:
            self.pruner.end_epoch(epoch, losses)

    def state_dict(self) -> dict[str, Any]:
        return {"pruner": self.pruner.state_dict()} if self.pruner is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.pruner is not None and state.get("pruner"):
            self.pruner.load_state_dict(state["pruner"])


def _calibration_batches(run: TrainingRun) -> Iterator[torch.Tensor]:
    """Crops at the final patch and batch size for scoring the PRM branches: (B, C, Z, Y, X)."""
    for _ in range(run.config.pruning.calibration_batches):
        batch = run.sampler.sample(run.config.model.patch_size, run.final_batch, 1)
        yield torch.from_numpy(batch.images).to(run.device)
