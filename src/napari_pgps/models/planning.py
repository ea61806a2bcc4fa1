"""Planning a U-Net from the patch size and the voxel spacing, the way nnU-Net does.

The rules (nnU-Net's ``get_pool_and_conv_props``, re-stated):

* Pool along an axis while its feature map stays at least ``MIN_FEATURE_MAP``
  voxels after pooling and its current spacing is within 2x of the finest
  current spacing (so anisotropic axes wait until the others have caught up).
* A convolution kernel is 3 along an axis once that axis's spacing is within
  2x of the finest, else 1 (no blurring across thick slices).
* A patch the network takes is a multiple of ``2 ** poolings`` along each axis.

All sizes and spacings are (Z, Y, X).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from ..errors import InputError

MIN_FEATURE_MAP = 4
MAX_POOLINGS = 5


@dataclass(frozen=True)
class UNetPlan:
    """Kernel sizes and strides per resolution level.

    ``strides[0]`` is (1, 1, 1) (the first level works at full resolution);
    ``strides[i]`` is the downsampling into level ``i``.
    """

    kernel_sizes: list[tuple[int, int, int]]
    strides: list[tuple[int, int, int]]

    @property
    def poolings(self) -> tuple[int, int, int]:
        """Number of 2x poolings per axis (Z, Y, X)."""
        return tuple(sum(1 for s in self.strides if s[a] == 2) for a in range(3))

    @property
    def divisor(self) -> tuple[int, int, int]:
        """A patch the network takes is a multiple of this, per axis."""
        return tuple(2**p for p in self.poolings)

    @classmethod
    def with_poolings(cls, poolings: Sequence[int]) -> "UNetPlan":
        """A plan of 3x3x3 kernels with ``poolings`` 2x poolings per axis (Z, Y, X), each axis pooled at the first
        levels: a network given by its poolings alone (``napari-pgps schedule --poolings``)."""
        levels = max(int(p) for p in poolings)
        strides = [(1, 1, 1)] + [tuple(2 if level < p else 1 for p in poolings) for level in range(levels)]
        return cls(kernel_sizes=[(3, 3, 3)] * (levels + 1), strides=strides)


def plan_unet(patch_size: Sequence[int], spacing: Sequence[float], max_poolings: int = MAX_POOLINGS) -> UNetPlan:
    """Plan poolings and kernels for a final patch (Z, Y, X) and spacing (Z, Y, X) in mm."""
    size = [float(s) for s in patch_size]
    current = [float(s) for s in spacing]
    pools = [0, 0, 0]
    kernel = [1, 1, 1]
    kernels: list[tuple[int, int, int]] = []
    strides: list[tuple[int, int, int]] = [(1, 1, 1)]
    while True:
        finest = min(current)
        for a in range(3):
            if current[a] / finest < 2:
                kernel[a] = 3
        candidates = [a for a in range(3) if size[a] >= 2 * MIN_FEATURE_MAP and pools[a] < max_poolings]
        if not candidates:
            break
        finest_candidate = min(current[a] for a in candidates)
        candidates = [a for a in candidates if current[a] / finest_candidate < 2]
        if len(candidates) == 1 and size[candidates[0]] < 3 * MIN_FEATURE_MAP:
            break
        if not candidates:
            break
        kernels.append(tuple(kernel))
        stride = [1, 1, 1]
        for a in candidates:
            stride[a] = 2
            pools[a] += 1
            current[a] *= 2
            size[a] = math.ceil(size[a] / 2)
        strides.append(tuple(stride))
    kernels.append(tuple(kernel))
    return UNetPlan(kernel_sizes=kernels, strides=strides)


def level_channels(levels: int, base: int, maximum: int) -> list[int]:
    """Feature maps per level: base, 2*base, ... capped at ``maximum``."""
    return [min(base * 2**i, maximum) for i in range(levels)]


def round_up(patch_size: Sequence[int], divisor: Sequence[int]) -> tuple[int, int, int]:
    """Each axis rounded up to a multiple of its divisor."""
    return tuple(int(math.ceil(p / d) * d) for p, d in zip(patch_size, divisor))


def plan_patch_size(
    median_shape: Sequence[int], spacing: Sequence[float], max_voxels: int
) -> tuple[tuple[int, int, int], UNetPlan]:
    """The final patch for a dataset: its median case shape, made a size the network takes.

    While the patch holds more than ``max_voxels`` voxels, its physically
    largest axis shrinks by one pooling step.

    Returns:
        (patch (Z, Y, X), its plan)
    """
    patch = tuple(int(s) for s in median_shape)
    while True:
        patch, plan = _takeable(patch, spacing)
        if math.prod(patch) <= max_voxels or all(p <= d for p, d in zip(patch, plan.divisor)):
            return patch, plan
        axis = max(range(3), key=lambda a: patch[a] * spacing[a])
        shrunk = list(patch)
        shrunk[axis] = max(patch[axis] - plan.divisor[axis], plan.divisor[axis])
        patch = tuple(shrunk)


def _takeable(patch: tuple[int, ...], spacing: Sequence[float]) -> tuple[tuple[int, int, int], UNetPlan]:
    """Round the patch up until it is a multiple of the divisor of its own plan."""
    while True:
        plan = plan_unet(patch, spacing)
        rounded = round_up(patch, plan.divisor)
        if rounded == tuple(patch):
            return rounded, plan
        patch = rounded


def check_patch_size(patch_size: Sequence[int], divisor: Sequence[int], what: str = "patch size") -> None:
    """Raise a clear error unless every axis of the patch is a positive multiple of the divisor."""
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != 3 or any(p <= 0 for p in patch):
        raise InputError(f"{what} {patch} must be three positive sizes (Z, Y, X).")
    if any(p % d for p, d in zip(patch, divisor)):
        suggestion = " ".join(str(s) for s in round_up(patch, divisor))
        raise InputError(
            f"{what} {' x '.join(map(str, patch))} cannot be taken by the network: each axis (Z, Y, X) must be a "
            f"multiple of {' x '.join(map(str, divisor))} (its poolings). Try {suggestion}."
        )
