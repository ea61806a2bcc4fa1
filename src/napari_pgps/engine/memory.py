"""How much memory segmenting with a given patch size takes: one sliding-window batch through the network.

On a CUDA GPU the memory is *measured*: a forward pass of zeros under the
same autocast as inference, ``torch.cuda.max_memory_allocated`` before and
after. Elsewhere (CPU, MPS) it is *computed* without running a convolution:
the network runs on PyTorch's ``meta`` device (shapes only) while every
tensor an operation creates is counted from its creation until it is freed;
the estimate is the peak of that count plus the weights. It leaves out the
allocator's caching and the scratch space of the convolution libraries, so
the real peak is somewhat higher.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..config import ModelConfig
from ..models import build_network


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one forward pass of ``batch`` windows of ``patch`` (Z, Y, X) takes; ``method`` is "measured" or "computed"."""

    patch: tuple[int, int, int]
    batch: int
    bytes: int
    method: str

    @property
    def megabytes(self) -> float:
        return self.bytes / 2**20


def segmenting_network_config(model: ModelConfig) -> ModelConfig:
    """The config of the network that actually segments: for a hypernetwork, the plain DynUNet it bakes."""
    from ..models.hypernetwork import plain_config

    return plain_config(model) if model.architecture == "hypernet" else model


SCALES = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5)


def candidate_patches(model: ModelConfig) -> list[tuple[int, int, int]]:
    """Patch sizes (Z, Y, X) to offer: the training patch scaled by :data:`SCALES`, each axis a multiple of the divisor.

    Sizes whose bottleneck would hold a single voxel are left out (instance normalisation needs two).
    """
    from ..models import patch_divisor

    divisor = patch_divisor(model)
    sizes = []
    for scale in SCALES:
        size = tuple(max(d, round(scale * p / d) * d) for p, d in zip(model.patch_size, divisor))
        if math.prod(s // d for s, d in zip(size, divisor)) > 1 and size not in sizes:
            sizes.append(size)
    return sizes


def estimate_memory(
    model: ModelConfig, patch_size: Sequence[int], device: torch.device, *, batch: int = 2, mixed_precision: bool = True
) -> MemoryEstimate:
    """Memory of segmenting with windows of ``patch_size`` (Z, Y, X), ``batch`` windows at a time.

    The weights do not change the memory, so a freshly built network of the
    same config stands in for the trained one.
    """
    patch = tuple(int(p) for p in patch_size)
    config = segmenting_network_config(model)
    shape = (batch, config.in_channels) + patch
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        network = build_network(config).to(device).eval()
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=mixed_precision):
            network(torch.zeros(shape, device=device))
        torch.cuda.synchronize(device)
        used = torch.cuda.max_memory_allocated(device) - before
        del network
        return MemoryEstimate(patch, batch, int(used), "measured")
    with torch.device("meta"):
        network = build_network(config).eval()
    weights = sum(p.numel() * p.element_size() for p in network.parameters())
    counter = _LiveTensors()
    with torch.inference_mode(), counter:
        network(torch.zeros(shape, device="meta"))
    return MemoryEstimate(patch, batch, int(weights + counter.peak), "computed")


class _LiveTensors(TorchDispatchMode):
    """Counts the bytes of the tensors operations create (not views or in-place results) while they live."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        results = out if isinstance(out, (tuple, list)) else (out,)
        for tensor, returned in zip(results, func._schema.returns):
            if isinstance(tensor, torch.Tensor) and returned.alias_info is None:
                size = math.prod(tensor.shape) * tensor.element_size()
                self.live += size
                weakref.finalize(tensor, self._free, size)
        self.peak = max(self.peak, self.live)
        return out

    def _free(self, size: int) -> None:
        self.live -= size
