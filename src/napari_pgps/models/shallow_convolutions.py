"""3D convolutions that stay right under CPU bf16 autocast when their input is shallower than their kernel.

PyTorch's CPU bf16 convolution (oneDNN; measured with torch 2.13 on an AVX512-BF16 CPU) returns a wrong weight
gradient for a 3D convolution whose input is 2 slices deep under a 3-deep kernel: a relative error of 0.1 to 1 in
every trial, and now and then values near 1e38 (``benchmarks/bf16_fidelity.py``, docs/benchmarks.md section 10).
The forward pass and the input's gradient are right, and so is every other depth. PGPS's first stages meet it at
the bottleneck (a 16-slice-deep patch halved three times is 2 deep), as do drawn patch sizes (patch-size
augmentation, the hypernetwork).

So every ``nn.Conv3d`` of a built network becomes a :class:`ShallowSafeConv3d`: under CPU bf16 autocast, a
convolution whose input is shallower than its kernel is computed in fp32 and its output rounded to bf16, as
autocast would have returned it. Everything else is unchanged: the same parameters and state dict, ``isinstance``
still ``nn.Conv3d``. The decision is made in the module's forward, so activation checkpointing's recomputation
(PSP-Seg's PRMs) and the hypernetwork's ``functional_call`` take the same path. These are the network's smallest
convolutions: the step's time does not change measurably.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class ShallowSafeConv3d(nn.Conv3d):
    """``nn.Conv3d`` whose shallow inputs (fewer slices Z than the kernel's depth) are convolved in fp32 under CPU
    bf16 autocast. Input (B, C_in, Z, Y, X), weight (C_out, C_in, kZ, kY, kX)."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        if (input.device.type == "cpu" and input.shape[2] < weight.shape[2] and torch.is_autocast_enabled("cpu")
                and torch.get_autocast_dtype("cpu") == torch.bfloat16):
            with torch.autocast("cpu", enabled=False):
                output = super()._conv_forward(input.float(), weight.float(), None if bias is None else bias.float())
            return output.to(torch.bfloat16)
        return super()._conv_forward(input, weight, bias)


def guard_shallow_convolutions(network: nn.Module) -> nn.Module:
    """Make every plain ``nn.Conv3d`` in ``network`` a :class:`ShallowSafeConv3d`, in place; returns ``network``."""
    for module in network.modules():
        if type(module) is nn.Conv3d:
            module.__class__ = ShallowSafeConv3d
    return network
