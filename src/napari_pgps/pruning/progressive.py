"""PSP-Seg progressive pruning: mask the least useful PRM branches, keep the cut if the losses hold, then remove them.

The PSP-Seg plug-in (:mod:`.psp_seg`) calls :meth:`ProgressivePruner.end_epoch`
with each epoch's mean losses and :meth:`ProgressivePruner.start_epoch` before
each epoch. ``PruningConfig`` chooses each step; the defaults are the PSP-Seg
reference code's:

- when (``judge``): "convergence": checks happen at convergence events, epoch
  starts at which none of the losses "total", "feature" and "foreground" has
  set a new minimum since the previous event for more than ``patience``
  epochs. "next-epoch": a mask is judged at the next epoch start, and a new
  one is placed after ``patience`` epochs in which neither "segmentation" nor
  "decoupling" set a new minimum.
- judging a pending mask: if a judged loss ("total", "feature" and
  "foreground" for "convergence"; "segmentation" for "next-epoch") has a
  minimum since the mask that is at least its minimum before the mask plus
  ``tolerance``, the branches come back and ``prune_step`` shrinks
  (``rollback``: "decrement" by 1, pruning stops at 0; "halve", at least 1);
  otherwise they are removed physically (their parameters leave the network
  and the optimiser). After a rollback the convergence judge places no mask
  until the next event.
- placing a mask (only before ``stop_fraction`` of the epochs): calibration
  runs the network on a few batches and, with ``selection`` "per-prm", masks
  in every PRM the combination of ``prune_step`` branches whose joint removal
  changes the PRM's output least; with "global", the ``prune_step`` branches
  of the whole network that change their own PRM's output least alone. No
  PRM goes below ``min_branches``; an empty PRM passes its input on.

For a PRM with input x, output y = act(x + sum_j b_j(x)) and branches S left
out, y_S = act(x + sum_{j not in S} b_j(x)) (y_S = x when no branch is left).
"per-prm" scores S by sum over the batches of ||y - y_S||_2 (the reference's);
"global" scores branch i by sum ||y - y_{i}||^2 / sum ||y||^2 over the batches.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

import torch

from ..config import PruningConfig
from ..errors import InputError
from ..models import count_parameters
from ..models.prm import ParallelRedundantModule, PRMUNet

BranchId = tuple[int, int]
"""(PRM index in :meth:`PRMUNet.prms` order, branch index within the PRM)."""

SELECTIONS = ("per-prm", "global")
JUDGES = ("convergence", "next-epoch")
ROLLBACKS = ("decrement", "halve")
WATCHED = {"convergence": ("total", "feature", "foreground"), "next-epoch": ("segmentation", "decoupling")}
"""The losses whose minima decide when a judge acts (those an epoch reports)."""
JUDGED = {"convergence": ("total", "feature", "foreground"), "next-epoch": ("segmentation",)}
"""The losses a pending mask is judged on (those an epoch reports)."""
SHORT_WINDOW_FACTOR = 10
"""The convergence judge's pruning window is short below this many times (patience + 1) epochs."""
LEGACY_OPTIONS = {"selection": "global", "judge": "next-epoch", "rollback": "halve"}
"""What a run whose checkpointed pruner state predates these options pruned with."""


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
    before: dict[str, float]
    """Each judged loss's minimum before the mask."""
    since: dict[str, float] = field(default_factory=dict)
    """Each judged loss's minimum since the mask."""


