"""How much memory a network's tensors take: one measure for the patch-size chooser and the pruning reports.

The measure is the peak of the bytes held by the tensors a pass creates
(activations, gradients, temporary buffers), from their creation until they
are freed; the network's weights and the input are not counted. It is in
bytes; every face shows it in MB (10^6 bytes).

- On a CUDA GPU it is measured by the allocator: ``torch.cuda.max_memory_allocated``
  during the pass minus what was allocated before it.
- Elsewhere (CPU, MPS, and PyTorch's shape-only ``meta`` device) every
  storage an operation's output uses is counted once, from the first output
  that shows it until that tensor is freed (:class:`TensorMemory`). On the
  ``meta`` device no arithmetic runs, so a network of any size is measured at
  once. It leaves out the allocator's caching and the convolution libraries'
  scratch space, so a process's real peak is somewhat higher.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..config import ModelConfig
from ..models import build_network, patch_divisor, segmenting_config

MB = 1e6
"""Bytes in the MB every face shows."""


class TensorMemory(TorchDispatchMode):
    """Counts the bytes of the storages that operations' outputs use while they are alive; keeps the peak.

    Works on real devices and on ``meta``: a storage is known by its address
    (``StorageImpl``), not by its data pointer.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._storages: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(output)[0]:
            if isinstance(tensor, torch.Tensor):
                self._track(tensor)
        self.peak = max(self.peak, self.live)
        return output

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key, size = storage._cdata, storage.nbytes()
        if key in self._storages or size == 0:
            return
        self._storages.add(key)
        self.live += size
        weakref.finalize(tensor, self._free, key, size)

    def _free(self, key: int, size: int) -> None:
        self._storages.discard(key)
        self.live -= size


def peak_tensor_bytes(work: Callable[[], object], device: torch.device) -> int:
    """Peak bytes of the tensors ``work()`` creates (weights and inputs made before it excluded)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        work()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    tracker = TensorMemory()
    with tracker:
        work()
    return tracker.peak


def weight_bytes(network: torch.nn.Module) -> int:
    """Bytes of a network's parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in (*network.parameters(), *network.buffers()))


@dataclass(frozen=True)
class MemoryEstimate:
    """Memory of segmenting with ``batch`` windows of ``patch`` (Z, Y, X) at a time.

    ``method`` is "measured" (CUDA allocator) or "computed" (tensors counted on the meta device).
    """

    patch: tuple[int, int, int]
    batch: int
    weights: int
    """Bytes of the network's parameters and buffers."""
    activations: int
    """Peak bytes of the forward pass's tensors (:func:`peak_tensor_bytes`)."""
    method: str

    @property
    def megabytes(self) -> float:
        """Weights and activations together, in MB (10^6 bytes)."""
        return (self.weights + self.activations) / MB


SCALES = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5)


def candidate_patches(model: ModelConfig) -> list[tuple[int, int, int]]:
    """Patch sizes (Z, Y, X) to offer: the training patch scaled by :data:`SCALES`, each axis a multiple of the divisor.

    Sizes whose bottleneck would hold a single voxel are left out (instance normalisation needs two).
    """
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
    same config (for a hypernetwork, the plain network it bakes) stands in for
    the trained one. On a CUDA GPU the pass runs for real under the same
    autocast as inference; elsewhere on the meta device.
    """
    patch = tuple(int(p) for p in patch_size)
    config = segmenting_config(model)
    measured = device.type == "cuda"
    where = device if measured else torch.device("meta")
    with torch.device(where):
        network = build_network(config).eval()
        windows = torch.zeros((batch, config.in_channels) + patch)

    def forward() -> None:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=measured and mixed_precision):
            network(windows)

    activations = peak_tensor_bytes(forward, where)
    return MemoryEstimate(patch, batch, weight_bytes(network), activations, "measured" if measured else "computed")
