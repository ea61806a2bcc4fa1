"""napari writer: a Labels layer saved as NIfTI with its source image's affine."""

from __future__ import annotations

from typing import Any

import numpy as np

from .data.volume import Volume, affine_from_spacing, write_volume


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """Write a 3D labels layer (Z, Y, X) to ``path`` (``.nii`` or ``.nii.gz``).

    The affine is the one kept in the layer's metadata (the source image's,
    set by our reader and the Segment widget); without one it is built from
    the layer's scale and translate.
    """
    array = np.asarray(data)
    affine = (meta.get("metadata") or {}).get("affine")
    if affine is None:
        scale = tuple(float(s) for s in meta.get("scale", (1.0, 1.0, 1.0)))[-3:]
        affine = affine_from_spacing(scale)
        affine[:3, 3] = [float(t) for t in tuple(meta.get("translate", (0.0, 0.0, 0.0)))[-3:][::-1]]
    values = array.astype(np.uint8 if array.max(initial=0) < 256 else np.int16)
    return [str(write_volume(Volume(values, np.asarray(affine, dtype=float)), path))]
