"""napari reader for NIfTI and TIFF volumes, placed in world space with their full direction.

Each layer's ``affine`` maps its (Z, Y, X) voxels to the world (z, y, x) the
file's affine gives (RAS millimetres, axes in napari's order), so a volume
stored in LPS or obliquely, or at another voxel size, lies where it belongs and
lines up with any other volume of the same patient. An image of several
channels (a 4D NIfTI, an ImageJ hyperstack) opens as one layer per channel. A TIFF
lies at the spacing its resolution tags and ImageJ metadata give, in mm (1 mm
where the file names none), as ``read_volume`` reads it for training.

napari shows a 2D slice through the sub-block of the affine for the two world
axes on screen, taken from the same two data axes; for a file stored with its
axes in another order (sagittal or coronal storage: voxel axes along world
(y, z, x), say) that block is not invertible and napari cannot draw the layer.
So the reader hands napari the array with its axes put in world order
(:func:`display_axes`: a transpose, no flips, no resampling; napari draws
flips and small obliques itself) and records that order in the layer's
metadata (``stored_axes``), which the writer uses to save results on the
file's own grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from .data.info import label_values
from .data.volume import NIFTI_SUFFIXES, TIFF_SUFFIXES, nifti_codes, read_volume, reverse_axes

_LABEL_HINTS = ("label", "seg", "mask")
_LABEL_FOLDERS = ("labelstr", "labelsts")
MAX_LABEL_VALUES = 256
"""A file with more distinct values than this is an image whatever its name (label maps hold a few classes)."""
STORED_AXES = "stored_axes"
"""Layer metadata key: the file's (Z, Y, X) array axis shown as each of the layer's axes (see :func:`display_axes`)."""


def napari_get_reader(path: Union[str, list[str]]) -> Optional[Callable]:
    """Return :func:`read_volumes` for ``.nii`` / ``.nii.gz`` / ``.tif`` / ``.tiff`` paths, else ``None``."""
    paths = [path] if isinstance(path, str) else list(path)
    if paths and all(str(p).lower().endswith(NIFTI_SUFFIXES + TIFF_SUFFIXES) for p in paths):
        return read_volumes
    return None


def is_label_file(path: Path) -> bool:
    """Whether a file's place says "label map": its folder is nnU-Net's ``labelsTr``/``labelsTs``, or its own name
    holds ``label``, ``seg`` or ``mask`` (a folder such as ``segmentation-study`` says nothing about its files)."""
    return path.parent.name.lower() in _LABEL_FOLDERS or any(hint in path.name.lower() for hint in _LABEL_HINTS)


def holds_labels(array: np.ndarray) -> bool:
    """Whether an array (Z, Y, X) can be a label map: whole numbers in 0..32767, at most :data:`MAX_LABEL_VALUES`
    distinct values."""
    return array.ndim == 3 and label_values(array, most=MAX_LABEL_VALUES) is not None


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


def axes_matrix(axes: tuple[int, ...]) -> np.ndarray:
    """The 4x4 matrix taking an index of ``np.transpose(array, axes)`` (3D) to the same voxel's index of ``array``.

    A layer placed by ``affine`` shows the transposed array where ``array`` lay
    with ``affine @ axes_matrix(axes)``.
    """
    matrix = np.zeros((4, 4))
    matrix[3, 3] = 1.0
    for new, old in enumerate(axes):
        matrix[old, new] = 1.0
    return matrix


def read_volumes(path: Union[str, list[str]]) -> list[tuple]:
    """Layer data tuples ((Z, Y, X) arrays in world order, see :func:`display_axes`) for one or more NIfTI or TIFF files.

    A file is a labels layer when its name or folder says so (:func:`is_label_file`)
    and its values can be labels (:func:`holds_labels`); otherwise an image.
    ``metadata`` holds the file's NIfTI ``affine``, its ``path``, ``spacing``
    (sz, sy, sx of the file's own axes), its header's sform/qform codes and
    units (``nifti``) and the file's axes in the layer (``stored_axes``), for
    writing results back as the file was.
    """
    layers = []
    for item in [path] if isinstance(path, str) else path:
        item = Path(item)
        volume = read_volume(item, kind="image")
        labels = is_label_file(item) and holds_labels(volume.array)
        axes = display_axes(volume.affine)
        array = volume.array
        if labels:
            array = array.astype(np.uint8 if array.max() < 256 else np.int16)
        if axes != (0, 1, 2):
            channels = array.ndim - 3  # a leading channel axis stays first
            array = np.ascontiguousarray(np.transpose(array, (*range(channels), *(channels + a for a in axes))))
        meta = {
            "name": volume.name,
            "affine": reverse_axes(volume.affine) @ axes_matrix(axes),
            "metadata": {"affine": volume.affine, "path": str(item), "spacing": volume.spacing,
                         "nifti": nifti_codes(volume.header), STORED_AXES: axes},
        }
        if volume.channels > 1:
            meta["channel_axis"] = 0
            meta["name"] = [f"{volume.name} [{c}]" for c in range(volume.channels)]
        layers.append((array, meta, "labels" if labels else "image"))
    return layers
