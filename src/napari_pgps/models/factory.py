"""Building the segmentation network of a (resolved) :class:`ModelConfig`, and reading its outputs."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..config import ModelConfig
from .architectures import architecture
from .rebuild import fit_to_state_dict
from .shallow_convolutions import guard_shallow_convolutions


def build_network(model: ModelConfig, weights: Optional[dict[str, torch.Tensor]] = None) -> nn.Module:
    """The network for a resolved model config, with ``weights`` (a state dict) loaded if given.

    A channel-pruned network (``model.channels_pruned``) takes its layer sizes from ``weights``. Its 3D
    convolutions are :class:`~napari_pgps.models.shallow_convolutions.ShallowSafeConv3d` (right under CPU bf16).

    Input (B, in_channels, Z, Y, X) -> logits (B, out_channels, Z, Y, X). A
    network with deep supervision, in training mode, returns
    (B, 1 + heads, out_channels, Z, Y, X) instead (see :func:`training_outputs`).
    """
    spec = architecture(model)
    if model.out_channels is None or model.channels is None:
        raise ValueError("the model config is not resolved (out_channels / channels missing)")
    network = spec.build(model)
    if weights is not None:
        if model.channels_pruned:
            fit_to_state_dict(network, weights)
        else:
            network.load_state_dict(weights)
    return guard_shallow_convolutions(network)


def training_outputs(network: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Forward pass in training mode as a list: the full-resolution logits first, then deep-supervision heads.

    Each item is (B, K, Z, Y, X).
    """
    return split_outputs(network(images), images)


def split_outputs(output: torch.Tensor, images: torch.Tensor) -> list[torch.Tensor]:
    """A training-mode output as a list of (B, K, Z, Y, X): stacked deep-supervision outputs are unbound."""
    if output.dim() == images.dim() + 1:
        return list(torch.unbind(output, dim=1))
    return [output]


def count_parameters(network: nn.Module) -> int:
    """Parameters of a network (each shared tensor once; PRM branches that are masked but not removed count)."""
    return sum(p.numel() for p in network.parameters())
