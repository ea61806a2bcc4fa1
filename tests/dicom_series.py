"""DICOM series written by code for the tests: any orientation, files named so that their order says nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

OBLIQUE_ROW = np.array([np.cos(0.3), np.sin(0.3), 0.2])
"""LPS direction of the rows (increasing column), tilted out of every axis; :func:`oblique_cosines` orthonormalises."""


def oblique_cosines() -> tuple[np.ndarray, np.ndarray]:
    """Row and column direction cosines (LPS) of an oblique slice, at right angles, neither along an axis."""
    row = OBLIQUE_ROW / np.linalg.norm(OBLIQUE_ROW)
    column = np.cross(np.array([0.1, -0.3, 1.0]), row)
    return row, column / np.linalg.norm(column)


def write_series(folder: Path, voxels: np.ndarray, *, row: Sequence[float] = (1, 0, 0),
                 column: Sequence[float] = (0, 1, 0), spacing: Sequence[float] = (2.0, 0.8, 0.6),
                 origin: Sequence[float] = (-30.0, 20.0, 15.0), slopes: Optional[Sequence[float]] = None,
                 intercept: float = -100.0, description: str = "AX T1", series_uid: Optional[str] = None,
                 modality: str = "MR", image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
                 order: Optional[Sequence[int]] = None, name: str = "IM{:04d}") -> list[Path]:
    """Write ``voxels`` (Z, Y, X) as a DICOM series, one file per slice, returned in Z order.

    Slice ``z`` lies at ``origin + z * spacing[0] * normal`` (LPS mm; normal = row x column), row ``y`` along
    ``column`` at ``spacing[1]``, column ``x`` along ``row`` at ``spacing[2]``. Stored values are
    ``(voxels - intercept) / slope`` as int16, so ``voxels`` is what a reader applying the rescale gets back.
    ``order`` numbers the files (``name.format(order[z])``, default a scramble), so names sort in another order than Z;
    InstanceNumber is scrambled too. A PatientName and PatientID are written so tests can check none leaks out.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    row, column = np.asarray(row, float), np.asarray(column, float)
    normal = np.cross(row, column)
    depth = voxels.shape[0]
    order = list(order) if order is not None else [(7 * z + 3) % depth if depth % 7 else depth - 1 - z
                                                    for z in range(depth)]
    slopes = list(slopes) if slopes is not None else [1.0] * depth
    series_uid, study_uid, frame_uid = series_uid or generate_uid(), generate_uid(), generate_uid()
    files = []
    for z in range(depth):
        sop = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.PatientName, ds.PatientID = "Doe^Jane", "PID-SECRET-42"
        ds.Modality, ds.SeriesDescription, ds.SeriesNumber = modality, description, 3
        ds.ImageType = list(image_type)
        ds.InstanceNumber = order[z] + 1
        ds.ImageOrientationPatient = [float(v) for v in (*row, *column)]
        ds.ImagePositionPatient = [float(v) for v in np.asarray(origin, float) + z * spacing[0] * normal]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[2])]
        ds.SliceThickness = float(spacing[0])
        ds.Rows, ds.Columns = voxels.shape[1], voxels.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = slopes[z], intercept
        stored = np.round((voxels[z] - intercept) / slopes[z]).astype(np.int16)
        ds.PixelData = stored.tobytes()
        path = folder / name.format(order[z])
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def write_report(path: Path, series_uid: Optional[str] = None) -> Path:
    """A non-image DICOM object (a Basic Text SR) in a series of its own (or ``series_uid``'s)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = BasicTextSRStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = BasicTextSRStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), series_uid or generate_uid()
    ds.Modality, ds.PatientName = "SR", "Doe^Jane"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def lps_to_ras_affine(row, column, spacing, origin) -> np.ndarray:
    """The RAS affine of voxel (i, j, k) = (column, row, slice) of a series written by :func:`write_series`, from
    first principles (LPS world, x and y negated)."""
    row, column = np.asarray(row, float), np.asarray(column, float)
    normal = np.cross(row, column)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = row * spacing[2], column * spacing[1], normal * spacing[0]
    lps[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
