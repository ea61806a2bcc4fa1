"""Before/after figures of a network: parameters, FLOPs, forward memory, segmentation time and Dice.

The Prune widget, ``napari-pgps prune`` and the pruning benchmark all show
the same :class:`ModelProfile`, measured the same way:

- FLOPs: :class:`torch.utils.flop_counter.FlopCounterMode` over one forward
  pass of one patch (B=1) at the final patch size (multiply-add = 2 FLOPs);
- peak forward memory: the tensors that pass creates, weights excluded
  (:func:`napari_pgps.engine.memory.peak_tensor_bytes`), in MB (10^6 bytes);
- segmentation time: median wall time of sliding-window segmentation of one
  volume over ``repeats`` runs;
- Dice: mean over the labels and the validation cases.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..engine.inference import predict_probabilities
from ..engine.memory import MB, peak_tensor_bytes
from ..models import count_parameters, split_outputs
from ..pruning.decoupling import decoupling_terms


@dataclass
class ModelProfile:
    """Cost figures of one network; ``None`` where not measured."""

    parameters: int
    gflops: float
    """Forward FLOPs (10^9) of one patch at the final patch size."""
    forward_memory_mb: float
    """Peak memory of one forward pass of one patch (MB = 10^6 bytes)."""
    segment_seconds: Optional[float] = None
    """Median time to segment one volume."""
    mean_dice: Optional[float] = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def forward_cost(network: nn.Module, patch: Sequence[int], device: torch.device, in_channels: int = 1) -> tuple[float, float]:
    """(GFLOPs, peak forward memory in MB) of one (1, in_channels, Z, Y, X) patch in eval mode."""
    from torch.utils.flop_counter import FlopCounterMode

    network.eval()
    x = torch.zeros(1, in_channels, *patch, device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        network(x)
    return counter.get_total_flops() / 1e9, peak_tensor_bytes(lambda: network(x), device) / MB


def training_step_memory(network: nn.Module, patch: Sequence[int], batch: int = 2, decoupling: bool = False) -> float:
    """Peak MB held by tensors during one training step (forward, loss, backward) on random data, on the CPU.

    The loss is cross-entropy over every (deep-supervision) output, plus the
    decoupling loss for a PRM network when ``decoupling``; the same for every
    network, so the figure compares activation memory, not the loss.
    """
    network.train()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 1, *patch, generator=generator)
    labels = (torch.rand(batch, 1, *patch, generator=generator) > 0.9).long()

    def step() -> None:
        if decoupling:
            output, encoded, decoded = network.forward_with_features(images)
        else:
            output = network(images)
        loss = sum(F.cross_entropy(o, labels[:, 0]) for o in split_outputs(output, images))
        if decoupling:
            loss = loss + 0.1 * sum(decoupling_terms(network, images, labels, encoded, decoded))
        loss.backward()

    peak = peak_tensor_bytes(step, torch.device("cpu"))
    network.zero_grad(set_to_none=True)
    network.eval()
    return peak / MB


def segment_seconds(network: nn.Module, image: np.ndarray, patch: Sequence[int], device: torch.device, repeats: int = 3) -> float:
    """Median wall time of sliding-window segmentation of one normalised image (Z, Y, X)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predict_probabilities(network, image, patch, device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def profile_network(
    network: nn.Module,
    patch: Sequence[int],
    device: torch.device,
    image: Optional[np.ndarray] = None,
    repeats: int = 3,
) -> ModelProfile:
    """Parameters, FLOPs and forward memory; segmentation time too when ``image`` (normalised, Z, Y, X) is given."""
    gflops, memory = forward_cost(network, patch, device)
    seconds = segment_seconds(network, image, patch, device, repeats) if image is not None else None
    return ModelProfile(count_parameters(network), gflops, memory, seconds)


REPORT_ROWS = (  # ModelProfile field, row name, number format
    ("parameters", "parameters", "{:,.0f}"),
    ("gflops", "GFLOPs per patch", "{:.2f}"),
    ("forward_memory_mb", "peak forward memory (MB)", "{:.1f}"),
    ("segment_seconds", "segment one volume (s)", "{:.2f}"),
    ("mean_dice", "mean Dice (validation)", "{:.4f}"),
)


def format_table(rows: dict[str, ModelProfile]) -> str:
    """A Markdown table with one column per network (e.g. "before", "after") and the after/before ratio."""
    names = list(rows)
    lines = ["| | " + " | ".join(names) + (" | after / before |" if len(names) == 2 else " |"),
             "|---" * (len(names) + 1 + (len(names) == 2)) + "|"]
    for field, label, fmt in REPORT_ROWS:
        values = [getattr(rows[n], field) for n in names]
        cells = ["-" if v is None else fmt.format(v) for v in values]
        ratio = ""
        if len(names) == 2:
            ratio = " | -" if None in values or not values[0] else f" | {values[1] / values[0]:.2f}"
        lines.append(f"| {label} | " + " | ".join(cells) + ratio + " |")
    return "\n".join(lines)
