"""PSP-Seg progressive pruning: mask the least useful PRM branches, keep the cut if the loss holds, then remove them.

The PSP-Seg plug-in (:mod:`.psp_seg`) calls :meth:`ProgressivePruner.end_epoch`
with each epoch's mean losses and :meth:`ProgressivePruner.start_epoch` before
each epoch:

1. A pending mask (from the previous check) is judged: if the lowest loss
   since masking is at least the lowest loss before it plus ``tolerance``,
   the branches are restored and ``prune_step`` halves; otherwise they are
   removed physically (their parameters leave the network and the optimiser).
2. While ``epoch < stop_fraction * epochs`` and no loss has set a new minimum
   for ``patience`` epochs, calibration scores every branch and the
   ``prune_step`` branches whose removal changes their PRM's output least are
   masked.

Calibration runs the network on a few batches; for each PRM with input x and
output y = act(x + sum_j b_j(x)), a branch's score is
sum ||y - act(x + sum_j b_j(x) - b_i(x))||^2 / sum ||y||^2 over the batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

import torch
import torch.nn.functional as F

from ..config import PruningConfig
from ..models import count_parameters
from ..models.prm import ParallelRedundantModule, PRMUNet

BranchId = tuple[int, int]
"""(PRM index in :meth:`PRMUNet.prms` order, branch index within the PRM)."""


@dataclass(frozen=True)
class PruningAction:
    """What one check did: ``action`` is "masked", "restored" or "removed"."""

    action: str
    branches: tuple[str, ...]
    parameters: int
    prune_step: int


@dataclass
class _Pending:
    branches: list[BranchId]
    loss_before: float
    loss_since: float = math.inf


@dataclass
class ProgressivePruner:
    """The pruning state of one run (saved in checkpoints through :meth:`state_dict`)."""

    network: PRMUNet
    config: PruningConfig
    epochs: int
    prune_step: int = 0
    best_losses: dict[str, float] = field(default_factory=dict)
    last_improvement: int = 0
    pending: Optional[_Pending] = None

    def __post_init__(self) -> None:
        if not self.prune_step:
            self.prune_step = max(1, self.config.prune_step)

    @property
    def patience(self) -> int:
        """Epochs without a new minimum before the next prune (10 per 1000 epochs unless set)."""
        if self.config.patience is not None:
            return self.config.patience
        return round(10 * self.epochs / 1000)

    @property
    def last_epoch(self) -> int:
        """Masks are placed only at epoch starts before this one."""
        return math.floor(self.config.stop_fraction * self.epochs)

    # -- the trainer's calls ------------------------------------------------------
    def end_epoch(self, epoch: int, losses: dict[str, float]) -> None:
        """Record an epoch's mean losses (e.g. {"segmentation": .., "decoupling": ..})."""
        improved = [name for name, value in losses.items() if value < self.best_losses.get(name, math.inf)]
        for name in improved:
            self.best_losses[name] = losses[name]
        if improved:
            self.last_improvement = epoch
        if self.pending is not None:
            self.pending.loss_since = min(self.pending.loss_since, losses["segmentation"])

    def start_epoch(
        self,
        epoch: int,
        calibration: Callable[[], Iterable[torch.Tensor]],
        optimizer: torch.optim.Optimizer,
    ) -> list[PruningAction]:
        """Judge the pending mask and maybe mask more branches; returns what was done.

        Args:
            calibration: yields input batches (B, C, Z, Y, X) on the network's device.
            optimizer: removed branches' parameters are dropped from it.
        """
        actions = []
        if self.pending is not None:
            actions.append(self._judge(optimizer))
        if (
            self.pending is None
            and 0 < epoch < self.last_epoch
            and epoch - 1 - self.last_improvement >= self.patience
            and self._removable()
        ):
            scores = branch_scores(self.network, calibration())
            chosen = choose_branches(scores, self.network, self.prune_step, self.config.min_branches)
            if chosen:
                self._mask(chosen)
                self.pending = _Pending(chosen, loss_before=self.best_losses.get("segmentation", math.inf))
                actions.append(self._action("masked", chosen))
        return actions

    # -- state --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        pending = None
        if self.pending is not None:
            pending = {
                "branches": [list(b) for b in self.pending.branches],
                "loss_before": self.pending.loss_before,
                "loss_since": self.pending.loss_since,
            }
        return {
            "prune_step": self.prune_step,
            "best_losses": dict(self.best_losses),
            "last_improvement": self.last_improvement,
            "pending": pending,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.prune_step = int(state["prune_step"])
        self.best_losses = {k: float(v) for k, v in state["best_losses"].items()}
        self.last_improvement = int(state["last_improvement"])
        pending = state.get("pending")
        self.pending = None
        if pending is not None:
            self.pending = _Pending([tuple(b) for b in pending["branches"]], float(pending["loss_before"]), float(pending["loss_since"]))

    # -- internals ----------------------------------------------------------------
    def _removable(self) -> bool:
        return any(len(m.branches) > self.config.min_branches for m in self.network.prms())

    def _mask(self, branches: list[BranchId]) -> None:
        for index, prm in enumerate(self.network.prms()):
            prm.set_mask([b for p, b in branches if p == index])

    def _judge(self, optimizer: torch.optim.Optimizer) -> PruningAction:
        pending, self.pending = self.pending, None
        if pending.loss_since >= pending.loss_before + self.config.tolerance:
            self._mask([])
            self.prune_step = max(1, self.prune_step // 2)
            return self._action("restored", pending.branches)
        names = branch_names(self.network, pending.branches)
        removed = [p for prm in self.network.prms() for p in prm.remove_masked()]
        drop_parameters(optimizer, removed)
        return PruningAction("removed", names, count_parameters(self.network), self.prune_step)

    def _action(self, action: str, branches: list[BranchId]) -> PruningAction:
        return PruningAction(action, branch_names(self.network, branches), count_parameters(self.network), self.prune_step)


def branch_names(network: PRMUNet, branches: Iterable[BranchId]) -> tuple[str, ...]:
    """Readable names such as ``bottleneck 1x3x1``."""
    prms, names = network.prms(), network.prm_names()
    return tuple(f"{names[p]} {'x'.join(map(str, prms[p].branches[b].kernel))}" for p, b in branches)


@torch.no_grad()
def branch_scores(network: PRMUNet, batches: Iterable[torch.Tensor]) -> dict[BranchId, float]:
    """Relative change of each PRM's output when one of its (unmasked) branches is left out.

    Lower means the branch matters less. Batches are (B, C, Z, Y, X).
    """
    prms = network.prms()
    change = {(p, b): 0.0 for p, prm in enumerate(prms) for b in range(len(prm.branches))}
    size = [0.0] * len(prms)

    def hook(index: int, prm: ParallelRedundantModule):
        def measure(_module, inputs, _output):
            x = inputs[0]
            parts = [branch(x) for branch in prm.branches]
            total = x + sum(parts)
            full = F.leaky_relu(total, 0.01)
            size[index] += float(full.square().sum())
            for b, part in enumerate(parts):
                change[(index, b)] += float((full - F.leaky_relu(total - part, 0.01)).square().sum())

        return measure

    handles = [prm.register_forward_hook(hook(i, prm)) for i, prm in enumerate(prms)]
    was_training = network.training
    network.eval()
    try:
        for images in batches:
            network(images)
    finally:
        for handle in handles:
            handle.remove()
        network.train(was_training)
    return {key: value / max(size[key[0]], 1e-12) for key, value in change.items()}


def choose_branches(scores: dict[BranchId, float], network: PRMUNet, count: int, min_branches: int) -> list[BranchId]:
    """The ``count`` lowest-scoring branches, leaving every PRM at least ``min_branches``."""
    left = [len(prm.branches) for prm in network.prms()]
    chosen = []
    for branch in sorted(scores, key=scores.get):
        if len(chosen) == count:
            break
        if left[branch[0]] > min_branches:
            chosen.append(branch)
            left[branch[0]] -= 1
    return sorted(chosen)


def drop_parameters(optimizer: torch.optim.Optimizer, parameters: list[torch.nn.Parameter]) -> None:
    """Remove parameters (and their state) from an optimiser whose network lost them."""
    gone = {id(p) for p in parameters}
    for group in optimizer.param_groups:
        group["params"] = [p for p in group["params"] if id(p) not in gone]
    for p in parameters:
        optimizer.state.pop(p, None)
