"""Structured channel pruning of a trained network with Torch-Pruning (DepGraph).

Torch-Pruning traces the network once to find which convolutions, norms and
concatenations must lose the same channels, ranks channel groups by the L2
magnitude of their weights and removes the weakest ``ratio`` of every layer's
channels in ``steps`` equal steps. The output convolutions (the prediction and
the deep-supervision heads) keep their channels: they are the labels.

A channel-pruned network is saved as an ordinary state dict with
``ModelConfig.channels_pruned`` set; :func:`napari_pgps.models.rebuild.fit_to_state_dict`
rebuilds it from the planned network, so loading never needs pickled modules.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from ..models.rebuild import CONVOLUTIONS


def output_layers(network: nn.Module) -> list[nn.Module]:
    """The convolutions whose outputs are label logits (never pruned)."""
    out_channels = None
    for module in network.modules():
        if isinstance(module, CONVOLUTIONS):
            out_channels = module.out_channels  # the last convolution built is the prediction
    return [
        m for m in network.modules()
        if isinstance(m, CONVOLUTIONS) and m.out_channels == out_channels and m.kernel_size == (1,) * len(m.kernel_size)
    ]


def prune_channels(
    network: nn.Module,
    example: torch.Tensor,
    ratio: float,
    steps: int = 5,
) -> Iterator[int]:
    """Remove ``ratio`` of the channels of every hidden layer, in place, by weight magnitude; yields each step done.

    A generator: iterate it to prune (``for step in prune_channels(...)``), or stop early.

    Args:
        network: a trained network in training mode (so deep-supervision heads are traced too).
        example: an input batch (B, C, Z, Y, X) for tracing, on the network's device.
        ratio: share of channels removed, in (0, 1).
        steps: Torch-Pruning's iterative steps (the ratio is reached linearly).
    """
    import torch_pruning as tp

    if not 0.0 < ratio < 1.0:
        raise ValueError(f"pruning ratio {ratio} must be between 0 and 1")
    heads = output_layers(network)
    for module in network.modules():  # Torch-Pruning cannot follow channels through in-place activations
        if hasattr(module, "inplace"):
            module.inplace = False
    # Trace from the heads' own outputs: the stacking of deep-supervision outputs is not a channel concatenation.
    outputs: list[torch.Tensor] = []
    hooks = [head.register_forward_hook(lambda _m, _i, output: outputs.append(output)) for head in heads]

    def forward(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        outputs.clear()
        model(inputs)
        return sum(output.sum() for output in outputs)

    was_training = network.training
    try:
        pruner = tp.pruner.BasePruner(
            network,
            example,
            importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=ratio,
            iterative_steps=steps,
            ignored_layers=heads,
            forward_fn=forward,
        )
        for step in range(steps):
            pruner.step()
            yield step + 1
    finally:
        for hook in hooks:
            hook.remove()
        network.train(was_training)
