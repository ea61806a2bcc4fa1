"""Bringing one case to the grid the network works on, and a prediction back to the case's own grid.

    image (C, Z, Y, X) in its stored orientation and voxel size
      -> reoriented to the plan's orientation (axes permuted and flipped only)
      -> cut to its nonzero region
      -> normalised per channel
      -> resampled to the plan's spacing
    = the network's input; a prediction (K, Z', Y', X') goes back the same way
      (resampled, padded with background, reoriented) to the input's grid.

The same steps serve training (every case of a dataset, once, into the
preprocessed store) and segmentation (one input), so a model sees an input as
it saw its training cases.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from ..config import NormalizationConfig, RunConfig
from .dataset import check_image
from .geometry import (
    Box,
    crop,
    label_dtype,
    nonzero_box,
    orientation_of,
    reorient,
    reorient_array,
    resample,
    resample_labels,
    resampled_shape,
    spacing_of,
    thick_axis,
)
from .normalization import normalize
from .volume import Volume

FORMAT = 2
"""Bumped whenever preprocessing changes what it writes, so older preprocessed datasets are rebuilt."""


@dataclass(frozen=True)
class PreprocessingPlan:
    """What preprocessing needs of a resolved configuration."""

    orientation: str
    spacing: Optional[tuple[float, float, float]]
    """Target spacing (sz, sy, sx); ``None``: keep each case's own."""
    crop_to_nonzero: bool
    normalization: tuple[NormalizationConfig, ...]
    label_values: tuple[int, ...]
    """The classes' label values in index order (background first)."""
    ignore_label: Optional[int] = None
    """The value of nnU-Net v2's ignore label, stored as index :attr:`ignore_index`; ``None``: none."""

    @classmethod
    def of(cls, config: RunConfig) -> "PreprocessingPlan":
        p = config.preprocessing
        spacing = tuple(float(s) for s in config.model.spacing) if p.resample else None
        return cls(p.orientation, spacing, p.crop_to_nonzero, tuple(config.normalization), tuple(sorted(config.labels)),
                   config.ignore_label)

    @property
    def ignore_index(self) -> Optional[int]:
        """The label index of the ignore label's voxels: K, one past the K classes' indices 0..K-1 (``None``: none)."""
        return None if self.ignore_label is None else len(self.label_values)

    def key(self) -> str:
        """A short digest of the plan (and the format), naming its preprocessed dataset."""
        text = json.dumps({"format": FORMAT, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class CaseGeometry:
    """How a case's own grid relates to the preprocessed one (what it takes to put a prediction back).

    Shapes are (Z, Y, X); ``box`` is in the reoriented grid.
    """

    shape: tuple[int, int, int]
    orientation: str
    """The input's axis codes, e.g. "LPS"."""
    canonical_shape: tuple[int, int, int]
    box: Box
    spacing: tuple[float, float, float]
    """The reoriented input's spacing."""
    preprocessed_shape: tuple[int, int, int]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "CaseGeometry":
        box = tuple(tuple(int(v) for v in axis) for axis in values["box"])
        return cls(tuple(values["shape"]), values["orientation"], tuple(values["canonical_shape"]), box,
                   tuple(values["spacing"]), tuple(values["preprocessed_shape"]))

    @property
    def resampled(self) -> bool:
        cropped = tuple(b - a for a, b in self.box)
        return cropped != tuple(self.preprocessed_shape)

    def input_box(self, origin: Sequence[int], size: Sequence[int], orientation: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """A box (first voxel, size; Z, Y, X) of the preprocessed grid, on the input's own grid (nearest voxels).

        ``orientation`` is the plan's (the preprocessed grid's) orientation.
        """
        import nibabel.orientations as nio

        cropped = [b - a for a, b in self.box]
        scale = [c / p for c, p in zip(cropped, self.preprocessed_shape)]
        start = [o * f + a for o, f, (a, _) in zip(origin, scale, self.box)]
        extent = [n * f for n, f in zip(size, scale)]
        transform = nio.ornt_transform(nio.axcodes2ornt(tuple(orientation)), nio.axcodes2ornt(tuple(self.orientation)))
        out_start, out_extent = [0.0] * 3, [0.0] * 3
        for axis, (target, flip) in enumerate(transform):  # NIfTI (x, y, z) axes = our axes reversed
            ours, theirs = 2 - axis, 2 - int(target)
            out_extent[theirs] = extent[ours]
            out_start[theirs] = self.canonical_shape[ours] - start[ours] - extent[ours] if flip < 0 else start[ours]
        return tuple(int(round(v)) for v in out_start), tuple(max(1, int(round(v))) for v in out_extent)

    def describe(self, plan: PreprocessingPlan) -> list[str]:
        """What preprocessing did to this input, for a person: reorientation and resampling."""
        notes = []
        if self.orientation != plan.orientation:
            notes.append(f"reoriented from {self.orientation} to {plan.orientation}")
        if self.resampled and plan.spacing is not None:
            before = " x ".join(f"{s:g}" for s in self.spacing)
            after = " x ".join(f"{s:g}" for s in plan.spacing)
            notes.append(f"resampled from {before} mm to the model's {after} mm and back")
        return notes


def preprocess_image(image: Volume, plan: PreprocessingPlan) -> tuple[np.ndarray, CaseGeometry]:
    """The network's input for ``image`` ((Z, Y, X) or (C, Z, Y, X)): (C, Z', Y', X') float32, and its geometry.

    Raises:
        InputError: a 2D image (:func:`~napari_pgps.data.dataset.check_image`).
    """
    check_image(image)
    array, affine = reorient(image.channel_first(), image.affine, plan.orientation)
    spacing, canonical_shape = spacing_of(affine), tuple(int(n) for n in array.shape[1:])
    if plan.crop_to_nonzero:
        box, mask = nonzero_box(array)
        array, mask = crop(array, box), crop(mask, box)
    else:
        box, mask = tuple((0, n) for n in array.shape[1:]), None
    array = normalize(array, plan.normalization, mask)
    target = plan.spacing or spacing
    shape = resampled_shape(array.shape[1:], spacing, target)
    array = resample(array, shape, order=3, separate_axis=thick_axis(spacing, target))
    return array, CaseGeometry(image.shape, orientation_of(image.affine), canonical_shape, box, spacing, shape)


def preprocess_labels(labels: Volume, geometry: CaseGeometry, plan: PreprocessingPlan) -> np.ndarray:
    """The label map (Z, Y, X) of values, as label indices (uint8, or int16 beyond 256 indices) on the preprocessed
    grid: the classes 0..K-1, the ignore label's voxels :attr:`PreprocessingPlan.ignore_index` (K)."""
    array, _ = reorient(labels.array, labels.affine, plan.orientation)
    array = crop(array, geometry.box)
    values = list(plan.label_values) + ([plan.ignore_label] if plan.ignore_label is not None else [])
    lookup = np.zeros(max(max(values), int(array.max(initial=0))) + 1, dtype=np.int16)
    lookup[values] = np.arange(len(values))
    indices = lookup[array].astype(label_dtype(len(values) - 1))
    target = plan.spacing or geometry.spacing
    return resample_labels(indices, geometry.preprocessed_shape, thick_axis(geometry.spacing, target))


def restore_probabilities(probabilities: np.ndarray, geometry: CaseGeometry, plan: PreprocessingPlan) -> np.ndarray:
    """Class probabilities (K, Z', Y', X') on the preprocessed grid, on the input's own grid (K, Z, Y, X).

    Resampled linearly to the cropped region, padded with background outside it, reoriented back.
    """
    target = plan.spacing or geometry.spacing
    cropped = tuple(b - a for a, b in geometry.box)
    inside = resample(probabilities, cropped, order=1, separate_axis=thick_axis(geometry.spacing, target))
    full = np.zeros((probabilities.shape[0],) + tuple(geometry.canonical_shape), dtype=np.float32)
    full[0] = 1.0
    full[(slice(None),) + tuple(slice(a, b) for a, b in geometry.box)] = inside
    return reorient_array(full, plan.orientation, geometry.orientation)
