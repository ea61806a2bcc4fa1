"""napari reader for NIfTI volumes: the layer's scale comes from the spacing, the affine is kept in its metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from .data.volume import NIFTI_SUFFIXES, read_volume

_LABEL_HINTS = ("label", "seg", "mask")


def napari_get_reader(path: Union[str, list[str]]) -> Optional[Callable]:
    """Return :func:`read_nifti` for ``.nii`` / ``.nii.gz`` paths, else ``None``."""
    paths = [path] if isinstance(path, str) else list(path)
    if paths and all(str(p).lower().endswith(NIFTI_SUFFIXES) for p in paths):
        return read_nifti
    return None


def is_label_file(path: Path) -> bool:
    """A label map by its name or folder (``labelsTr``, ``*_seg``, ``*label*``, ``*mask*``)."""
    text = "/".join(part.lower() for part in path.parts[-2:])
    return any(hint in text for hint in _LABEL_HINTS)


def read_nifti(path: Union[str, list[str]]) -> list[tuple]:
    """Layer data tuples (Z, Y, X arrays) for one or more NIfTI files.

    Each layer's ``scale`` is the voxel spacing in mm and its ``translate``
    the origin, so volumes with different spacings line up; ``metadata``
    holds the file's ``affine`` and ``path`` for writing results back.
    """
    layers = []
    for item in [path] if isinstance(path, str) else path:
        item = Path(item)
        labels = is_label_file(item)
        volume = read_volume(item, kind="labels" if labels else "image")
        translate = tuple(float(t) for t in np.asarray(volume.affine)[:3, 3][::-1])
        meta = {
            "name": volume.name,
            "scale": volume.spacing,
            "translate": translate,
            "metadata": {"affine": volume.affine, "path": str(item), "spacing": volume.spacing},
        }
        layers.append((volume.array, meta, "labels" if labels else "image"))
    return layers
