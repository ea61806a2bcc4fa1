"""The number format a training step computes in: fp16 autocast on CUDA, bf16 autocast on a CPU that has it
natively, fp32 elsewhere. (Under CPU bf16 the few convolutions PyTorch's bf16 kernel gets wrong are computed in
fp32 by the network itself: :mod:`napari_pgps.models.shallow_convolutions`.)"""

from __future__ import annotations

import contextlib

import torch


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
    """The context a training step's forward pass runs in: autocast to ``dtype``, or fp32 when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
