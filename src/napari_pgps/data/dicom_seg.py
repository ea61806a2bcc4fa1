"""Writing a segmentation as a DICOM Segmentation object (DICOM SEG) that references its source series.

A viewer or PACS shows a DICOM SEG over the series it references, so a
segmentation of a DICOM series goes back to the clinic in this form
(``napari-pgps segment --output seg.dcm``). :func:`write_dicom_seg` writes it
with highdicom:

* **BINARY** segmentation type (SOP class Segmentation Storage): one bit-packed
  frame per segment and source slice, frames with no voxel of a segment left
  out. It is the type every SEG-capable viewer and PACS reads (3D Slicer's
  dcmqi, OHIF, ...). LABELMAP (Label Map Segmentation Storage, DICOM
  Supplement 243, 2024) would store one frame per slice, but it is a new SOP
  class that many archives refuse and viewers do not display yet.
* One segment per foreground label value, numbered 1, 2, ... in increasing
  order of value, labelled with the dataset's label name (at most 64
  characters, DICOM's limit), coded as category and type "Tissue" (SNOMED CT
  85756007, 3D Slicer's default for a segment of no known anatomy),
  algorithm type AUTOMATIC, by the algorithm "napari-pgps" of the family
  Artificial Intelligence.
* Frame ``z`` of the labels is source file ``z``: the caller passes the
  series' files in the labels' Z order (the order a DICOM series is read in,
  by position along the slice normal), and the frames carry those files'
  positions, orientation and pixel spacing and reference their SOP instances;
  the object references the series (ReferencedSeriesSequence).

highdicom copies the patient and study modules from the source files, as the
standard requires of a SEG (it belongs to the same patient and study). They are
only ever written into the SEG file: nothing here logs or returns them, and
messages name files and series UIDs only.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError
from ..files import atomic_path
from .dicom import SAME_ORIENTATION
from .volume import one_line

SEG_SERIES_DESCRIPTION = "napari-pgps segmentation"
SEG_SERIES_NUMBER = 1000
"""The new SEG series' number: high, so that viewers list it after the scanner's series."""
SEGMENT_LABEL_LENGTH = 64
"""DICOM's limit on a SegmentLabel (VR LO)."""
TISSUE = ("85756007", "SCT", "Tissue")
"""The SNOMED CT code of each segment's property category and type."""
POSITION_TOLERANCE_MM = 1e-3
"""Two slices closer than this along the normal are not in order."""
EMPTY_WHEN_ABSENT = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
                     "AccessionNumber", "ReferringPhysicianName")
"""The Type 2 patient and study attributes a SEG copies from its source (highdicom needs them present): an export
that left one out gets it empty, as the standard allows."""


