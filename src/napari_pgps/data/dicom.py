"""DICOM image series: finding them in a folder, checking them, and reading one as a volume.

A scanner or PACS exports a 3D image as a *series*: one file per slice, all
sharing a SeriesInstanceUID. :func:`read_dicom` takes the series' folder or
any one of its files and gives the voxels (Z, Y, X), the RAS affine and the
series (:class:`DicomSeries`: its UID, description and files in the array's Z
order, which a DICOM SEG written for it references).

How it reads (pydicom for the headers, SimpleITK for the pixels):

* Every file of the folder (and its subfolders, for a folder given) that
  starts like a DICOM file (``DICM`` after the 128-byte preamble) has its
  header read with pydicom, without its pixel data; other files are ignored.
  The image objects are grouped by SeriesInstanceUID; non-image objects (a
  report, a structure set, a DICOMDIR, a SEG) are left aside and said so in
  the notes. A folder of several series is refused with the list of them (UID,
  description, slice count) until one is chosen (``series=UID``, the command
  line's ``--series UID``); a file chooses its own series.
* Slices are ordered by their ImagePositionPatient projected on the slice
  normal (the cross product of ImageOrientationPatient's row and column
  cosines), never by file name or InstanceNumber. The array's axes are
  (Z, Y, X) = (slice, row, column); the affine maps voxel (i, j, k) = (column,
  row, slice) to RAS mm, from the LPS positions and cosines: column ``i`` is
  the row cosines times the column spacing (PixelSpacing[1]), ``j`` the column
  cosines times the row spacing (PixelSpacing[0]), ``k`` the step from the
  first slice's position to the next, and the origin the first slice's
  position (LPS turned to RAS by negating x and y). A CT with gantry tilt keeps
  its true slice positions as a sheared affine (said in the notes); nothing is
  resampled.
* Refused, each in one line naming the series or file and what to do: slices
  missing (a gap a whole number of slice steps wide) or unevenly spaced, slices
  of another orientation or size, two slices at one position (several echoes or
  time points in one series), an enhanced multi-frame object, a slice without
  patient geometry, a non-image object given as the input, and a damaged or
  truncated file. Localizer (scout) slices in the series (ImageType
  ``LOCALIZER``) are dropped, as dcm2niix's ``-i y`` drops them: they are 2D
  views at another orientation, never part of the volume; the notes say how
  many.
* The pixels are read by SimpleITK's ImageSeriesReader (GDCM) from the files
  in that order, as float32 with each slice's RescaleSlope and
  RescaleIntercept applied. GDCM decodes every transfer syntax a PACS uses
  (JPEG lossless, JPEG-LS, JPEG 2000, RLE) where pydicom would need a plug-in
  per codec, and it read a 100-slice 512 x 512 int16 series in 0.61-0.69 s
  where pydicom took 0.74-0.90 s (2-core machine; the header pass, needed for
  the checks above either way, adds 0.2-0.4 s).

Nothing here keeps or reports a patient or study identifier: messages and
notes name files, series UIDs and descriptions only, and :class:`DicomSeries`
holds no more.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from ..errors import InputError
from .itk_image import itk_message, ras_affine

PREAMBLE = 128
"""Bytes before the ``DICM`` prefix of a DICOM file."""
HEADER_VALUE_LIMIT = 1024
"""Header values longer than this many bytes (the pixel data) are skipped, not read, by the header pass."""
PIXEL_DATA = 0x7FE00010
PIXEL_DATA_TAGS = (0x7FE00008, 0x7FE00009, PIXEL_DATA)
"""Float, double float and integer pixel data."""
UNDEFINED_LENGTH = 0xFFFFFFFF
"""The length of encapsulated (compressed) pixel data, whose size is known only to its decoder."""
SAME_ORIENTATION = 1e-3
"""Largest difference between two slices' direction cosines that counts as one orientation."""
POSITION_TOLERANCE = 0.01
"""Largest distance, as a share of the slice step (at least :data:`POSITION_TOLERANCE_MM`), between a slice's
position and where an evenly spaced series puts it."""
POSITION_TOLERANCE_MM = 0.01
TILT_NOTE_DEGREES = 0.1
"""A slice step further than this from the slice normal is a gantry tilt (a sheared grid), and said so."""


