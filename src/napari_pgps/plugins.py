"""Training-loop plug-ins: how a method that changes training joins the loop without the loop knowing it.

The engine's loop (:func:`napari_pgps.engine.train`) calls every plug-in it
is given at fixed points, in the order the plug-ins were given:

1. ``start(run)`` once the network, optimiser and sampler exist (also when resuming);
2. ``load_state_dict(state)`` when resuming, with what ``state_dict()`` returned when the checkpoint was written;
3. for each epoch:

   - ``epoch_start(run, epoch)`` before its first step; the events it yields are logged and yielded by the loop;
     its time counts as training time,
   - for each step ``forward(run, images)`` (the first plug-in that returns a tensor replaces the network's
     forward pass) and ``loss_terms(run, images, labels)`` (terms added to the segmentation loss),
   - ``epoch_end(run, epoch, losses)`` after its last step, with the epoch's mean losses;

4. ``state_dict()`` at every checkpoint (saved under the plug-in's ``name``).

PDL (:mod:`napari_pgps.curriculum.pdl`) and PSP-Seg
(:mod:`napari_pgps.pruning.psp_seg`) are plug-ins; a new curriculum or
pruning method is one more module with one more subclass.
"""

from __future__ import annotations

from typing import Any, ClassVar, Iterable, Optional, Protocol, Sequence

import numpy as np
import torch

from .config import RunConfig
from .events import Event


class TrainingRun(Protocol):
    """What a plug-in sees of the run it is plugged into."""

    config: RunConfig
    """The resolved configuration; a plug-in may update the fields its method owns (e.g. ``model.prm_branches``)."""
    network: torch.nn.Module
    """The network being trained (never the DDP wrapper)."""
    optimizer: torch.optim.Optimizer
    device: torch.device
    sampler: Any
    """The run's :class:`napari_pgps.data.sampler.PatchSampler` over the training cases."""
    training_images: Sequence[np.ndarray]
    """The preprocessed training images (C, Z, Y, X), in the sampler's case order (each read when indexed)."""
    training_names: list[str]
    """Case names in the same order."""
    final_batch: int
    """The batch size at the final patch."""
    distributed: bool
    """Trained by several processes (torchrun)."""


class TrainingPlugin:
    """Base class of training-loop plug-ins: every hook does nothing until overridden."""

    name: ClassVar[str] = "plugin"
    """Key of the plug-in's state in checkpoints; also what :func:`napari_pgps.config.training_methods` names."""

    def start(self, run: TrainingRun) -> None:
        """The run is set up; check it and prepare (decide here whether the configuration asks for this method)."""

    def notes(self, run: TrainingRun) -> Iterable[str]:
        """What the user should know before the run starts (shown with its start), e.g. that this run is too short
        for the method to act."""
        return ()

    def epoch_start(self, run: TrainingRun, epoch: int) -> Iterable[Event]:
        """Before epoch ``epoch`` (0-based); yields events to report."""
        return ()

    def forward(self, run: TrainingRun, images: torch.Tensor) -> Optional[torch.Tensor]:
        """The training forward pass of images (B, C, Z, Y, X), or ``None`` to leave it to the network."""
        return None

    def loss_terms(self, run: TrainingRun, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted scalar terms to add to this step's loss; images and labels are (B, C, Z, Y, X) / (B, 1, Z, Y, X)."""
        return {}

    def epoch_end(self, run: TrainingRun, epoch: int, losses: dict[str, float]) -> None:
        """After epoch ``epoch``; ``losses`` holds its mean ``"segmentation"`` loss."""

    def state_dict(self) -> dict[str, Any]:
        """What to save in checkpoints (plain numbers, strings, lists, dicts and tensors)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
