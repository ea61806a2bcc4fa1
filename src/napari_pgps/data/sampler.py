"""Random patch crops from a preprocessed dataset, with foreground oversampling and class-balance statistics.

Drawing a batch has two halves, so the second can run in background
processes and still give the same batches:

* :meth:`PatchSampler.plan` (in the training process, with the run's random
  state): which cases the crops come from, which crops must be centred on
  foreground, and a seed;
* :meth:`PatchSampler.cut` (anywhere): the crops themselves, cut from the
  memory-mapped store and augmented, from that seed alone.

Foreground oversampling follows nnU-Net by default: the last ``round(B x p)``
crops of a batch of B are centred on a foreground voxel (p = 0.33: one of
two at B = 2), the label chosen at random among those the case holds. Under
DDP the rule counts the global batch, not each rank's share (nnU-Net's rule
too): with B = 2 on two ranks, rank 1's crop is forced. With
``oversampling="crop"`` each crop is forced with probability p instead.

Where a crop lies follows nnU-Net's data loader: the final patch lies inside
the case (or holds all of it, when the case is smaller), and the larger crop
that ``augmentation="nnunet"`` (at a strength above 0) cuts around it for
rotation and scaling may reach past the case's border by up to half its
enlargement, so voxels at the border are in training patches as often as
nnU-Net's. Whatever lies outside the case is padded: image 0 (the normalised
mean) and labels background (nnU-Net pads its labels with -1 and then turns -1
into background).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .augmentation import Augmentation
from .store import PreprocessedDataset

OVERSAMPLING_RULES = ("batch", "crop")


@dataclass(frozen=True)
class PatchBatch:
    """A batch of crops.

    Attributes:
        images: float32 array (B, C, Z, Y, X).
        labels: uint8 (int16 beyond 256 labels) array (B, 1, Z, Y, X) of label *indices* 0..K-1.
        class_fractions: voxel fraction of each label index in this batch (length K, sums to 1).
        case_indices: which case (index into the sampler's names) each crop came from.
        origins: each crop's first voxel (Z, Y, X) in its preprocessed case (negative or past the end where padded).
        augmentation_strength: the strength (0 to 1) the crops were augmented at.
    """

    images: np.ndarray
    labels: np.ndarray
    class_fractions: tuple[float, ...]
    case_indices: tuple[int, ...]
    origins: tuple[tuple[int, int, int], ...] = ()
    augmentation_strength: float = 1.0


@dataclass(frozen=True)
class BatchPlan:
    """What :meth:`PatchSampler.cut` needs to cut one batch: a plain, picklable description."""

    patch: tuple[int, int, int]
    case_indices: tuple[int, ...]
    """One per crop."""
    foreground: tuple[bool, ...]
    """Whether each crop is centred on foreground."""
    seed: int
    augmentation_strength: float = 1.0
    """The strength in [0, 1] of the sampler's augmentation for this batch (:class:`.augmentation.Augmentation`)."""


def class_fractions(labels: np.ndarray, num_labels: int) -> tuple[float, ...]:
    """Voxel fraction of each label index 0..num_labels-1 in an integer array of any shape."""
    counts = np.bincount(np.asarray(labels).ravel(), minlength=num_labels)[:num_labels]
    total = max(int(counts.sum()), 1)
    return tuple(float(c) / total for c in counts)


class PatchSampler:
    """Draws random crops of any patch size from the cases of a preprocessed dataset.

    Args:
        store: the preprocessed dataset.
        names: the cases to draw from (their order gives the case indices).
        num_labels: K, background included.
        rng: the generator :meth:`plan` draws from (saved in checkpoints).
        foreground_probability: the share p of crops forced onto foreground.
        oversampling: "batch" (the last ``round(B x p)`` crops of each batch) or "crop" (each with probability p).
        augmentation: what is done to each crop (its spatial part needs a larger crop, see
            :meth:`Augmentation.crop_size`), at the strength each batch's plan gives.
    """

    def __init__(
        self,
        store: PreprocessedDataset,
        names: Sequence[str],
        num_labels: int,
        rng: np.random.Generator,
        foreground_probability: float = 0.33,
        oversampling: str = "batch",
        augmentation: Optional[Augmentation] = None,
    ) -> None:
        if not names:
            raise ValueError("the sampler needs at least one case")
        if oversampling not in OVERSAMPLING_RULES:
            raise ValueError(f"oversampling must be one of {OVERSAMPLING_RULES}, not {oversampling!r}")
        self.store = store
        self.names = list(names)
        self.num_labels = num_labels
        self.rng = rng
        self.foreground_probability = foreground_probability
        self.oversampling = oversampling
        self.augmentation = augmentation or Augmentation("none")
        self.active = list(range(len(self.names)))

    def __getstate__(self) -> dict:
        """Background workers get everything but the random state, which stays with :meth:`plan`."""
        return {**self.__dict__, "rng": None}

    def set_active(self, indices: Sequence[int]) -> None:
        """Draw crops only from these cases (the PDL data curriculum)."""
        if not indices:
            raise ValueError("at least one case must stay active")
        self.active = [int(i) for i in indices]

    def plan(self, patch: Sequence[int], batch_size: int, crops_per_case: int = 1,
             share: Optional[range] = None, strength: float = 1.0) -> BatchPlan:
        """Draw the cases and foreground crops of a batch of ``batch_size`` crops of ``patch`` (Z, Y, X).

        ``crops_per_case`` crops come from each case drawn, so a large batch of
        small patches reads only ``ceil(n / crops_per_case)`` cases for its n crops.

        Args:
            batch_size: B, the step's global batch (all DDP ranks together).
            share: under DDP, the indices (into the global batch) of this rank's crops
                (:func:`~napari_pgps.engine.distributed.batch_share`); all B crops when ``None``.
            strength: the augmentation's strength for this batch, 0 (none) to 1 (full; see
                :func:`~napari_pgps.data.augmentation.augmentation_strength`).
        """
        share = range(batch_size) if share is None else share
        crops = len(share)
        drawn = [self.active[int(self.rng.integers(len(self.active)))] for _ in range(-(-crops // crops_per_case))]
        cases = tuple(drawn[b // crops_per_case] for b in range(crops))
        if self.oversampling == "batch":
            forced = int(round(batch_size * self.foreground_probability))
            foreground = tuple(b >= batch_size - forced for b in share)
        else:
            foreground = tuple(bool(self.rng.random() < self.foreground_probability) for _ in range(crops))
        return BatchPlan(tuple(int(p) for p in patch), cases, foreground, int(self.rng.integers(2**63)),
                         float(strength))

    def cut(self, plan: BatchPlan) -> PatchBatch:
        """The crops of a planned batch, augmented; depends on ``plan`` alone."""
        rng = np.random.default_rng(plan.seed)
        augmentation = self.augmentation.at_strength(plan.augmentation_strength)
        size = augmentation.crop_size(plan.patch)
        margin = (np.array(size) - np.array(plan.patch)) // 2  # from the crop's first voxel to the patch's
        images, labels, origins = [], [], []
        for case, foreground in zip(plan.case_indices, plan.foreground):
            name = self.names[case]
            image, label_map = self.store.image(name), self.store.labels(name)
            origin = self._patch_origin(name, label_map.shape, plan.patch, foreground, rng)
            start = origin - margin
            image_crop = _crop(image, start, size, 0.0)
            label_crop = _crop(label_map[None], start, size, 0)
            del image, label_map  # close the memory maps: their pages do not stay in this process
            image_crop, label_crop = augmentation(image_crop, label_crop, plan.patch, rng)
            images.append(image_crop)
            labels.append(label_crop)
            origins.append(tuple(int(a) for a in origin))
        label_batch = np.stack(labels)
        return PatchBatch(np.stack(images), label_batch, class_fractions(label_batch, self.num_labels),
                          plan.case_indices, tuple(origins), plan.augmentation_strength)

    def sample(self, patch: Sequence[int], batch_size: int, crops_per_case: int = 1) -> PatchBatch:
        """:meth:`plan` and :meth:`cut` in one go (in this process)."""
        return self.cut(self.plan(patch, batch_size, crops_per_case))

    def _patch_origin(self, name: str, shape: Sequence[int], patch: Sequence[int], foreground: bool,
                      rng: np.random.Generator) -> np.ndarray:
        """First voxel (Z, Y, X) of a final ``patch`` in a case of ``shape``: uniform, or centred on a foreground
        voxel; either way inside the case along each axis where the patch fits, else holding all of it."""
        shape, patch = np.array(shape), np.array(patch)
        low, high = np.minimum(0, shape - patch), np.maximum(0, shape - patch)
        stored = self.store.info(name)["foreground"] if foreground else {}
        rows = {index: span for index, span in stored.items() if int(index) < self.num_labels}  # not the ignore label
        if rows:
            first, last = rows[sorted(rows)[int(rng.integers(len(rows)))]]
            centre = np.asarray(self.store.foreground(name)[int(rng.integers(first, last)), 1:])
            return np.clip(centre - patch // 2, low, high)
        return np.array([int(rng.integers(lo, hi + 1)) for lo, hi in zip(low, high)])


def _crop(array: np.ndarray, start: np.ndarray, size: Sequence[int], fill: float) -> np.ndarray:
    """Crop ``size`` (Z, Y, X) from ``array`` (C, Z, Y, X) at ``start`` (may lie outside: the outside is ``fill``)."""
    out = np.full((array.shape[0],) + tuple(int(s) for s in size), fill, dtype=array.dtype)
    src, dst = [slice(None)], [slice(None)]
    for s, p, n in zip(start, size, array.shape[1:]):
        lo, hi = max(int(s), 0), min(int(s) + int(p), n)
        src.append(slice(lo, hi))
        dst.append(slice(lo - int(s), hi - int(s)))
    out[tuple(dst)] = array[tuple(src)]
    return out