@dataclass(frozen=True)
class DicomSeries:
    """The DICOM series a volume was read from; no patient or study data.

    Attributes:
        uid: its SeriesInstanceUID.
        description: its SeriesDescription ("" where it has none).
        files: its slices' files in the volume's Z order (``files[z]`` holds ``array[z]``).
    """

    uid: str
    description: str
    files: tuple[Path, ...]

    def __str__(self) -> str:
        described = f" ({self.description!r})" if self.description else ""
        return f"series {self.uid}{described}"

    def summary(self) -> str:
        """UID, description and slice count, as the list of a folder's series shows them."""
        return f"{self.uid} {self.description!r} {len(self.files)} slice{'s' * (len(self.files) != 1)}"


@dataclass
class _Slice:
    """The header of one DICOM file: what ordering and checking its series needs."""

    path: Path
    header: Any  # a pydicom Dataset, its pixel data left unread

    def get(self, keyword: str, default: Any = None) -> Any:
        return self.header.get(keyword, default)

    @property
    def series_uid(self) -> str:
        return str(self.get("SeriesInstanceUID", ""))

    @property
    def is_image(self) -> bool:
        """Rows, columns and pixel data of a modality that is not a segmentation (SEG) or a dose grid (RTDOSE)."""
        return (self.get("Rows") is not None and self.get("Columns") is not None
                and any(tag in self.header for tag in PIXEL_DATA_TAGS) and self.get("Modality") not in ("SEG", "RTDOSE"))

    @property
    def kind(self) -> str:
        """The object's SOP class by name, e.g. "Basic Text SR Storage"."""
        uid = self.get("SOPClassUID")
        return getattr(uid, "name", None) or str(uid or "unknown SOP class")

    @property
    def is_localizer(self) -> bool:
        values = self.get("ImageType") or []
        return "LOCALIZER" in [str(v).upper() for v in (values.split("\\") if isinstance(values, str) else values)]

    def vector(self, keyword: str) -> np.ndarray:
        return np.asarray([float(v) for v in self.get(keyword)], dtype=float)


def is_dicom_file(path: str | os.PathLike) -> bool:
    """Whether a file starts as a DICOM file does (``DICM`` after its 128-byte preamble)."""
    try:
        with open(path, "rb") as file:
            start = file.read(PREAMBLE + 4)
    except OSError:
        return False
    return len(start) == PREAMBLE + 4 and start[PREAMBLE:] == b"DICM"


def is_dicom_folder(path: str | os.PathLike) -> bool:
    """Whether a folder or one of its subfolders holds a DICOM file (looked for until one is found)."""
    return Path(path).is_dir() and any(is_dicom_file(file) for file in _visible_tree(Path(path)))


def read_dicom(path: str | os.PathLike, series: Optional[str] = None
               ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], DicomSeries, str]:
    """One DICOM image series as a volume.

    Args:
        path: the series' folder (searched with its subfolders) or any one of its files.
        series: the SeriesInstanceUID to read, for a folder holding several series.

    Returns:
        The voxels (Z, Y, X) float32 (rescale applied), or (C, Z, Y, X) for a colour series; the RAS affine of voxel
        (i, j, k) = (column, row, slice); notes on what was left aside or assumed; the :class:`DicomSeries`; the
        stored voxel type (e.g. "int16").

    Raises:
        InputError: one line naming the file or series and what to do (see the module docstring).
    """
    path = Path(path)
    if path.is_dir():
        slices = _headers(_folder_files(path))
        chosen = _choose(path, slices, series)
    else:
        given = _headers([path])[0]
        if not given.is_image:
            raise InputError(f"{path}: a DICOM {given.kind} object, not an image; give the folder or a file of an "
                             "image series.")
        if series is not None and series != given.series_uid:
            raise InputError(f"{path}: belongs to series {given.series_uid}, not {series}; give a file of series "
                             f"{series} or its folder.")
        siblings = [file for file in _visible_files(path.parent) if file != path and is_dicom_file(file)]
        slices = [given] + [s for s in _headers(siblings) if s.series_uid == given.series_uid]
        chosen = [s for s in slices if s.is_image]
    ordered, affine, notes = _arrange(chosen)
    left_aside = [s for s in slices if not s.is_image]
    if left_aside:
        kinds = sorted({s.kind for s in left_aside})
        notes += (f"{len(left_aside)} non-image DICOM object(s) left aside ({', '.join(kinds)})",)
    found = _series_of(ordered)
    array, stored = _read_pixels(found, ordered[0])
    return array, affine, notes, found, stored


