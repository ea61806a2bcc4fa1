"""Choosing the compute device, and how it computes (precision, memory layout, CPU convolutions)."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

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


PRECISION_NAMES = {None: "fp32", torch.float16: "fp16 autocast", torch.bfloat16: "bf16 autocast"}


def describe(device: torch.device, low_precision: torch.dtype | None) -> str:
    """A short human name of the device and the arithmetic of a training step (``low_precision``: its autocast
    type, None for fp32), e.g. ``"CUDA (NVIDIA H100 80GB HBM3, fp16 autocast)"`` or ``"CPU (2 threads, fp32)"``.

    The same steps take about twice as long in fp32 as with native bf16, so a time measured on one machine says
    little of another without it.
    """
    if device.type == "cuda":
        name, detail = "CUDA", torch.cuda.get_device_name(device)
    elif device.type == "mps":
        name, detail = "MPS", "Apple GPU"
    else:
        name, detail = "CPU", f"{torch.get_num_threads()} threads"
    return f"{name} ({detail}, {PRECISION_NAMES.get(low_precision, str(low_precision))})"


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


def training_memory_format(device: torch.device, low_precision: torch.dtype | None) -> torch.memory_format:
    """The layout of the network's weights and the crops in a training step.

    Channels-last (``torch.channels_last_3d``) for fp32 steps on the CPU: oneDNN's convolutions run faster on it
    (``benchmarks/cpu_speed.py``: 1.20x at the hippocampus patch on a 2-core AVX2 CPU, 1.04x on an AVX512-BF16 one).
    Contiguous elsewhere: under bf16 autocast it was slower (0.90x), and on GPUs it has not been measured.
    """
    if device.type == "cpu" and low_precision is None:
        return torch.channels_last_3d
    return torch.contiguous_format


class _OneDNNConvolutions(TorchFunctionMode):
    """Runs every 3D convolution through oneDNN (``torch.mkldnn_convolution``).

    PyTorch's CPU heuristic sends a one-window batch with few channels
    (N*C*Z*Y <= 20480) to its slow im2col kernel; forcing oneDNN made one
    40x56x40 window 1.9x faster for the default network and 4.4x faster for a
    channel-pruned one (docs/benchmarks.md, section 6).
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv3d and not kwargs:
            x, weight, bias, stride, padding, dilation, groups = (*args, *_CONV3D_DEFAULTS[len(args) :])
            if not isinstance(padding, str) and x.dtype == torch.float32:
                return torch.mkldnn_convolution(x.contiguous(), weight, bias, _triple(padding), _triple(stride),
                                                _triple(dilation), groups)
        return func(*args, **kwargs)


_CONV3D_DEFAULTS = (None, None, None, 1, 0, 1, 1)


def _triple(value) -> list[int]:
    return [int(value)] * 3 if isinstance(value, int) else [int(v) for v in value]


def cpu_convolutions(device: torch.device):
    """Inside this context, CPU float32 3D convolutions use oneDNN (see :class:`_OneDNNConvolutions`)."""
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        return _OneDNNConvolutions()
    return contextlib.nullcontext()
