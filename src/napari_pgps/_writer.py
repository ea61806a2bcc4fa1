"""napari writer: a Labels layer saved as NIfTI where it lies in world space, with its source file's header codes."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._reader import STORED_AXES, axes_matrix
from .data.volume import Volume, nifti_header, reverse_axes, write_volume
from .errors import InputError


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """Write a 3D labels layer (Z, Y, X) to ``path`` (``.nii`` or ``.nii.gz``).

    The affine is the layer's placement in the world (its affine, scale,
    translate, rotation and shear), so the file lines up with the image it was
    drawn on whatever that image's orientation; the sform/qform codes and unit
    are the source file's when our reader or the Segment widget kept them. A
    layer whose axes our reader put in world order (``stored_axes`` in its
    metadata) is written with the source file's axis order, on its grid.

    Raises:
        InputError: the layer is not 3D.
    """
    from napari.utils.transforms import Affine

    array = np.asarray(data)
    if array.ndim != 3:
        raise InputError(f"{path}: the labels layer is {array.ndim}D (shape {array.shape}); only a 3D labels layer "
                         "can be saved as NIfTI.")
    given = {key: meta[key] for key in ("scale", "translate", "rotate", "shear") if meta.get(key) is not None}
    placement = Affine(**given, ndim=array.ndim).affine_matrix
    layer_affine = meta.get("affine")
    world = (np.asarray(layer_affine.affine_matrix if hasattr(layer_affine, "affine_matrix") else layer_affine)
             if layer_affine is not None else np.eye(array.ndim + 1)) @ placement
    metadata = meta.get("metadata") or {}
    stored = metadata.get(STORED_AXES)
    if stored is not None and tuple(stored) != (0, 1, 2):
        back = tuple(int(a) for a in np.argsort(stored))  # the layer's axes back in the file's order
        array, world = np.transpose(array, back), world @ axes_matrix(back)
    affine = reverse_axes(world)
    values = array.astype(np.uint8 if array.max(initial=0) < 256 else np.int16)
    volume = Volume(values, affine, header=nifti_header(affine, metadata.get("nifti") or {}))
    return [str(write_volume(volume, path))]
