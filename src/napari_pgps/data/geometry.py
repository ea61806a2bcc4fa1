"""Where voxels are: orientation, spacing and resampling, the nonzero region.

Training and inference work in one canonical orientation (by default RAS: the
NIfTI voxel axes (i, j, k) point right, anterior, superior; our arrays, whose
axes are (Z, Y, X) = (k, j, i), then run superior, anterior, right) and at the
plan's target spacing. A volume stored any other way (axes permuted or
flipped, another voxel size) is brought there first, and every prediction is
taken back to the input's own grid, so the same anatomy gets the same answer
in world space.

Reorientation only permutes and flips axes (the closest canonical axes, as
nibabel's ``as_closest_canonical``): it moves no voxel value, so it is exactly
undone. Resampling follows nnU-Net's rules (re-stated, not copied):

* target spacing: the median spacing of the cases; when one axis is much
  thicker than the others (its spacing more than 3x theirs and its size less
  than a third of theirs), that axis takes the 10th percentile of its spacings
  instead, but not less than the other axes' spacing;
* images: third-order spline; when the data is anisotropic (spacing ratio
  above 3) with one thickest axis, in-plane with third order and along the
  thick axis with nearest neighbour, so thick slices are not blurred into
  each other (two axes tied for the thickest: all three alike);
* label maps: each label as a mask resampled linearly (nearest along the
  thick axis) and thresholded at 0.5, so boundaries do not shift;
* probabilities: linear.

All arrays are (..., Z, Y, X) and spacings (sz, sy, sx) in mm.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

ANISOTROPY_RATIO = 3.0
"""Spacing ratio above which an axis is resampled on its own (nnU-Net's threshold)."""
THICK_AXIS_PERCENTILE = 10
SAME_SPACING = 1e-3
"""Relative difference under which two axes' spacings count as the same (affines carry rounding noise)."""

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
"""(start, stop) per axis (Z, Y, X)."""


# -- orientation ---------------------------------------------------------------------
def orientation_of(affine: np.ndarray) -> str:
    """The axis codes of the NIfTI voxel axes (i, j, k), e.g. ``"RAS"`` or ``"LPS"`` (closest, for oblique affines)."""
    import nibabel as nib

    return "".join(nib.aff2axcodes(np.asarray(affine, dtype=float)))


def reorient(array: np.ndarray, affine: np.ndarray, codes: str) -> tuple[np.ndarray, np.ndarray]:
    """The array (..., Z, Y, X) and affine with voxel axes (i, j, k) pointing to ``codes`` (e.g. "RAS").

    Only permutes and flips axes, keeping every voxel at its place in the
    world; :func:`reorient_array` back to the input's own codes
    (:func:`orientation_of`) undoes it exactly.
    """
    import nibabel.orientations as nio

    affine = np.asarray(affine, dtype=float)
    transform = nio.ornt_transform(nio.io_orientation(affine), nio.axcodes2ornt(tuple(codes)))
    return _apply(array, transform), affine @ nio.inv_ornt_aff(transform, array.shape[::-1][:3])


def canonical_grid(shape: Sequence[int], affine: np.ndarray, codes: str) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """The shape (Z, Y, X) and spacing (sz, sy, sx) a volume of ``shape`` and ``affine`` has once reoriented to ``codes``."""
    import nibabel.orientations as nio

    affine = np.asarray(affine, dtype=float)
    transform = nio.ornt_transform(nio.io_orientation(affine), nio.axcodes2ornt(tuple(codes)))
    shape_xyz = list(shape)[::-1]
    new_xyz = [0, 0, 0]
    for axis, (target, _) in enumerate(transform):
        new_xyz[int(target)] = int(shape_xyz[axis])
    return tuple(new_xyz[::-1]), spacing_of(affine @ nio.inv_ornt_aff(transform, shape_xyz))


def reorient_array(array: np.ndarray, from_codes: str, to_codes: str) -> np.ndarray:
    """``array`` (..., Z, Y, X) whose voxel axes (i, j, k) point to ``from_codes``, with them pointing to ``to_codes``."""
    import nibabel.orientations as nio

    return _apply(array, nio.ornt_transform(nio.axcodes2ornt(tuple(from_codes)), nio.axcodes2ornt(tuple(to_codes))))


def _apply(array: np.ndarray, transform: np.ndarray) -> np.ndarray:
    import nibabel.orientations as nio

    order = tuple(range(array.ndim))[::-1]  # to (x, y, z[, c]) for nibabel, and back
    return np.ascontiguousarray(np.transpose(nio.apply_orientation(np.transpose(array, order), transform), order))


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size (sz, sy, sx) in mm of a NIfTI affine."""
    sizes = np.sqrt((np.asarray(affine, dtype=float)[:3, :3] ** 2).sum(axis=0))  # (sx, sy, sz)
    return tuple(float(s) for s in sizes[::-1])


# -- spacing -------------------------------------------------------------------------
def target_spacing(spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]]) -> tuple[float, float, float]:
    """The spacing (sz, sy, sx) to train at, from every case's spacing and (cropped) shape (nnU-Net's rule)."""
    spacings = np.asarray(spacings, dtype=float)
    target = np.percentile(spacings, 50, axis=0)
    sizes = np.percentile(np.asarray(shapes, dtype=float), 50, axis=0)
    thick = int(np.argmax(target))
    others = [a for a in range(3) if a != thick]
    if target[thick] > ANISOTROPY_RATIO * max(target[others]) and sizes[thick] * ANISOTROPY_RATIO < min(sizes[others]):
        thick_spacing = float(np.percentile(spacings[:, thick], THICK_AXIS_PERCENTILE))
        target[thick] = max(thick_spacing, float(max(target[others])) + 1e-5)
    return tuple(float(t) for t in target)


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, int, int]:
    """The shape (Z, Y, X) of a volume of ``shape`` at ``spacing`` once resampled to ``target``."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target))


