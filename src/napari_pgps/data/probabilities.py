"""Writing a segmentation's per-class probabilities on the input's own grid (``segment --save-probabilities``).

Two files beside the segmentation ``NAME.EXT`` (:func:`probabilities_paths`):

* ``NAME_probabilities.npz``, compressed, as nnU-Net writes its ``--save_probabilities`` files: the key
  ``probabilities`` holds the softmax (K, Z, Y, X) float32, channel ``k`` for the ``k``-th smallest label value;
  beside it (nnU-Net keeps these in a ``.pkl``) ``label_values`` (K,) int, ``label_names`` (K,) str,
  ``spacing`` (sz, sy, sx) mm and ``affine``, the 4x4 NIfTI-style matrix from voxel (x, y, z) = the array's
  (X, Y, Z) index to world RAS mm.
* ``NAME_probabilities.nii.gz``, a 4D NIfTI of the same voxels (x, y, z, K): one volume per class, on the input's
  grid, that any viewer opens.

The probabilities are the ones the segmentation's labels were taken from
(:func:`napari_pgps.engine.inference.segment_volume` with ``keep_probabilities``), written in the float32 they were
computed in: their argmax is the label map, to the voxel, except where the post-processing changed the label map
after the argmax (it removes components). (Stored as float16 they would round, and near-ties could flip.)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..files import atomic_path
from .volume import Volume, case_name, write_volume

PROBABILITIES_KEY = "probabilities"
"""The ``.npz`` key of the probabilities, nnU-Net's."""


def segmentation_name(output: str | os.PathLike) -> str:
    """The case name of a segmentation file: its name without the volume ending (``CASE.nii.gz``, ``CASE.nrrd``,
    ...) or, for another file (a DICOM SEG's ``CASE.dcm``), without its last suffix."""
    output = Path(output)
    name = case_name(output)
    return output.stem if name == output.name else name


def probabilities_paths(output: str | os.PathLike) -> tuple[Path, Path]:
    """The probability files of the segmentation ``output``: ``CASE.nii.gz`` (or ``CASE.dcm``, ...) ->
    (``CASE_probabilities.npz``, ``CASE_probabilities.nii.gz``) beside it."""
    output = Path(output)
    name = segmentation_name(output)
    return output.with_name(f"{name}_probabilities.npz"), output.with_name(f"{name}_probabilities.nii.gz")


def write_probabilities(probabilities: np.ndarray, like: Volume, labels: dict[int, str],
                        output: str | os.PathLike) -> tuple[Path, Path]:
    """Write per-class probabilities as the two files of :func:`probabilities_paths` (see the module docstring).

    Args:
        probabilities: softmax (K, Z, Y, X) on the grid of ``like``, channel ``k`` for the ``k``-th smallest value
            of ``labels``.
        like: a volume on the input's grid (the segmentation's labels): its affine and header are written.
        labels: the classes, value -> name, background included (K of them).
        output: the segmentation's file, beside which the probabilities go.

    Returns:
        (the ``.npz`` path, the NIfTI path).

    Raises:
        InputError: ``probabilities`` does not hold one channel per label on the grid of ``like``.
    """
    values = sorted(labels)
    if probabilities.ndim != 4 or probabilities.shape[0] != len(values) or probabilities.shape[1:] != like.shape:
        raise InputError(f"probabilities of shape {probabilities.shape} do not hold one channel for each of the "
                         f"{len(values)} labels on the grid {like.shape} (Z, Y, X).")
    probabilities = np.asarray(probabilities, dtype=np.float32)
    archive, image = probabilities_paths(output)
    with atomic_path(archive, suffix=".npz") as tmp, open(tmp, "wb") as file:
        np.savez_compressed(file, **{PROBABILITIES_KEY: probabilities}, label_values=np.asarray(values),
                            label_names=np.asarray([labels[v] for v in values]),
                            spacing=np.asarray(like.spacing), affine=np.asarray(like.affine, dtype=np.float64))
    write_volume(like.with_array(probabilities), image)
    return archive, image
