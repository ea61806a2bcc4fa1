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