def thick_axis(spacing: Sequence[float], target: Sequence[float]) -> Optional[int]:
    """The axis to resample on its own (nearest neighbour), or ``None`` to resample all three alike.

    nnU-Net's rule: the first of ``spacing`` and ``target`` (sz, sy, sx) that
    is anisotropic (largest over smallest above :data:`ANISOTROPY_RATIO`)
    decides; its thick axis is the one with the largest spacing. When two axes
    share the largest spacing (e.g. 5 x 5 x 1 mm) there is no single thick
    axis, and all three are resampled alike. ``None`` also when neither is anisotropic.
    """
    for candidate in (spacing, target):
        candidate = np.asarray(candidate, dtype=float)
        if candidate.max() / candidate.min() > ANISOTROPY_RATIO:
            thickest = np.flatnonzero(np.isclose(candidate, candidate.max(), rtol=SAME_SPACING, atol=0))
            return int(thickest[0]) if len(thickest) == 1 else None
    return None


def resample(array: np.ndarray, shape: Sequence[int], order: int, separate_axis: Optional[int] = None,
             separate_order: int = 0) -> np.ndarray:
    """``array`` (C, Z, Y, X) float resampled to the spatial ``shape`` (Z, Y, X), channel by channel.

    Args:
        order: spline order (0 nearest, 1 linear, 3 cubic).
        separate_axis: resample this axis on its own with ``separate_order`` after the other two.
    """
    from skimage.transform import resize

    shape = tuple(int(s) for s in shape)
    if tuple(array.shape[1:]) == shape:
        return array.astype(np.float32, copy=False)
    out = np.empty((array.shape[0],) + shape, dtype=np.float32)
    for c, channel in enumerate(array.astype(np.float32, copy=False)):
        if separate_axis is None:
            out[c] = resize(channel, shape, order=order, mode="edge", anti_aliasing=False)
            continue
        in_plane = list(shape)
        in_plane[separate_axis] = channel.shape[separate_axis]
        step = resize(channel, in_plane, order=order, mode="edge", anti_aliasing=False)
        out[c] = resize(step, shape, order=separate_order, mode="edge", anti_aliasing=False)
    return out


def resample_labels(labels: np.ndarray, shape: Sequence[int], separate_axis: Optional[int] = None) -> np.ndarray:
    """A label map (Z, Y, X) resampled to ``shape``: each label's mask linearly (nearest along ``separate_axis``),
    kept where it is at least 0.5, labels in increasing order (a later one wins where two overlap)."""
    shape = tuple(int(s) for s in shape)
    if tuple(labels.shape) == shape:
        return labels
    out = np.zeros(shape, dtype=labels.dtype)
    for value in np.unique(labels):
        if value == 0:
            continue
        mask = resample((labels == value)[None].astype(np.float32), shape, 1, separate_axis, 0)[0]
        out[mask >= 0.5] = value
    return out


# -- the nonzero region ----------------------------------------------------------------
def nonzero_box(image: np.ndarray) -> tuple[Box, np.ndarray]:
    """The bounding box of the voxels where any channel of ``image`` (C, Z, Y, X) is not 0, holes filled,
    and that mask (Z, Y, X) bool. The whole volume when every voxel is 0 or none is."""
    from scipy.ndimage import binary_fill_holes

    mask = binary_fill_holes(np.any(image != 0, axis=0))
    if not mask.any():
        mask = np.ones(image.shape[1:], dtype=bool)
    box = []
    for axis in range(3):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append((int(present[0]), int(present[-1]) + 1))
    return tuple(box), mask


def crop(array: np.ndarray, box: Box) -> np.ndarray:
    """``array`` (..., Z, Y, X) cut to ``box``."""
    return array[(...,) + tuple(slice(a, b) for a, b in box)]


def box_volume_fraction(box: Box, shape: Sequence[int]) -> float:
    """Voxels in ``box`` as a share of ``shape``'s."""
    return math.prod(b - a for a, b in box) / math.prod(shape)