def _choose(folder: Path, slices: list[_Slice], series: Optional[str]) -> list[_Slice]:
    """The image slices of the one series of ``folder`` to read (``series``, or the only one there)."""
    groups = _by_series([s for s in slices if s.is_image])
    if not groups:
        others = [s for s in slices if not s.is_image]
        if others:
            raise InputError(f"{folder}: holds no DICOM image series, only {len(others)} non-image object(s) "
                             f"({', '.join(sorted({s.kind for s in others}))}, e.g. {others[0].path.name}); give "
                             "the folder of an image series.")
        raise InputError(f"{folder}: no DICOM file in this folder or its subfolders.")
    if series is not None:
        if series not in groups:
            raise InputError(f"{folder}: holds no series {series}; it holds {_listing(groups)}.")
        return groups[series]
    if len(groups) > 1:
        raise InputError(f"{folder}: holds {len(groups)} DICOM series ({_listing(groups)}); choose one with --series "
                         "UID (series=UID in Python).")
    return next(iter(groups.values()))


def _listing(groups: dict[str, list[_Slice]]) -> str:
    """'UID 'description' N slices; ...' for each series (description and count without checking the series)."""
    return "; ".join(_series_of(slices).summary() for slices in groups.values())


def _series_of(slices: Sequence[_Slice]) -> DicomSeries:
    return DicomSeries(slices[0].series_uid, _description(slices), tuple(s.path for s in slices))


def _description(slices: Sequence[_Slice]) -> str:
    return " ".join(str(slices[0].get("SeriesDescription", "") or "").split())


def _visible_files(folder: Path) -> list[Path]:
    """The files of a folder, hidden ones left out, in name order."""
    return sorted(file for file in folder.iterdir() if not file.name.startswith(".") and file.is_file())


def _visible_tree(folder: Path) -> Iterator[Path]:
    """The files of a folder and its subfolders, hidden ones left out, in name order, folder by folder."""
    for root, folders, names in os.walk(folder):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        yield from (Path(root) / name for name in sorted(names) if not name.startswith("."))


def _folder_files(folder: Path) -> list[Path]:
    """The DICOM files of a folder and its subfolders."""
    return [file for file in _visible_tree(folder) if is_dicom_file(file)]


def _headers(files: Sequence[Path]) -> list[_Slice]:
    """Each file's header, read without its pixel data, checked to be complete.

    Raises:
        InputError: a file pydicom cannot read, whose header stops early, or whose pixel data runs past its end.
    """
    import pydicom

    slices = []
    for path in files:
        try:
            header = pydicom.dcmread(str(path), defer_size=HEADER_VALUE_LIMIT)
        except Exception as exc:  # pydicom raises many types for damaged files
            raise InputError(f"{path}: a truncated or damaged DICOM file ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())}); remove it or export the series again.") from None
        if "SOPClassUID" not in header or "SeriesInstanceUID" not in header:
            raise InputError(f"{path}: a truncated or damaged DICOM file (its header stops before naming its series); "
                             "remove it or export the series again.")
        if "Rows" not in header and _names_an_image(header):
            raise InputError(f"{path}: a truncated DICOM file (an image whose header stops before its size); export the "
                             "series again.")
        if "Rows" in header and not any(tag in header for tag in PIXEL_DATA_TAGS):
            raise InputError(f"{path}: a truncated DICOM file (its header ends before its pixel data); export the "
                             "series again.")
        pixels = header.get_item(PIXEL_DATA, keep_deferred=True)
        if pixels is not None and getattr(pixels, "length", 0) != UNDEFINED_LENGTH:
            end = getattr(pixels, "value_tell", 0) + getattr(pixels, "length", 0)
            if end > path.stat().st_size:
                raise InputError(f"{path}: a truncated DICOM file (its pixel data needs {end:,} bytes, the file holds "
                                 f"{path.stat().st_size:,}); export the series again.")
        slices.append(_Slice(path, header))
    return slices


