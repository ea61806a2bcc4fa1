"""What napari-pgps reads from a volume file (``napari-pgps info FILE [--json]``).

:func:`describe_volume` works on the :class:`~napari_pgps.data.volume.Volume`
that :func:`~napari_pgps.data.volume.read_volume` returns, whatever the file's
format, so a new reader needs nothing here. The keys ``shape``, ``channels``,
``spacing_mm`` and ``orientation`` are stable; the others may grow.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np

from ..errors import InputError
from .dataset import check_image
from .geometry import orientation_of
from .volume import MAX_LABEL_VALUE, Volume, read_volume

FEW_VALUES = 32
"""A map of whole numbers in 0..MAX_LABEL_VALUE holding at most this many distinct values is shown by its values."""
CHUNK_VOXELS = 1 << 24
"""Voxels counted at a time for the label values, so a large volume needs no whole-size copy."""


def describe_file(path: str | os.PathLike, series: Optional[str] = None) -> dict[str, Any]:
    """:func:`describe_volume` of the file read as an image (any number of channels); ``series``: the DICOM series
    to read from a folder of several.

    Raises:
        InputError: a file napari-pgps cannot read (the reason in one line).
    """
    return describe_volume(read_volume(path, kind="image", series=series))


def describe_volume(volume: Volume) -> dict[str, Any]:
    """What napari-pgps reads from a volume, JSON-ready.

    Keys: ``file``; ``shape`` (Z, Y, X); ``channels``; ``spacing_mm`` (sz, sy, sx); ``orientation``, the axis codes
    of the voxel axes in the file's order (i, j, k) = (X, Y, Z), e.g. "RAS" (i to the right, j anterior, k
    superior) or "LPS" (nibabel's ``aff2axcodes``; the closest codes for an oblique affine); ``affine``, the 4x4
    matrix from voxel (i, j, k, 1) to world (x, y, z, 1) in mm, RAS+; ``dtype``, the voxel type in the file;
    ``value_range``, [min, max] over every channel; ``label_values``, the distinct values of a map of a few whole
    numbers (``None`` for other images); ``notes``, what reading assumed or what napari-pgps will refuse; for a
    DICOM series ``dicom_series``: its ``uid``, ``description`` and ``slices`` (no patient or study data).
    """
    notes = list(volume.notes)
    try:
        check_image(volume)
    except InputError as error:
        notes.append(f"training and segment refuse it: {error}")
    array = volume.array
    series = volume.dicom
    dicom = {"dicom_series": {"uid": series.uid, "description": series.description, "slices": len(series.files)}
             } if series is not None else {}
    return {
        "file": str(volume.path) if volume.path else None,
        "shape": list(volume.shape),
        "channels": volume.channels,
        "spacing_mm": [round(s, 6) for s in volume.spacing],
        "orientation": orientation_of(volume.affine),
        "affine": np.round(np.asarray(volume.affine, dtype=float), 6).tolist(),
        "dtype": volume.stored_dtype or str(array.dtype),
        "value_range": [float(array.min()), float(array.max())],
        "label_values": label_values(array),
        "notes": notes,
        **dicom,
    }


def label_values(array: np.ndarray, most: int = FEW_VALUES) -> Optional[list[int]]:
    """The distinct values of an array of whole numbers in 0..MAX_LABEL_VALUE holding at most ``most`` of them;
    ``None`` for any other array (an image's intensities). Read a chunk at a time, so the copies stay small."""
    flat = array.reshape(-1)
    if flat.size == 0 or flat.min() < 0 or flat.max() > MAX_LABEL_VALUE:
        return None
    counts = np.zeros(int(flat.max()) + 1, np.int64)
    for start in range(0, flat.size, CHUNK_VOXELS):
        chunk = flat[start:start + CHUNK_VOXELS]
        whole = chunk.astype(np.int64)
        if not np.array_equal(whole, chunk):
            return None
        counts += np.bincount(whole, minlength=len(counts))
    values = np.flatnonzero(counts)
    return values.tolist() if len(values) <= most else None


def info_text(description: dict[str, Any]) -> str:
    """A :func:`describe_volume` result as lines for a person."""
    def numbers(values) -> str:
        return " x ".join(f"{v:g}" for v in values)

    d = description
    lines = [
        f"file         {d['file']}",
        f"shape        {numbers(d['shape'])} (Z, Y, X)",
        f"channels     {d['channels']}",
        f"spacing_mm   {numbers(d['spacing_mm'])} (Z, Y, X)",
        f"orientation  {d['orientation']} (where the voxel axes X, Y, Z point)",
        f"dtype        {d['dtype']}",
        f"values       {d['value_range'][0]:g} to {d['value_range'][1]:g}"
        + (f"; label values {', '.join(map(str, d['label_values']))}" if d["label_values"] is not None else ""),
        "affine       " + "\n             ".join(" ".join(f"{v:>10.6g}" for v in row) for row in d["affine"]),
    ]
    if "dicom_series" in d:
        series = d["dicom_series"]
        lines.insert(1, f"series       {series['uid']} {series['description']!r}, {series['slices']} slices (DICOM)")
    lines += [f"note         {note}" for note in d["notes"]]
    return "\n".join(lines)
