"""Rebuilding a network whose layers were made smaller (channel pruning) from its state dict alone.

A channel-pruned network is saved as an ordinary state dict with
``ModelConfig.channels_pruned`` set. :func:`fit_to_state_dict` shrinks the
planned network's convolutions and norms to the saved weights' shapes, so
loading never needs pickled modules.
"""

from __future__ import annotations

import torch
from torch import nn

CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm)


def fit_to_state_dict(network: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Shrink convolutions and norms in place to the shapes of a (channel-pruned) state dict, then load it."""
    for prefix, module in network.named_modules():
        for name, tensor in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            saved = state_dict.get(f"{prefix}.{name}" if prefix else name)
            if saved is None or saved.shape == tensor.shape:
                continue
            replacement = torch.empty(saved.shape, dtype=tensor.dtype, device=tensor.device)
            if isinstance(tensor, nn.Parameter):
                setattr(module, name, nn.Parameter(replacement, requires_grad=tensor.requires_grad))
            else:
                module.register_buffer(name, replacement)
        _fix_sizes(module)
    network.load_state_dict(state_dict)
    return network


def _fix_sizes(module: nn.Module) -> None:
    """Update a layer's size attributes after its weight changed shape."""
    if isinstance(module, _TRANSPOSED):
        module.in_channels = module.weight.shape[0]
        module.out_channels = module.weight.shape[1] * module.groups
    elif isinstance(module, CONVOLUTIONS):
        module.out_channels = module.weight.shape[0]
        module.in_channels = module.weight.shape[1] * module.groups
    elif isinstance(module, _NORMS) and module.weight is not None:
        if isinstance(module, nn.GroupNorm):
            module.num_channels = module.weight.shape[0]
        else:
            module.num_features = module.weight.shape[0]
