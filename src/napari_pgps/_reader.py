"""napari reader for NIfTI volumes, placed in world space with their full direction.

Each layer's ``affine`` maps its (Z, Y, X) voxels to the world (z, y, x) the
file's affine gives (RAS millimetres, axes in napari's order), so a volume
stored in LPS or obliquely, or at another voxel size, lies where it belongs and
lines up with any other volume of the same patient. An image of several
channels (a 4D NIfTI) opens as one layer per channel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

from .data.volume import NIFTI_SUFFIXES, nifti_codes, read_volume, reverse_axes

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
    """Layer data tuples ((Z, Y, X) arrays) for one or more NIfTI files.

    ``metadata`` holds the file's NIfTI ``affine``, its ``path`` and its
    header's sform/qform codes and units (``nifti``), for writing results back
    as the file was.
    """
    layers = []
    for item in [path] if isinstance(path, str) else path:
        item = Path(item)
        labels = is_label_file(item)
        volume = read_volume(item, kind="labels" if labels else "image")
        meta = {
            "name": volume.name,
            "affine": reverse_axes(volume.affine),
            "metadata": {"affine": volume.affine, "path": str(item), "spacing": volume.spacing,
                         "nifti": nifti_codes(volume.header)},
        }
        if volume.channels > 1:
            meta["channel_axis"] = 0
            meta["name"] = [f"{volume.name} [{c}]" for c in range(volume.channels)]
        layers.append((volume.array, meta, "labels" if labels else "image"))
    return layers
