"""napari writers: a Labels layer saved where it lies in world space, on its source's grid.

* :func:`write_labels`: NIfTI (``.nii``, ``.nii.gz``, with the source file's
  header codes), NRRD (``.nrrd``) or MetaImage (``.mha``), whose grid is the
  layer's placement in the world.
* :func:`write_labels_as_seg`: a DICOM SEG (``.dcm``) over the DICOM series the
  layer was segmented from or read over, which it references.

Both write a layer whose axes our reader put in world order (``stored_axes`` in
its metadata) with the source file's axis order, on its grid.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._reader import DICOM_SERIES, LABEL_NAMES, STORED_AXES
from .data import dicom_seg
from .data.geometry import AFFINE_TOLERANCE, axes_matrix, geometry_difference, label_dtype, layer_to_world, reverse_axes
from .data.volume import Volume, nifti_header, write_volume
from .errors import InputError

FORMAT_NAMES = {".nii": "NIfTI", ".nii.gz": "NIfTI", ".nrrd": "NRRD", ".mha": "MetaImage", ".dcm": "a DICOM SEG"}
"""The format written for each file ending, as messages name it."""


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """Write a 3D labels layer (Z, Y, X) to ``path`` (``.nii``, ``.nii.gz``, ``.nrrd`` or ``.mha``).

    The affine is the layer's placement in the world (its affine, scale,
    translate, rotation and shear: :func:`~napari_pgps.data.geometry.layer_to_world`),
    so the file lines up with the image it was drawn on whatever that image's
    orientation (NRRD and MetaImage hold it as ITK's LPS origin, spacing and
    direction); a NIfTI file's sform/qform codes and unit are the source
    file's when our reader or the Segment widget kept them. A layer whose axes
    our reader put in world order (``stored_axes`` in its metadata) is written
    with the source file's axis order, on its grid.

    Raises:
        InputError: the layer is not 3D; NRRD or MetaImage for a layer placed on a sheared grid.
    """
    array, world = _on_source_grid(path, data, meta)
    affine = reverse_axes(world)
    codes = (meta.get("metadata") or {}).get("nifti") or {}
    volume = Volume(array.astype(label_dtype(array.max(initial=0))), affine, header=nifti_header(affine, codes))
    return [str(write_volume(volume, path))]


def write_labels_as_seg(path: str, data: Any, meta: dict) -> list[str]:
    """Write a 3D labels layer (Z, Y, X) as a DICOM SEG (``.dcm``) that references the DICOM series it lies on.

    The series is the one in the layer's metadata (``dicom_series``: our reader
    puts it on a layer read from a series, the Segment widget on its result);
    the layer must lie on that series' grid (the same shape once ``stored_axes``
    is undone, and the same placement). The segments are named by
    :func:`segment_names`. See :func:`~napari_pgps.data.dicom_seg.write_dicom_seg`.

    Raises:
        InputError: the layer comes from no DICOM series, does not lie on its grid, is not 3D, or a source file
            cannot be read.
    """
    name = meta.get("name", "labels")
    series = (meta.get("metadata") or {}).get(DICOM_SERIES)
    if not series:
        raise InputError(f"{path}: labels layer '{name}' was not segmented from or read over a DICOM series, so a "
                         "DICOM SEG has no series to reference; segment or open a DICOM series first, or save as "
                         "NIfTI (.nii.gz), NRRD (.nrrd) or MetaImage (.mha).")
    array, world = _on_source_grid(path, data, meta)
    shape, affine = tuple(int(s) for s in series["shape"]), np.asarray(series["affine"], dtype=float)
    where = f"{path}: labels layer '{name}'"
    if array.shape != shape:
        raise InputError(f"{where} has shape {array.shape} on the series' axes, DICOM series {series['uid']} "
                         f"{shape}; a DICOM SEG holds labels on its series' grid: save this layer as NIfTI, NRRD or "
                         "MetaImage.")
    if not np.allclose(reverse_axes(world), affine, atol=AFFINE_TOLERANCE):
        raise InputError(f"{where} is placed elsewhere than DICOM series {series['uid']} "
                         f"({geometry_difference(reverse_axes(world), affine)}); a DICOM SEG holds labels on its "
                         "series' grid: save this layer as NIfTI, NRRD or MetaImage.")
    names = segment_names(meta, array)
    return [str(dicom_seg.write_dicom_seg(array, series["files"], names, path))]


def segment_names(meta: dict, array: np.ndarray) -> dict[int, str]:
    """Label value -> name for a labels layer: its metadata's ``label_names``, else its features' ``name`` column
    (the row's ``index`` column, or its number, giving the value), and ``label N`` for any other value present."""
    named = (meta.get("metadata") or {}).get(LABEL_NAMES)
    if not named:
        features = meta.get("features")
        columns = ({c: list(features[c]) for c in features.columns} if hasattr(features, "columns")
                   else meta.get("properties") or {})
        if "name" in columns:
            values = columns.get("index", range(len(columns["name"])))
            named = dict(zip(values, columns["name"]))
    names = {int(value): f"label {int(value)}" for value in np.unique(array) if value != 0}
    return names | {int(value): str(text) for value, text in (named or {}).items()}


def _on_source_grid(path: str, data: Any, meta: dict) -> tuple[np.ndarray, np.ndarray]:
    """A labels layer's array (Z, Y, X) with its axes in its source file's order, and the matrix placing it in
    world (z, y, x) (napari's, not NIfTI's, axis order).

    Raises:
        InputError: the layer is not 3D.
    """
    array = np.asarray(data)
    if array.ndim != 3:
        saved_as = next((name for ending, name in FORMAT_NAMES.items() if str(path).lower().endswith(ending)), "a file")
        raise InputError(f"{path}: the labels layer is {array.ndim}D (shape {array.shape}); only a 3D labels layer "
                         f"can be saved as {saved_as}.")
    layer_affine = meta.get("affine")  # a matrix, or napari's Affine (which numpy reads as its matrix)
    world = layer_to_world(None if layer_affine is None else np.asarray(layer_affine), meta.get("scale"),
                           meta.get("translate"), meta.get("rotate"), meta.get("shear"), ndim=array.ndim)
    stored = (meta.get("metadata") or {}).get(STORED_AXES)
    if stored is not None and tuple(stored) != (0, 1, 2):
        back = tuple(int(a) for a in np.argsort(stored))  # the layer's axes back in the file's order
        array, world = np.transpose(array, back), world @ axes_matrix(back)
    return array, world
