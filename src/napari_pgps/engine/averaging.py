"""Weight averaging over the last part of a run: an exponential moving average (EMA) of the network's weights.

Late in a run the weights wander around a minimum from step to step and validation Dice drifts; their average over
the last part of the run sits nearer its centre. With ``training.weight_averaging: ema`` the run keeps that average:
it is what validation scores (beside the raw weights, for comparison), and what the checkpoints hold as "model".

When averaging begins: with the first epoch that starts past ``training.averaging_start`` of the run's planned
epochs (``training.epochs``; a time budget's re-plan may move the end, and with it a start not yet reached), and
from then on after every optimiser step. With 4 epochs and a start of 0.5, the weights after every step of epochs 2
and 3 (0-based) are averaged.

How much each step counts: the EMA's decay follows the length of the averaging window, N = the planned steps from
the epoch where averaging began to the end of the run (epochs left x ``training.iterations_per_epoch``), as
``decay = 1 - 2 / (N + 1)``: the EMA whose centre of mass lies as far
back as that of a plain mean of the last N steps (the usual "span" of an EMA). The decay is recomputed whenever a
re-plan moves the end. The average itself is :class:`torch.optim.swa_utils.AveragedModel` with
:func:`~torch.optim.swa_utils.get_ema_multi_avg_fn`: a copy of the network (same device and memory format) whose
weights start as the network's and are then pulled towards each step's weights by ``1 - decay``.

Buffers (e.g. the PRM network's branch masks) are copied from the network at every update, not averaged; a network
with batch norm (whose running statistics would not fit averaged weights) is refused. A plug-in that changes the
network's parameters (PSP-Seg removing branches) starts the average over from the network as it then is.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Optional

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..config import TrainingConfig
from ..errors import InputError


def ema_decay(window_steps: int) -> float:
    """The EMA decay equivalent to a plain mean over the last ``window_steps`` steps: ``1 - 2 / (N + 1)`` (0 for a
    window of one step: the average is then the last weights)."""
    return 1.0 - 2.0 / (max(1, window_steps) + 1)


class WeightAverage:
    """The EMA of ``network``'s weights over the last part of a run (see the module's description).

    ``training`` is the run's own training configuration, read at every update, so a re-plan of its epochs is
    followed. With ``training.weight_averaging`` other than "ema" it never begins and changes nothing.

    Under torchrun, give the network itself (not its DDP wrapper): every rank keeps the same average.

    Raises:
        InputError: averaging is asked for a network with batch norm.
    """

    def __init__(self, network: torch.nn.Module, training: TrainingConfig) -> None:
        self.source = network
        """The network being trained, whose weights are averaged."""
        self.training = training
        self.enabled = training.weight_averaging == "ema"
        self.began_at: Optional[int] = None
        """The epoch (0-based) in which averaging began (``None``: not yet)."""
        self._averaged: Optional[AveragedModel] = None
        self._decay: Optional[float] = None
        if self.enabled and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in network.modules()):
            raise InputError("weight averaging ('ema') needs a network without batch norm: its running statistics "
                             "would not fit the averaged weights. Set training.weight_averaging: none, or choose a "
                             "network with instance norm.")

    @property
    def begun(self) -> bool:
        return self._averaged is not None

    @property
    def network(self) -> Optional[torch.nn.Module]:
        """The averaged network (same class, device and memory format as the source), or ``None`` before averaging
        has begun."""
        return self._averaged.module if self._averaged is not None else None

    @property
    def kept(self) -> torch.nn.Module:
        """The network the run keeps: the averaged one once averaging has begun, else the network being trained."""
        return self.network if self._averaged is not None else self.source

    @property
    def start_epoch(self) -> int:
        """The epoch (0-based) in which averaging begins (as now planned, or as it began)."""
        if self.began_at is not None:
            return self.began_at
        return math.ceil(self.training.averaging_start * self.training.epochs)

    @property
    def decay(self) -> float:
        """The EMA decay for the window from :attr:`start_epoch` to the planned end."""
        return ema_decay((self.training.epochs - self.start_epoch) * self.training.iterations_per_epoch)

    def update(self, epoch: int) -> None:
        """Average the source's weights after an optimiser step of epoch ``epoch`` (0-based); nothing before
        :attr:`start_epoch`."""
        if not self.enabled or epoch < self.start_epoch:
            return
        if self._averaged is None or _parameter_shapes(self._averaged.module) != _parameter_shapes(self.source):
            self._begin(epoch)
        decay = self.decay
        if decay != self._decay:
            self._averaged.multi_avg_fn = get_ema_multi_avg_fn(decay)
            self._decay = decay
        self._averaged.update_parameters(self.source)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps to continue the average (``{}`` before it began): the epoch it began in and the
        :class:`~torch.optim.swa_utils.AveragedModel`'s state (its averaged weights, "module." + the network's
        names, and the count of updates)."""
        if self._averaged is None:
            return {}
        return {"began_at": self.began_at, "averaged_model": self._averaged.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the average :meth:`state_dict` returned (nothing to do for ``{}``); the source network must have
        the checkpoint's structure."""
        if not state:
            return
        self._begin(int(state["began_at"]))
        self._averaged.load_state_dict(state["averaged_model"])

    def _begin(self, epoch: int) -> None:
        """Start a new average in ``epoch``, a copy of the source's current weights (at its first update)."""
        self._averaged = AveragedModel(_copy_of(self.source), use_buffers=False)
        self._decay = None
        self.began_at = epoch


def _copy_of(network: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``network`` whose tensors left over from a forward pass are detached: ``copy.deepcopy`` refuses
    tensors inside an autograd graph, and MONAI's DynUNet keeps its last deep-supervision outputs in a list
    (``heads``) on its modules."""
    left_over = {}
    for module in network.modules():
        for value in vars(module).values():
            for item in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(item, torch.Tensor) and item.grad_fn is not None:
                    left_over[id(item)] = item.detach()
    return copy.deepcopy(network, left_over)


def _parameter_shapes(network: torch.nn.Module) -> list[tuple[str, torch.Size]]:
    return [(name, p.shape) for name, p in network.named_parameters()]
