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

Two matrices place voxels in the world. A NIfTI affine takes a voxel index
(i, j, k) = (x, y, z) to world (x, y, z) RAS mm; napari's layers are placed by
the same matrix with every axis in the reverse order, taking our (Z, Y, X)
indices to world (z, y, x) (:func:`reverse_axes` turns one into the other, and
:func:`layer_to_world` composes a layer's placement). A label map is stored as
uint8, or int16 beyond 255 (:func:`label_dtype`).
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
AFFINE_TOLERANCE = 1e-3
"""Largest difference of any entry (mm) under which two affines place voxels alike (affines carry rounding noise)."""

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
"""(start, stop) per axis (Z, Y, X)."""


# -- affines, layers and label types ------------------------------------------------------
def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size (sz, sy, sx) in mm of a NIfTI affine (voxel (i, j, k) -> world (x, y, z)): the lengths of its
    columns, in our (Z, Y, X) order. For a napari layer's matrix, ``spacing_of(reverse_axes(matrix))``."""
    sizes = np.sqrt((np.asarray(affine, dtype=float)[:3, :3] ** 2).sum(axis=0))  # (sx, sy, sz)
    return tuple(float(s) for s in sizes[::-1])


def affine_from_spacing(spacing: Sequence[float]) -> np.ndarray:
    """A diagonal NIfTI affine for a (sz, sy, sx) spacing and origin 0."""
    sz, sy, sx = spacing
    return np.diag([sx, sy, sz, 1.0])


def reverse_axes(affine: np.ndarray) -> np.ndarray:
    """A NIfTI affine (voxel (i, j, k) -> world (x, y, z)) as the affine of our (Z, Y, X) arrays to world (z, y, x),
    as napari takes it; and back (the operation is its own inverse)."""
    flip = np.eye(4)[[2, 1, 0, 3]]
    return flip @ np.asarray(affine, dtype=float) @ flip


def layer_to_world(affine: Optional[np.ndarray] = None, scale: Optional[Sequence[float]] = None,
                   translate: Optional[Sequence[float]] = None, rotate: Optional[np.ndarray] = None,
                   shear: Optional[np.ndarray] = None, ndim: int = 3) -> np.ndarray:
    """The 4x4 matrix taking a napari layer's last three data axes (Z, Y, X) to world (z, y, x).

    A layer is placed by its ``affine`` after its own scale, translate, rotation
    and shear, composed as napari composes them:
    ``affine @ [rotate @ shear @ diag(scale) | translate]``.

    Args:
        affine: the layer's affine, (ndim + 1) x (ndim + 1) (napari's ``layer.affine.affine_matrix``); ``None``
            for none.
        scale, translate: one value per data axis (defaults 1 and 0).
        rotate: the rotation matrix, ndim x ndim (napari's ``layer.rotate``); ``None`` for none.
        shear: the shear as napari gives it, a vector of the upper triangle's values (``layer.shear``) or an
            ndim x ndim triangular matrix; ``None`` for none.
        ndim: the layer's number of data axes, when ``scale`` and ``translate`` are not given.
    """
    ndim = len(scale) if scale is not None else len(translate) if translate is not None else ndim
    scale_matrix = np.diag(np.ones(ndim) if scale is None else np.asarray(scale, dtype=float))
    rotate_matrix = np.eye(ndim) if rotate is None else np.asarray(rotate, dtype=float)
    if shear is None:
        shear_matrix = np.eye(ndim)
    elif np.ndim(shear) == 2:
        shear_matrix = np.asarray(shear, dtype=float)
    else:
        shear_matrix = np.eye(ndim)
        shear_matrix[np.triu(np.ones((ndim, ndim)), 1).astype(bool)] = shear
    placement = np.eye(ndim + 1)
    placement[:-1, :-1] = rotate_matrix @ shear_matrix @ scale_matrix
    placement[:-1, -1] = 0.0 if translate is None else np.asarray(translate, dtype=float)
    world = placement if affine is None else np.asarray(affine, dtype=float) @ placement
    return world[-4:, -4:]


def geometry_difference(first: np.ndarray, second: np.ndarray) -> str:
    """How two NIfTI affines (voxel (x, y, z) -> world mm) differ, in words for one line: the largest spacing
    difference (with its axis), the distance between the origins and the largest angle between axes, each only
    where it exceeds :data:`AFFINE_TOLERANCE`; e.g. "spacing along Z 1 vs 1.2 mm, origin differs by 3.2 mm"."""
    first, second = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    sizes = [np.linalg.norm(a[:3, :3], axis=0) for a in (first, second)]  # (sx, sy, sz)
    notes = []
    axis = int(np.argmax(np.abs(sizes[0] - sizes[1])))
    if abs(sizes[0][axis] - sizes[1][axis]) > AFFINE_TOLERANCE:
        notes.append(f"spacing along {'XYZ'[axis]} {sizes[0][axis]:.4g} vs {sizes[1][axis]:.4g} mm")
    shift = float(np.linalg.norm(first[:3, 3] - second[:3, 3]))
    if shift > AFFINE_TOLERANCE:
        notes.append(f"origin differs by {shift:.3g} mm")
    cosines = np.sum((first[:3, :3] / sizes[0]) * (second[:3, :3] / sizes[1]), axis=0)
    angle = float(np.degrees(np.arccos(np.clip(cosines, -1.0, 1.0))).max())
    if angle > np.degrees(AFFINE_TOLERANCE):
        notes.append(f"axes turned by up to {angle:.3g} degrees")
    return ", ".join(notes) or "the affines differ slightly"


def display_axes(affine: np.ndarray) -> tuple[int, int, int]:
    """For a NIfTI ``affine``, the order of our (Z, Y, X) array axes that lies nearest world (z, y, x).

    ``np.transpose(array, display_axes(affine))`` has axis ``i`` along world axis
    ``i`` (up to a flip or an oblique tilt): ``(0, 1, 2)`` for a file stored
    axial (RAS, LPS, ...), e.g. ``(1, 2, 0)`` for one whose voxel axes run
    along world (y, z, x). An affine without a clear direction keeps its order.
    """
    import nibabel.orientations as nio

    world_of_voxel = nio.io_orientation(np.asarray(affine, dtype=float))[:, 0]  # NIfTI voxel axis i, j, k -> x, y, z
    if np.isnan(world_of_voxel).any():
        return (0, 1, 2)
    # array axis a is NIfTI voxel axis 2 - a; world axis w is napari axis 2 - w
    axes = [0, 0, 0]
    for array_axis in range(3):
        axes[2 - int(world_of_voxel[2 - array_axis])] = array_axis
    return tuple(axes)


def axes_matrix(axes: Sequence[int]) -> np.ndarray:
    """The 4x4 matrix taking an index of ``np.transpose(array, axes)`` (3D) to the same voxel's index of ``array``.

    A layer placed by ``affine`` shows the transposed array where ``array`` lay
    with ``affine @ axes_matrix(axes)``.
    """
    matrix = np.zeros((4, 4))
    matrix[3, 3] = 1.0
    for new, old in enumerate(axes):
        matrix[old, new] = 1.0
    return matrix


def label_dtype(highest_label: int) -> np.dtype:
    """The type a label map whose highest value is ``highest_label`` is kept in: uint8 up to 255, else int16."""
    return np.dtype(np.uint8 if highest_label < 256 else np.int16)


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