def _names_an_image(header: Any) -> bool:
    """Whether a header's SOP class is an image storage class (MR, CT, secondary capture, ...), whose header must
    give the image's size."""
    name = getattr(header.get("SOPClassUID"), "name", "")
    return str(name).endswith("Image Storage")


def _by_series(slices: Sequence[_Slice]) -> dict[str, list[_Slice]]:
    groups: dict[str, list[_Slice]] = {}
    for found in slices:
        groups.setdefault(found.series_uid, []).append(found)
    return groups


def _arrange(slices: list[_Slice]) -> tuple[list[_Slice], np.ndarray, tuple[str, ...]]:
    """``slices`` of one series in Z order (localizers left out), its RAS affine and notes; see the module docstring
    for the checks.

    Raises:
        InputError: one line naming the series (or a file) and what to do.
    """
    name = _series_of(slices)
    notes: tuple[str, ...] = ()
    for found in slices:
        if int(found.get("NumberOfFrames", 1) or 1) > 1:
            raise InputError(f"{found.path}: an enhanced multi-frame DICOM object ({found.kind}, {name}), which "
                             "napari-pgps does not read; export the series as single-frame images or convert it "
                             "(e.g. with dcm2niix to NIfTI).")
        missing = [k for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing") if not found.get(k)]
        if missing:
            raise InputError(f"{found.path}: has no {' or '.join(missing)} ({name}): a 2D picture (a screenshot, a "
                             "projection X-ray), not a slice of a 3D series.")
    localizers = [s for s in slices if s.is_localizer]
    if localizers and len(localizers) < len(slices):
        slices = [s for s in slices if not s.is_localizer]
        notes += (f"{len(localizers)} localizer slice(s) of {name} left out (ImageType LOCALIZER)",)
    _check_alike(slices, name)
    row, column = slices[0].vector("ImageOrientationPatient").reshape(2, 3)
    normal = np.cross(row, column)
    slices = sorted(slices, key=lambda s: float(s.vector("ImagePositionPatient") @ normal))
    positions = np.stack([s.vector("ImagePositionPatient") for s in slices])
    step = _slice_step(slices, positions, normal, name)
    if len(slices) == 1:
        notes += (f"{name} is a single slice: its thickness taken as the slice step",)
    tilt = np.degrees(np.arccos(min(1.0, abs(float(step @ normal)) / float(np.linalg.norm(step)))))
    if tilt > TILT_NOTE_DEGREES:
        notes += (f"{name}: slices sheared by {tilt:.1f} degrees (gantry tilt), kept as a sheared grid",)
    row_spacing, column_spacing = slices[0].vector("PixelSpacing")
    affine = ras_affine(np.stack([row, column, step / np.linalg.norm(step)], axis=1),
                        (column_spacing, row_spacing, np.linalg.norm(step)), positions[0])
    return slices, affine, notes


def _check_alike(slices: Sequence[_Slice], name: DicomSeries) -> None:
    """Refuse slices of different orientations (the most common one named first), sizes, pixel spacings or samples
    per pixel."""
    orientations = np.stack([s.vector("ImageOrientationPatient") for s in slices])
    alike = np.abs(orientations[:, None] - orientations[None]).max(axis=2) <= SAME_ORIENTATION  # slice x slice
    usual = int(np.argmax(alike.sum(axis=1)))
    if not alike[usual].all():
        odd = int(np.argmin(alike[usual]))
        raise InputError(f"{name}: mixes orientations ({int(alike[usual].sum())} slice(s) like "
                         f"{slices[usual].path.name}, {int((~alike[usual]).sum())} like {slices[odd].path.name}); "
                         "export each orientation as its own series.")
    first = slices[0]
    for keyword in ("Rows", "Columns", "PixelSpacing", "SamplesPerPixel"):
        value = np.asarray(first.get(keyword, 1), dtype=float)  # SamplesPerPixel 1 where it is not given
        odd = next((s for s in slices if not np.allclose(np.asarray(s.get(keyword, 1), dtype=float), value,
                                                        rtol=1e-4, atol=0)), None)
        if odd is not None:
            raise InputError(f"{name}: its slices differ in {keyword} ({first.path.name}: {first.get(keyword)}, "
                             f"{odd.path.name}: {odd.get(keyword)}); export the series again as one volume.")


def _slice_step(slices: Sequence[_Slice], positions: np.ndarray, normal: np.ndarray, name: DicomSeries) -> np.ndarray:
    """The step (LPS mm) from one slice's position to the next, checked to be the same between every two slices.

    Raises:
        InputError: two slices at one position, a missing slice, or uneven spacing (naming the files around it).
    """
    if len(slices) == 1:
        thickness = float(slices[0].get("SpacingBetweenSlices") or slices[0].get("SliceThickness") or 1.0)
        return normal * thickness
    along = positions @ normal
    gaps = np.diff(along)
    files = [s.path.name for s in slices]
    if (np.abs(gaps) < POSITION_TOLERANCE_MM).any():
        k = int(np.argmax(np.abs(gaps) < POSITION_TOLERANCE_MM))
        raise InputError(f"{name}: two slices lie at one position ({along[k]:.2f} mm along the slice normal: "
                         f"{files[k]} and {files[k + 1]}), so the series holds several volumes (echoes, time points or "
                         "phases); export each as its own series.")
    usual = float(np.median(gaps))
    tolerance = max(POSITION_TOLERANCE * usual, POSITION_TOLERANCE_MM)
    steps = gaps / usual
    whole = np.round(steps)
    if (np.abs(gaps - whole * usual) <= tolerance).all() and (whole >= 2).any():
        k = int(np.argmax(whole >= 2))
        missing = int(whole.sum() - len(gaps))
        raise InputError(f"{name}: {missing} slice(s) missing, the first between {files[k]} and {files[k + 1]} "
                         f"({along[k]:.2f} and {along[k + 1]:.2f} mm along the slice normal; the others are "
                         f"{usual:.3g} mm apart); export the complete series.")
    if (np.abs(gaps - usual) > tolerance).any():
        k = int(np.argmax(np.abs(gaps - usual)))
        raise InputError(f"{name}: its slices are not evenly spaced (gaps from {gaps.min():.3g} to {gaps.max():.3g} mm "
                         f"along the slice normal, {gaps[k]:.3g} mm between {files[k]} and {files[k + 1]}); resample "
                         "it to even spacing or export it again.")
    step = (positions[-1] - positions[0]) / (len(slices) - 1)
    off = np.linalg.norm(positions - (positions[0] + np.arange(len(slices))[:, None] * step), axis=1)
    if (off > max(POSITION_TOLERANCE * float(np.linalg.norm(step)), POSITION_TOLERANCE_MM)).any():
        k = int(np.argmax(off))
        raise InputError(f"{name}: its slice positions do not lie on one line ({files[k]} lies {off[k]:.3g} mm off "
                         "it); export the series again as one volume.")
    return step


def _read_pixels(series: DicomSeries, first: _Slice) -> tuple[np.ndarray, str]:
    """The series' voxels (Z, Y, X) float32 with each slice's rescale applied ((C, Z, Y, X) for colour), and the
    stored voxel type.

    Raises:
        InputError: GDCM cannot decode a file (naming the series and GDCM's reason).
    """
    import SimpleITK as sitk

    samples = int(first.get("SamplesPerPixel", 1) or 1)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(path) for path in series.files])
    reader.SetOutputPixelType(sitk.sitkVectorFloat32 if samples > 1 else sitk.sitkFloat32)
    try:
        image = reader.Execute()
    except Exception as exc:  # ITK raises RuntimeError with several lines
        where = next((f"{file} ({series})" for file in series.files if not _decodes(file)), str(series))
        raise InputError(f"{where}: cannot decode its pixel data ({itk_message(exc)}); export the series again.") \
            from None
    array = sitk.GetArrayFromImage(image)  # (Z, Y, X) or (Z, Y, X, C)
    if samples > 1:
        array = np.moveaxis(array, -1, 0)
    bits = int(first.get("BitsAllocated", 16) or 16)
    stored = f"{'int' if int(first.get('PixelRepresentation', 0) or 0) else 'uint'}{bits}"
    return np.ascontiguousarray(array, dtype=np.float32), stored


def _decodes(path: Path) -> bool:
    """Whether GDCM decodes one file's pixels (asked file by file only once the series failed, to name the file)."""
    import SimpleITK as sitk

    try:
        sitk.ReadImage(str(path))
    except Exception:
        return False
    return True
