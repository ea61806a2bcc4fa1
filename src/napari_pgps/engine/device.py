"""Choosing the compute device."""

from __future__ import annotations

import torch

from ..config import DEVICES
from ..errors import InputError


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA, else MPS, else CPU for ``"auto"``; the named device otherwise.

    Raises:
        InputError: the named device is not available on this machine.
    """
    if requested not in DEVICES:
        raise InputError(f"unknown device '{requested}'; choose one of {', '.join(DEVICES)}.")
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if requested == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if requested == "cuda" and not cuda:
        raise InputError("CUDA was requested but no CUDA GPU is available; use --device auto or cpu.")
    if requested == "mps" and not mps:
        raise InputError("MPS was requested but is not available on this machine; use --device auto or cpu.")
    return torch.device(requested)


def describe(device: torch.device) -> str:
    """A short human name, e.g. ``"CUDA (NVIDIA H100 80GB HBM3)"`` or ``"CPU (2 threads)"``."""
    if device.type == "cuda":
        return f"CUDA ({torch.cuda.get_device_name(device)})"
    if device.type == "mps":
        return "MPS (Apple GPU)"
    return f"CPU ({torch.get_num_threads()} threads)"


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
