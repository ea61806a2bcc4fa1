"""Random patch crops with foreground oversampling and class-balance statistics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

_MAX_FOREGROUND_LOCATIONS = 20_000


@dataclass(frozen=True)
class PatchBatch:
    """A batch of crops.

    Attributes:
        images: float32 array (B, 1, Z, Y, X).
        labels: int64 array (B, 1, Z, Y, X) of label *indices* 0..K-1.
        class_fractions: voxel fraction of each label index in this batch (length K, sums to 1).
        case_indices: which case each crop came from.
        origins: each crop's first voxel (Z, Y, X) in its case (negative or past the end where padded).
    """

    images: np.ndarray
    labels: np.ndarray
    class_fractions: tuple[float, ...]
    case_indices: tuple[int, ...]
    origins: tuple[tuple[int, int, int], ...] = ()


def class_fractions(labels: np.ndarray, num_labels: int) -> tuple[float, ...]:
    """Voxel fraction of each label index 0..num_labels-1 in an integer array of any shape."""
    counts = np.bincount(np.asarray(labels).ravel(), minlength=num_labels)[:num_labels]
    total = max(int(counts.sum()), 1)
    return tuple(float(c) / total for c in counts)


class PatchSampler:
    """Draws random crops of any patch size from in-memory volumes.

    With probability ``foreground_probability`` a crop is centred on a voxel of
    a foreground label (the label chosen at random among those the case holds,
    as nnU-Net does), otherwise its position is uniform. Volumes smaller than
    the patch are padded (image with 0, the mean after z-scoring; labels with
    background) at a random offset.

    Args:
        images: normalised arrays (Z, Y, X) float32, one per case.
        labels: label-index arrays (Z, Y, X), same shapes.
        num_labels: K, background included.
        foreground_probability: share of crops centred on foreground.
        mirror: flip each crop along each axis with probability 0.5.
        rng: the generator all randomness is drawn from (saved in checkpoints).
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        num_labels: int,
        rng: np.random.Generator,
        foreground_probability: float = 0.33,
        mirror: bool = True,
    ) -> None:
        if not images:
            raise ValueError("the sampler needs at least one case")
        self.images = list(images)
        self.labels = list(labels)
        self.num_labels = num_labels
        self.rng = rng
        self.foreground_probability = foreground_probability
        self.mirror = mirror
        self._foreground = [self._foreground_locations(lab) for lab in self.labels]
        self.active = list(range(len(self.images)))

    def set_active(self, indices: Sequence[int]) -> None:
        """Draw crops only from these cases (the PDL data curriculum)."""
        if not indices:
            raise ValueError("at least one case must stay active")
        self.active = [int(i) for i in indices]

    def _foreground_locations(self, labels: np.ndarray) -> dict[int, np.ndarray]:
        """Per foreground label index, up to 20k voxel coordinates (N, 3)."""
        picker = np.random.default_rng(0)
        found = {}
        for index in range(1, self.num_labels):
            coords = np.argwhere(labels == index)
            if len(coords) > _MAX_FOREGROUND_LOCATIONS:
                coords = coords[picker.choice(len(coords), _MAX_FOREGROUND_LOCATIONS, replace=False)]
            if len(coords):
                found[index] = coords
        return found

    def sample(self, patch: Sequence[int], batch_size: int, crops_per_case: int = 1) -> PatchBatch:
        """Draw ``batch_size`` crops of shape ``patch`` (Z, Y, X).

        ``crops_per_case`` crops come from each case drawn, so a large batch of
        small patches reads only ``ceil(batch_size / crops_per_case)`` cases.
        """
        patch = tuple(int(p) for p in patch)
        images = np.empty((batch_size, 1) + patch, dtype=np.float32)
        labels = np.empty((batch_size, 1) + patch, dtype=np.int64)
        cases, origins = [], []
        drawn = [self.active[int(self.rng.integers(len(self.active)))] for _ in range(-(-batch_size // crops_per_case))]
        for b in range(batch_size):
            case = drawn[b // crops_per_case]
            start = self._crop_start(case, patch)
            image = _crop(self.images[case], start, patch, 0.0)
            label = _crop(self.labels[case], start, patch, 0)
            if self.mirror:
                axes = tuple(a for a in range(3) if self.rng.random() < 0.5)
                if axes:
                    image = np.flip(image, axes)
                    label = np.flip(label, axes)
            images[b, 0] = image
            labels[b, 0] = label
            cases.append(case)
            origins.append(tuple(int(v) for v in start))
        return PatchBatch(images, labels, class_fractions(labels, self.num_labels), tuple(cases), tuple(origins))

    def _crop_start(self, case: int, patch: tuple[int, ...]) -> np.ndarray:
        shape = np.array(self.images[case].shape)
        size = np.array(patch)
        low = np.minimum(0, shape - size)
        high = np.maximum(0, shape - size)
        foreground = self._foreground[case]
        if foreground and self.rng.random() < self.foreground_probability:
            keys = sorted(foreground)
            coords = foreground[keys[int(self.rng.integers(len(keys)))]]
            centre = coords[int(self.rng.integers(len(coords)))]
            return np.clip(centre - size // 2, low, high)
        return np.array([int(self.rng.integers(lo, hi + 1)) for lo, hi in zip(low, high)])


def _crop(array: np.ndarray, start: np.ndarray, patch: tuple[int, ...], fill: float) -> np.ndarray:
    """Crop ``patch`` from ``array`` at ``start`` (may lie outside: the outside is ``fill``)."""
    out = np.full(patch, fill, dtype=array.dtype)
    src, dst = [], []
    for s, p, n in zip(start, patch, array.shape):
        lo, hi = max(s, 0), min(s + p, n)
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[tuple(dst)] = array[tuple(src)]
    return out