@dataclass
class ProgressivePruner:
    """The pruning state of one run (saved in checkpoints through :meth:`state_dict`)."""

    network: PRMUNet
    config: PruningConfig
    epochs: int
    prune_step: Optional[int] = None
    best_losses: dict[str, float] = field(default_factory=dict)
    """Each loss's minimum over every epoch so far."""
    last_improvement: int = 0
    """"next-epoch": the last epoch a watched loss set a new minimum."""
    window: dict[str, tuple[float, int]] = field(default_factory=dict)
    """"convergence": each watched loss's minimum since the last event, and the last epoch it was reached."""
    last_event: int = 0
    """"convergence": the epoch of the last event."""
    pending: Optional[_Pending] = None

    def __post_init__(self) -> None:
        check_options(self.config)
        if self.prune_step is None:
            self.prune_step = max(1, self.config.prune_step)

    @property
    def patience(self) -> int:
        """Epochs without a new minimum before a check (10 per 1000 epochs when ``PruningConfig.patience`` is ``None``)."""
        if self.config.patience is not None:
            return self.config.patience
        return round(10 * self.epochs / 1000)

    @property
    def last_epoch(self) -> int:
        """Masks are placed only at epoch starts before this one."""
        return math.ceil(self.config.stop_fraction * self.epochs)

    def short_run_note(self) -> Optional[str]:
        """A warning when the convergence judge has too few epochs to act: its events need ``patience`` + 1 epochs
        in which none of three losses reaches a new minimum, which a run still learning rarely gives. The reference
        has 400 epochs (40% of 1,000) for patience 10; fewer than 10 x (patience + 1) in the pruning window get the
        warning (measured: 25 epochs with patience 1 pruned nothing; docs/benchmarks.md section 6)."""
        if self.config.judge != "convergence" or self.last_epoch >= SHORT_WINDOW_FACTOR * (self.patience + 1):
            return None
        return (f"PSP-Seg's reference pruning rule acts at convergence events ({self.patience + 1} epochs without a "
                f"new minimum of three losses); the first {self.last_epoch} epochs in which it may prune are likely "
                "too few, and the network may come out unpruned. For a short run use the short-run rule "
                "(--pruning-rule short-run), which pruned 87% of the S network in 25 epochs.")

    # -- the trainer's calls ------------------------------------------------------
    def end_epoch(self, epoch: int, losses: dict[str, float]) -> None:
        """Record an epoch's mean losses ("segmentation", and from the plug-in "decoupling", "feature", "foreground", "total")."""
        watched = [name for name in WATCHED[self.config.judge] if name in losses]
        if any(losses[name] < self.best_losses.get(name, math.inf) for name in watched):
            self.last_improvement = epoch
        for name in watched:
            if losses[name] <= self.window.get(name, (math.inf, 0))[0]:
                self.window[name] = (losses[name], epoch)
        for name, value in losses.items():
            self.best_losses[name] = min(value, self.best_losses.get(name, math.inf))
        if self.pending is not None:
            for name in self.pending.before:
                self.pending.since[name] = min(self.pending.since.get(name, math.inf), losses.get(name, math.inf))

    def start_epoch(
        self,
        epoch: int,
        calibration: Callable[[], Iterable[torch.Tensor]],
        optimizer: torch.optim.Optimizer,
    ) -> list[PruningAction]:
        """Judge the pending mask and maybe mask more branches, as ``judge`` says; returns what was done.

        Args:
            calibration: yields input batches (B, C, Z, Y, X) on the network's device.
            optimizer: removed branches' parameters are dropped from it.
        """
        if self.config.judge == "convergence":
            return self._at_convergence(epoch, calibration, optimizer)
        actions = []
        if self.pending is not None:
            actions.append(self._judge(optimizer))
        if self.pending is None and epoch - 1 - self.last_improvement >= self.patience:
            actions += self._place(epoch, calibration)
        return actions

    # -- state --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        pending = None
        if self.pending is not None:
            pending = {"branches": [list(b) for b in self.pending.branches], "before": dict(self.pending.before),
                       "since": dict(self.pending.since)}
        return {
            "prune_step": self.prune_step,
            "best_losses": dict(self.best_losses),
            "last_improvement": self.last_improvement,
            "window": {name: [value, epoch] for name, (value, epoch) in self.window.items()},
            "last_event": self.last_event,
            "pending": pending,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; a state from before the options (no "last_event") brings back their old values.

        The old values are set on ``self.config`` (the run's configuration), so later checkpoints keep them.
        """
        if "last_event" not in state:
            for name, value in LEGACY_OPTIONS.items():
                setattr(self.config, name, value)
        self.prune_step = int(state["prune_step"])
        self.best_losses = {k: float(v) for k, v in state["best_losses"].items()}
        self.last_improvement = int(state["last_improvement"])
        self.window = {k: (float(v), int(e)) for k, (v, e) in state.get("window", {}).items()}
        self.last_event = int(state.get("last_event", 0))
        pending = state.get("pending")
        self.pending = None
        if pending is not None:
            branches = [tuple(b) for b in pending["branches"]]
            if "before" in pending:
                before, since = pending["before"], pending["since"]
            else:  # the old state judged the segmentation loss alone
                before, since = {"segmentation": pending["loss_before"]}, {"segmentation": pending["loss_since"]}
            self.pending = _Pending(branches, {k: float(v) for k, v in before.items()}, {k: float(v) for k, v in since.items()})

    # -- internals ----------------------------------------------------------------
    def _at_convergence(self, epoch: int, calibration, optimizer) -> list[PruningAction]:
        """The reference's check: nothing until a convergence event; then judge the pending mask, or place one."""
        names = [name for name in WATCHED["convergence"] if name in self.window]
        if not names or any(epoch - self.window[name][1] <= self.patience for name in names):
            return []
        self.last_event, self.window = epoch, {}
        if self.pending is not None:
            action = self._judge(optimizer)
            if action.action == "restored":
                return [action]
            return [action, *self._place(epoch, calibration)]
        return self._place(epoch, calibration)

    def _place(self, epoch: int, calibration: Callable[[], Iterable[torch.Tensor]]) -> list[PruningAction]:
        """Mask branches as ``selection`` says, if the epoch and the network allow; [] or one "masked" action."""
        if not (0 < epoch < self.last_epoch and self.prune_step > 0 and self._removable()):
            return []
        if self.config.selection == "per-prm":
            scores = combination_scores(self.network, calibration(), self.prune_step, self.config.min_branches)
            chosen = choose_combinations(scores)
        else:
            scores = branch_scores(self.network, calibration())
            chosen = choose_branches(scores, self.network, self.prune_step, self.config.min_branches)
        if not chosen:
            return []
        self._mask(chosen)
        judged = [name for name in JUDGED[self.config.judge] if name in self.best_losses]
        self.pending = _Pending(chosen, {name: self.best_losses[name] for name in judged})
        return [self._action("masked", chosen)]

    def _removable(self) -> bool:
        """Whether some PRM can lose a branch (per PRM: ``prune_step`` of them) and keep ``min_branches``."""
        taken = self.prune_step if self.config.selection == "per-prm" else 1
        return any(len(m.branches) - taken >= self.config.min_branches for m in self.network.prms())

    def _mask(self, branches: list[BranchId]) -> None:
        for index, prm in enumerate(self.network.prms()):
            prm.set_mask([b for p, b in branches if p == index])

    def _judge(self, optimizer: torch.optim.Optimizer) -> PruningAction:
        pending, self.pending = self.pending, None
        tolerance = self.config.tolerance
        if any(pending.since.get(name, math.inf) >= before + tolerance for name, before in pending.before.items()):
            self._mask([])
            if self.config.rollback == "decrement":
                self.prune_step -= 1
            else:
                self.prune_step = max(1, self.prune_step // 2)
            return self._action("restored", pending.branches)
        names = branch_names(self.network, pending.branches)
        removed = [p for prm in self.network.prms() for p in prm.remove_masked()]
        drop_parameters(optimizer, removed)
        return PruningAction("removed", names, count_parameters(self.network), self.prune_step)

    def _action(self, action: str, branches: list[BranchId]) -> PruningAction:
        return PruningAction(action, branch_names(self.network, branches), count_parameters(self.network), self.prune_step)


def check_options(config: PruningConfig) -> None:
    """Raise InputError for an unknown ``selection``, ``judge`` or ``rollback``."""
    for name, allowed in (("selection", SELECTIONS), ("judge", JUDGES), ("rollback", ROLLBACKS)):
        if getattr(config, name) not in allowed:
            raise InputError(f"pruning.{name} must be one of {', '.join(allowed)}, not '{getattr(config, name)}'.")


def branch_names(network: PRMUNet, branches: Iterable[BranchId]) -> tuple[str, ...]:
    """Readable names such as ``bottleneck 1x3x1``."""
    prms, names = network.prms(), network.prm_names()
    return tuple(f"{names[p]} {'x'.join(map(str, prms[p].branches[b].kernel))}" for p, b in branches)


@torch.no_grad()
def _calibrate(network: PRMUNet, batches: Iterable[torch.Tensor], measure: Callable[..., None]) -> None:
    """Run the network (eval mode) on batches (B, C, Z, Y, X) and call ``measure(prm, index, x, parts, full)`` at every
    PRM.

    ``prm`` is the module and ``index`` its place in :meth:`PRMUNet.prms`; ``x`` is its input, ``parts`` its
    branches' scaled outputs, ``full`` its output, all (B, C, Z, Y, X).
    """

    def hook(index: int, prm: ParallelRedundantModule):
        def call(_module, inputs, output):
            x = inputs[0]
            measure(prm, index, x, [branch(x) for branch in prm.branches], output)

        return call

    handles = [prm.register_forward_hook(hook(i, prm)) for i, prm in enumerate(network.prms())]
    was_training = network.training
    network.eval()
    try:
        for images in batches:
            network(images)
    finally:
        for handle in handles:
            handle.remove()
        network.train(was_training)


def combination_scores(
    network: PRMUNet, batches: Iterable[torch.Tensor], size: int, min_branches: int
) -> dict[int, dict[tuple[int, ...], float]]:
    """For every PRM that can lose ``size`` branches and keep ``min_branches``: each ``size``-branch combination's score.

    The score is sum over the batches (B, C, Z, Y, X) of ||y - y_S||_2, the
    change of the PRM's output when the combination S is left out together;
    lower matters less. PRMs with too few branches are left out of the result.
    """
    prms = network.prms()
    combos = {p: list(itertools.combinations(range(len(prm.branches)), size))
              for p, prm in enumerate(prms) if len(prm.branches) - size >= min_branches}
    scores = {p: dict.fromkeys(c, 0.0) for p, c in combos.items()}

    def measure(prm, index, x, parts, full):
        if index not in scores:
            return
        total = sum(parts)
        for combo in combos[index]:
            left = len(parts) - len(combo)
            without = prm.combine(x, total - sum(parts[b] for b in combo) if left else None)
            scores[index][combo] += float(torch.linalg.vector_norm(full - without))

    _calibrate(network, batches, measure)
    return scores


def choose_combinations(scores: dict[int, dict[tuple[int, ...], float]]) -> list[BranchId]:
    """The lowest-scoring combination of every PRM, as branches."""
    return sorted((p, b) for p, combos in scores.items() if combos for b in min(combos, key=combos.get))


def branch_scores(network: PRMUNet, batches: Iterable[torch.Tensor]) -> dict[BranchId, float]:
    """Relative change of each PRM's output when one of its branches is left out; lower matters less.

    Batches are (B, C, Z, Y, X).
    """
    prms = network.prms()
    change = {(p, b): 0.0 for p, prm in enumerate(prms) for b in range(len(prm.branches))}
    size = [0.0] * len(prms)

    def measure(prm, index, x, parts, full):
        total = sum(parts)
        size[index] += float(full.square().sum())
        for b, part in enumerate(parts):
            without = prm.combine(x, total - part if len(parts) > 1 else None)
            change[(index, b)] += float((full - without).square().sum())

    _calibrate(network, batches, measure)
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
