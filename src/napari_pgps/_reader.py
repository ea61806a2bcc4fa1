"""napari reader for NIfTI, TIFF, NRRD and MetaImage volumes and DICOM series, placed in world space with their
full direction.

Each layer's ``affine`` maps its (Z, Y, X) voxels to the world (z, y, x) the
file's affine gives (RAS millimetres, axes in napari's order), so a volume
stored in LPS or obliquely, or at another voxel size, lies where it belongs and
lines up with any other volume of the same patient. NRRD, MetaImage and DICOM
place their voxels in LPS; :func:`~napari_pgps.data.volume.read_volume` turns
that into the same RAS affine, so a DICOM series and the NIfTI of the same
voxels open as the same layer. An image of several channels (a 4D NIfTI, an
ImageJ hyperstack, an NRRD vector image) opens as one layer per channel. A TIFF
lies at the spacing its resolution tags and ImageJ metadata give, in mm (1 mm
where the file names none), as ``read_volume`` reads it for training.

A DICOM series opens from its folder or from any one of its files (napari
hands this reader a ``.dcm`` or ``.dicom`` file; an extension-less file is
opened through its folder, as npe2 matches files by their name's pattern only);
a folder of several series is refused with the list of them. The layer keeps
the series' UID, description and files (``dicom_series``, no patient data),
which the writer needs to save a DICOM SEG over it. A DICOM SEG file opens as a
labels layer on the grid of the series it references (looked for in the SEG's
folder, then the folder above), placed in world space as that series' layer.

napari shows a 2D slice through the sub-block of the affine for the two world
axes on screen, taken from the same two data axes; for a file stored with its
axes in another order (sagittal or coronal storage: voxel axes along world
(y, z, x), say) that block is not invertible and napari cannot draw the layer.
So the reader hands napari the array with its axes put in world order
(:func:`~napari_pgps.data.geometry.display_axes`: a transpose, no flips, no
resampling; napari draws flips and small obliques itself) and records that
order in the layer's metadata (``stored_axes``), which the writer uses to save
results on the file's own grid.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from .data.dicom import is_dicom_file, is_dicom_folder
from .data.geometry import axes_matrix, display_axes, label_dtype, reverse_axes
from .data.info import label_values
from .data.volume import VOLUME_SUFFIXES, Volume, nifti_codes, one_line, read_volume
from .errors import InputError

_LABEL_HINTS = ("label", "seg", "mask")
_LABEL_FOLDERS = ("labelstr", "labelsts")
MAX_LABEL_VALUES = 256
"""A file with more distinct values than this is an image whatever its name (label maps hold a few classes)."""
STORED_AXES = "stored_axes"
"""Layer metadata key: the file's (Z, Y, X) array axis shown as each of the layer's axes (see
:func:`~napari_pgps.data.geometry.display_axes`)."""
DICOM_SERIES = "dicom_series"
"""Layer metadata key: the DICOM series a layer was read from, what a DICOM SEG written for it references (see
:func:`dicom_series_metadata`). A layer made over such a layer (a segmentation) carries it on, with ``stored_axes``."""

LABEL_NAMES = "label_names"
"""Layer metadata key: label value -> name (the Segment widget's result carries its model's labels; a layer read
from a DICOM SEG its segments' labels), what the writer names the labels with."""
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
"""The SOP class UID of a DICOM SEG (Segmentation Storage)."""


def napari_get_reader(path: Union[str, list[str]]) -> Optional[Callable]:
    """Return :func:`read_volumes` for NIfTI, TIFF, NRRD and MetaImage files, DICOM files and folders holding
    DICOM files; else ``None``."""
    paths = [path] if isinstance(path, str) else list(path)
    if paths and all(_readable(Path(p)) for p in paths):
        return read_volumes
    return None


def _readable(path: Path) -> bool:
    """Whether :func:`read_volumes` takes ``path``: a volume file by its name, a DICOM file by its first bytes, or
    a folder with a DICOM file in it or its subfolders."""
    if path.is_dir():
        return is_dicom_folder(path)
    return path.name.lower().endswith(VOLUME_SUFFIXES) or is_dicom_file(path)


def is_label_file(path: Path) -> bool:
    """Whether a file's place says "label map": its folder is nnU-Net's ``labelsTr``/``labelsTs``, or its own name
    holds ``label``, ``seg`` or ``mask`` (a folder such as ``segmentation-study`` says nothing about its files)."""
    return path.parent.name.lower() in _LABEL_FOLDERS or any(hint in path.name.lower() for hint in _LABEL_HINTS)


def holds_labels(array: np.ndarray) -> bool:
    """Whether an array (Z, Y, X) can be a label map: whole numbers in 0..32767, at most :data:`MAX_LABEL_VALUES`
    distinct values."""
    return array.ndim == 3 and label_values(array, most=MAX_LABEL_VALUES) is not None


def dicom_series_metadata(volume: Volume) -> dict:
    """What a layer read from a DICOM series keeps of it under :data:`DICOM_SERIES`: plain values, no patient data.

    ``{"uid": SeriesInstanceUID, "description": SeriesDescription, "files": [str, ...], "shape": (Z, Y, X),
    "affine": 4x4}``: ``files[z]`` (an absolute path) holds slice ``z`` of the series' grid, which is the layer's
    data with its axes put back in the file's order (``stored_axes`` undone); ``shape`` and the NIfTI-style RAS
    ``affine`` (voxel (i, j, k) = (column, row, slice) -> world (x, y, z) mm) are that grid's.
    """
    series = volume.dicom
    return {"uid": series.uid, "description": series.description, "files": [str(f.absolute()) for f in series.files],
            "shape": volume.shape, "affine": np.asarray(volume.affine, dtype=float)}


def is_dicom_seg(path: Path) -> bool:
    """Whether a file is a DICOM Segmentation object (SOP class Segmentation Storage)."""
    import pydicom

    if not is_dicom_file(path):
        return False
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception:  # a damaged file: read_volume says what is wrong with it
        return False
    return header.get("SOPClassUID") == SEGMENTATION_STORAGE


def read_dicom_seg(path: Path) -> tuple[Volume, dict[int, str]]:
    """A DICOM SEG's segments as one label map on the grid of the series it references, and the segments' labels.

    The series is read from the SEG's folder, or else the folder above it. Each frame goes to the slice whose
    SOP instance it references; segment number ``n`` becomes label value ``n`` (a SEG written by napari-pgps numbers
    its segments in increasing order of label value, so labels 1, 2, ... come back as they were).

    Returns:
        The series' :class:`~napari_pgps.data.volume.Volume` with its array replaced by the labels (Z, Y, X) of the
        series' own grid, and ``{segment number: segment label}``.

    Raises:
        InputError: the SEG cannot be read, or its series is in neither folder.
    """
    import highdicom as hd
    import pydicom

    try:
        seg = hd.seg.segread(path)
        series_uid = seg.ReferencedSeriesSequence[0].SeriesInstanceUID
    except Exception as exc:  # pydicom and highdicom raise many types for damaged or unexpected files
        raise InputError(f"{path}: not a readable DICOM SEG ({one_line(exc)}).") from None
    volume = None
    for folder in (path.parent, path.parent.parent):
        try:
            volume = read_volume(folder, series=series_uid)
            break
        except InputError:
            continue
    if volume is None:
        raise InputError(f"{path}: a DICOM SEG of series {series_uid}, which is in neither its folder nor the folder "
                         "above; put the SEG beside the series' files.")
    instances = [str(pydicom.dcmread(file, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
                 for file in volume.dicom.files]
    try:
        array = seg.get_pixels_by_source_instance(instances, combine_segments=True,
                                                  assert_missing_frames_are_empty=True)
    except (ValueError, KeyError, RuntimeError) as exc:  # frames of other instances, overlapping segments, ...
        raise InputError(f"{path}: its frames do not fit series {series_uid} as one label map "
                         f"({one_line(exc)}).") from None
    segments = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    return replace(volume, array=array.astype(label_dtype(max(segments))), path=path), segments


def read_volumes(path: Union[str, list[str]]) -> list[tuple]:
    """Layer data tuples ((Z, Y, X) arrays in world order, see :func:`~napari_pgps.data.geometry.display_axes`) for
    one or more NIfTI, TIFF, NRRD or MetaImage files or DICOM series (a folder, or one of its files; several files
    of one series open it once).

    A file is a labels layer when its name or folder says so (:func:`is_label_file`)
    and its values can be labels (:func:`holds_labels`); otherwise an image. A
    DICOM series is always an image.
    ``metadata`` holds the file's NIfTI-style ``affine``, its ``path`` (a DICOM
    series: its folder), ``spacing`` (sz, sy, sx of the file's own axes), a NIfTI
    header's sform/qform codes and units (``nifti``), the file's axes in the
    layer (``stored_axes``) and, for a DICOM series, the series (``dicom_series``,
    :func:`dicom_series_metadata`), for writing results back as the file was.

    Raises:
        InputError: a file or series that cannot be read (one line naming it; a folder of several DICOM series
            lists them).
    """
    layers = []
    opened: set[Path] = set()  # the files of the DICOM series opened so far
    for item in [path] if isinstance(path, str) else path:
        item = Path(item)
        if item.resolve() in opened:
            continue
        segments = None
        if item.is_file() and is_dicom_seg(item):
            volume, segments = read_dicom_seg(item)
        else:
            volume = read_volume(item, kind="image")
            if volume.dicom is not None:
                opened.update(file.resolve() for file in volume.dicom.files)
        labels = segments is not None or (volume.dicom is None and is_label_file(item) and holds_labels(volume.array))
        axes = display_axes(volume.affine)
        array = volume.array
        if labels:
            array = array.astype(label_dtype(array.max()))
        if axes != (0, 1, 2):
            channels = array.ndim - 3  # a leading channel axis stays first
            array = np.ascontiguousarray(np.transpose(array, (*range(channels), *(channels + a for a in axes))))
        metadata = {"affine": volume.affine, "path": str(volume.path), "spacing": volume.spacing,
                    "nifti": nifti_codes(volume.header), STORED_AXES: axes}
        if volume.dicom is not None:
            metadata[DICOM_SERIES] = dicom_series_metadata(volume)
        if segments is not None:
            metadata[LABEL_NAMES] = {0: "background", **segments}
        meta = {"name": volume.name, "affine": reverse_axes(volume.affine) @ axes_matrix(axes), "metadata": metadata}
        if volume.channels > 1:
            meta["channel_axis"] = 0
            meta["name"] = [f"{volume.name} [{c}]" for c in range(volume.channels)]
        layers.append((array, meta, "labels" if labels else "image"))
    return layers
