"""The number format a training step computes in: fp16 autocast on CUDA, bf16 autocast on a CPU that has it
natively, fp32 elsewhere; and the convolutions that must stay in fp32 under CPU bf16.

PyTorch's CPU bf16 convolution (oneDNN, measured with torch 2.13 on an AVX512-BF16 CPU) returns a wrong weight
gradient for a 3D convolution whose input is 2 voxels deep and whose kernel is 3 deep: relative error 0.1 to 1
in every trial, and now and then a value near 1e38 (``benchmarks/bf16_convolutions.py``). The forward pass and
the input's gradient are right. PGPS's first stages meet it at the bottleneck (a 16-voxel-deep patch, halved three
times, is 2 deep), as do drawn patch sizes (patch-size augmentation, the hypernetwork); so under CPU bf16 every
convolution whose input is shallower than its kernel runs in fp32 (:class:`_ShallowConvolutionsInFloat32`). They
are the network's smallest, so the step's time does not change measurably.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), where bf16 autocast speeds training up."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def autocast_dtype(device: torch.device, mixed_precision: bool) -> torch.dtype | None:
    """The lower precision a training step runs in: fp16 on CUDA, bf16 on a CPU that has it natively, else none."""
    if not mixed_precision:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and native_bf16():
        return torch.bfloat16
    return None


def step_precision(device: torch.device, dtype: torch.dtype | None):
    """The context a training step's forward pass runs in: autocast to ``dtype`` (none: fp32), and under CPU bf16
    the shallow convolutions kept in fp32 (see the module's text); their backward follows the forward's format."""
    if dtype is None:
        return contextlib.nullcontext()
    autocast = torch.autocast(device_type=device.type, dtype=dtype)
    if device.type != "cpu" or dtype is not torch.bfloat16:
        return autocast
    stack = contextlib.ExitStack()
    stack.enter_context(autocast)
    stack.enter_context(_ShallowConvolutionsInFloat32())
    return stack


class _ShallowConvolutionsInFloat32(TorchFunctionMode):
    """Runs a 3D convolution in fp32, autocast off, when its input (B, C, Z, Y, X) has fewer slices Z than its
    kernel (C_out, C_in, kZ, kY, kX) has; every other call goes on unchanged."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv3d and len(args) >= 2 and args[0].dim() == 5 and args[0].shape[2] < args[1].shape[2]:
            x, weight, *rest = args
            with torch.autocast(device_type="cpu", enabled=False):
                return func(x.float(), weight.float(), *(r.float() if torch.is_tensor(r) else r for r in rest), **kwargs)
        return func(*args, **kwargs)