def write_dicom_seg(
    labels: np.ndarray,
    source_files: Sequence[str | os.PathLike],
    label_names: dict[int, str],
    path: str | os.PathLike,
    *,
    series_description: str = SEG_SERIES_DESCRIPTION,
    series_number: int = SEG_SERIES_NUMBER,
) -> Path:
    """Write ``labels`` as a BINARY DICOM SEG of the series of ``source_files``, atomically.

    Args:
        labels: label values (Z, Y, X) on the source series' grid: ``labels[z, y, x]`` is row ``y``, column ``x``
            of ``source_files[z]``.
        source_files: the series' single-frame DICOM files in the labels' Z order (sorted along the slice normal,
            either way).
        label_names: value -> name (the dataset's labels; background 0 may be among them and gets no segment).
            Every name but the background's becomes a segment, also one with no voxel.
        path: the ``.dcm`` file to write.
        series_description, series_number: of the new SEG series.

    Returns:
        ``path``.

    Raises:
        InputError: a source file is not readable DICOM; the files are not one series of ``Z`` slices of
            ``Y`` x ``X`` pixels in order along their normal; ``labels`` holds a value ``label_names`` lacks.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise InputError(f"a DICOM SEG is written from a 3D label map (Z, Y, X), not shape {labels.shape}.")
    sources = _read_series_headers(source_files, labels.shape)
    segment_numbers, values = _segment_numbers(labels, label_names)
    version = _napari_pgps_version()
    tissue = hd.sr.CodedConcept(*TISSUE)
    algorithm = hd.AlgorithmIdentificationSequence(name="napari-pgps", version=version,
                                                   family=codes.cid7162.ArtificialIntelligence)
    segments = [hd.seg.SegmentDescription(
        segment_number=number, segment_label=label_names[value][:SEGMENT_LABEL_LENGTH],
        segmented_property_category=tissue, segmented_property_type=tissue,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
    ) for number, value in enumerate(values, start=1)]
    frames = segment_numbers[labels]
    try:
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=segments,
            series_instance_uid=hd.UID(),
            series_number=series_number,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="napari-pgps",
            manufacturer_model_name="napari-pgps",
            software_versions=version,
            device_serial_number="0",
            series_description=series_description,
            content_description=series_description,
            omit_empty_frames=bool(frames.any()),  # an empty segmentation keeps its frames (a SEG holds at least one)
        )
    except (ValueError, AttributeError) as exc:  # a source lacking what a SEG copies (e.g. its frame of reference)
        raise InputError(f"series {sources[0].get('SeriesInstanceUID')}: a DICOM SEG cannot reference it "
                         f"({one_line(exc)}).") from None
    with atomic_path(path, suffix=".dcm") as tmp:
        seg.save_as(tmp)
    return Path(path)


def _read_series_headers(files: Sequence[str | os.PathLike], shape: tuple[int, ...]) -> list:
    """The headers (no pixel data) of the single-frame files of one series, checked to cover a grid of ``shape``
    (Z, Y, X) in their given order.

    A header without a SliceThickness (Type 2: often empty) gets the mean distance between the slices as one, in
    memory, for the SEG's pixel measures (highdicom copies them from the first source); one without an attribute of
    :data:`EMPTY_WHEN_ABSENT` gets it empty, in memory.

    Raises:
        InputError: a file is not readable DICOM, the files are not ``Z`` slices of one series with ``Y`` x ``X``
            pixels, one orientation and positions strictly in order along the slice normal.
    """
    import pydicom

    if len(files) != shape[0]:
        raise InputError(f"the label map has {shape[0]} slices but the source series has {len(files)} file(s); a DICOM "
                         "SEG is written for the single-frame series the labels were segmented from.")
    headers = []
    for file in files:
        try:
            headers.append(pydicom.dcmread(file, stop_before_pixels=True))
        except Exception as exc:  # pydicom raises many types for damaged files
            raise InputError(f"{file}: not a readable DICOM file ({one_line(exc)}).") from None
    first = headers[0]
    series = first.get("SeriesInstanceUID")
    for file, header in zip(files, headers):
        what = f"{file} (series {series})"
        if header.get("SeriesInstanceUID") != series:
            raise InputError(f"{file}: belongs to series {header.get('SeriesInstanceUID')}, not {series}; a DICOM SEG "
                             "references the files of one series.")
        if int(header.get("NumberOfFrames", 1) or 1) != 1:
            raise InputError(f"{what}: a multi-frame image; a DICOM SEG is written here for a series of single-frame "
                             "images.")
        if (header.get("Rows"), header.get("Columns")) != tuple(shape[1:]):
            raise InputError(f"{what}: {header.get('Rows')} x {header.get('Columns')} pixels, but the label map's "
                             f"slices are {shape[1]} x {shape[2]} (Y, X); write the labels on the series' own grid.")
        if not all(header.get(keyword) for keyword in ("ImageOrientationPatient", "ImagePositionPatient",
                                                        "PixelSpacing")):
            raise InputError(f"{what}: has no image position, orientation or pixel spacing; a DICOM SEG needs the "
                             "slices' geometry.")
        if not np.allclose(header.ImageOrientationPatient, first.ImageOrientationPatient, atol=SAME_ORIENTATION):
            raise InputError(f"{what}: its orientation differs from {files[0]}'s; a series of one orientation is "
                             "needed.")
    row, column = np.reshape(np.asarray(first.ImageOrientationPatient, dtype=float), (2, 3))
    along_normal = np.array([np.dot(h.ImagePositionPatient, np.cross(row, column)) for h in headers])
    steps = np.diff(along_normal)
    if len(steps) and not ((steps > POSITION_TOLERANCE_MM).all() or (steps < -POSITION_TOLERANCE_MM).all()):
        raise InputError(f"series {series}: its files are not given in slice order (positions along the slice normal "
                         f"{', '.join(f'{p:.2f}' for p in along_normal[:6])}{', ...' if len(headers) > 6 else ''} mm); "
                         "pass them in the label map's Z order, as the series was read.")
    for header in headers:
        if not header.get("SliceThickness"):
            header.SliceThickness = float(np.abs(steps).mean()) if len(steps) else 1.0
        for keyword in EMPTY_WHEN_ABSENT:
            if keyword not in header:
                setattr(header, keyword, "")
    return headers


def _segment_numbers(labels: np.ndarray, label_names: dict[int, str]) -> tuple[np.ndarray, list[int]]:
    """A lookup table from label value to segment number (0 for the background), and the foreground values in
    segment order.

    Raises:
        InputError: ``labels`` holds a value that ``label_names`` does not name, or they name no foreground.
    """
    values = sorted(value for value in label_names if value != 0)
    if not values:
        raise InputError("the labels name no foreground value (only the background, 0); a DICOM SEG holds at least "
                         "one segment.")
    present = np.unique(labels)
    unnamed = sorted(set(present.tolist()) - set(values) - {0})
    if unnamed:
        raise InputError(f"the label map holds value(s) {', '.join(map(str, unnamed))} that the labels "
                         f"({', '.join(f'{v} {label_names[v]}' for v in values)}) do not name.")
    lookup = np.zeros(max(values + present.tolist()) + 1, dtype=np.uint8 if len(values) < 256 else np.uint16)
    lookup[values] = np.arange(1, len(values) + 1)
    return lookup, values


def _napari_pgps_version() -> str:
    """The installed napari-pgps version, written as the SEG's software and algorithm version ("unknown" when it
    runs uninstalled; the package's ``__version__`` lies above the data layer)."""
    try:
        return importlib.metadata.version("napari-pgps")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
