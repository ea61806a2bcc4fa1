"""Reading and writing 3D volumes with their geometry.

A :class:`Volume` carries the voxel array in (Z, Y, X) order together with the
spacing and the affine, so nothing downstream loses the geometry. Formats:
NIfTI (nibabel), TIFF (tifffile), NRRD and MetaImage (SimpleITK,
:mod:`~napari_pgps.data.itk_image`) and DICOM series, read only
(:mod:`~napari_pgps.data.dicom`; written back as a DICOM SEG by
:mod:`~napari_pgps.data.dicom_seg`).

Conventions:

* ``array`` has shape (Z, Y, X), or (C, Z, Y, X) for an image of several
  channels (a 4D NIfTI stores them as (x, y, z, c)). For NIfTI this is the
  file's (i, j, k) voxel order reversed, which puts the slowest-varying axis
  first as napari expects.
* ``spacing`` is (sz, sy, sx) in millimetres.
* ``affine`` is the 4x4 NIfTI affine of the file, mapping a voxel index
  (i, j, k, 1) = (x, y, z, 1) to world coordinates in mm (RAS+). It is kept as
  the file had it, so written results share the source's geometry exactly.
  NRRD, MetaImage and DICOM place voxels in LPS (x to the left, y posterior):
  their affine is the same placement turned to RAS, and their arrays are the
  file's (k, j, i) voxels, like NIfTI's.

TIFF has no world geometry of its own: a TIFF volume gets a diagonal affine
(no orientation: its voxel axes are taken as RAS) from its voxel size, read
from the resolution tags in their unit (inch, cm, mm, µm) or, for an ImageJ
file, in the unit its metadata names (``unit=micron``), with ImageJ's
``spacing`` between slices. A size the file does not give is 1 mm, and the
volume's :attr:`Volume.notes` say so. The file's named axes (ImageJ
hyperstacks, OME-TIFF) put channels first, whatever order they are stored in
(ImageJ stores Z before C).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import InputError
from ..files import atomic_path
from .dicom import DicomSeries, is_dicom_file, read_dicom
from .geometry import affine_from_spacing, label_dtype, spacing_of
from .itk_image import ITK_SUFFIXES, ITK_WRITE_SUFFIXES, read_itk, write_itk

NIFTI_SUFFIXES = (".nii", ".nii.gz")
TIFF_SUFFIXES = (".tif", ".tiff")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + TIFF_SUFFIXES + ITK_SUFFIXES
"""The endings of the volume files read (a DICOM series is a folder, or files of any name)."""
WRITE_SUFFIXES = NIFTI_SUFFIXES + TIFF_SUFFIXES + ITK_WRITE_SUFFIXES
"""The endings of the volume files written."""
MAX_LABEL_VALUE = 32767
"""The highest label value read (label maps are kept as int16 beyond 255)."""


@dataclass
class Volume:
    """A 3D image or label map with its geometry.

    Attributes:
        array: voxel values, shape (Z, Y, X); an image of several channels (C, Z, Y, X).
        affine: 4x4 NIfTI-style voxel-to-world matrix for index order (x, y, z).
        path: where the volume was read from, if anywhere (a DICOM series: its folder).
        header: the source NIfTI header, kept to write results with the same geometry.
        notes: what reading the file had to assume (e.g. "spacing unknown, 1 mm assumed"), one sentence each.
        stored_dtype: the voxel type in the file, before it was read as float32 (images) or uint8/int16 (labels).
        dicom: the DICOM series it was read from (UID, description, files in Z order), what a DICOM SEG written for
            it references; ``None`` for other formats.
    """

    array: np.ndarray
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    path: Optional[Path] = None
    header: Any = None
    notes: tuple[str, ...] = ()
    stored_dtype: Optional[str] = None
    dicom: Optional[DicomSeries] = None

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm, (sz, sy, sx)."""
        return spacing_of(self.affine)

    @property
    def shape(self) -> tuple[int, int, int]:
        """The spatial shape (Z, Y, X), whatever the channels."""
        return tuple(int(s) for s in self.array.shape[-3:])

    @property
    def channels(self) -> int:
        """1 for a (Z, Y, X) array, C for (C, Z, Y, X)."""
        return 1 if self.array.ndim == 3 else int(self.array.shape[0])

    def channel_first(self) -> np.ndarray:
        """The array as (C, Z, Y, X) (a view)."""
        return self.array if self.array.ndim == 4 else self.array[None]

    @property
    def name(self) -> str:
        return case_name(self.path) if self.path else "volume"

    def with_array(self, array: np.ndarray) -> "Volume":
        """A new volume with the same geometry (affine, header, DICOM series and the notes on it) and another array
        of the same spatial shape."""
        if tuple(array.shape[-3:]) != self.shape:
            raise ValueError(f"spatial shape {tuple(array.shape[-3:])} differs from {self.shape}")
        return Volume(array=array, affine=self.affine.copy(), path=self.path, header=self.header, notes=self.notes,
                      dicom=self.dicom)


def nifti_codes(header: Any) -> dict[str, Any]:
    """A NIfTI header's sform and qform codes and spatial unit (``{}`` without a header)."""
    if header is None:
        return {}
    return {"sform_code": int(header["sform_code"]), "qform_code": int(header["qform_code"]),
            "unit": header.get_xyzt_units()[0]}


def nifti_header(affine: np.ndarray, codes: dict[str, Any]) -> Any:
    """A NIfTI header holding ``affine`` with the given sform/qform codes and unit (scanner, mm by default)."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_sform(affine, code=int(codes.get("sform_code", 1)))
    header.set_qform(affine, code=int(codes.get("qform_code", 1)))
    header.set_xyzt_units(codes.get("unit") or "mm")
    return header


def case_name(path: Path) -> str:
    """File name without its volume suffix: ``a/case_001.nii.gz`` -> ``case_001``."""
    name = Path(path).name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_volume_file(path: Path) -> bool:
    """Whether a file's name is that of a volume file read (a DICOM series, a folder, is not one)."""
    name = path.name.lower()
    return not name.startswith(".") and name.endswith(VOLUME_SUFFIXES)


def read_volume(path: str | os.PathLike, *, kind: str = "image", series: Optional[str] = None) -> Volume:
    """Read a 3D volume: NIfTI (``.nii``, ``.nii.gz``), TIFF, NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``,
    ``.mhd``) or a DICOM series (its folder or any one of its files); an image may have channels.

    Args:
        path: the file, or a DICOM series' folder.
        kind: ``"image"`` (intensities must be finite; returned as float32,
            (Z, Y, X) or (C, Z, Y, X)) or ``"labels"`` (values must be whole
            numbers; returned as uint8/int16, (Z, Y, X)).
        series: for a folder holding several DICOM series, the SeriesInstanceUID of the one to read.

    Raises:
        InputError: missing or unreadable file, a header claiming more data than the file holds, not 3D (or
            4D for an image), NaN or infinite intensities, labels that are not whole numbers, or a DICOM folder
            or series that cannot be read as one volume (see :mod:`~napari_pgps.data.dicom`).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found.")
    name = path.name.lower()
    notes: tuple[str, ...] = ()
    header = dicom = stored_dtype = None
    if name.endswith(NIFTI_SUFFIXES):
        array, affine, header = _read_nifti(path)
    elif name.endswith(TIFF_SUFFIXES):
        array, affine, notes = _read_tiff(path)
    elif name.endswith(ITK_SUFFIXES):
        array, affine = read_itk(path)
    elif path.is_dir() or is_dicom_file(path):
        array, affine, notes, dicom, stored_dtype = read_dicom(path, series)
        path = path if path.is_dir() else path.parent
    else:
        raise InputError(f"{path}: unsupported file type; use NIfTI (.nii, .nii.gz), TIFF (.tif, .tiff), NRRD "
                         "(.nrrd, .nhdr), MetaImage (.mha, .mhd) or a DICOM series (its folder or one of its files).")
    if series is not None and dicom is None:
        raise InputError(f"{path}: not a DICOM series; a series UID chooses among the series of a DICOM folder.")
    stored_dtype = stored_dtype or str(array.dtype)
    array = _spatial_array(array, path, channels_allowed=kind != "labels")
    if kind == "labels":
        array = _as_labels(array, path)
    else:
        array = np.asarray(array, dtype=np.float32)
        if not np.isfinite(array).all():
            bad = int((~np.isfinite(array)).sum())
            raise InputError(
                f"{path}: {bad} voxel(s) are NaN or infinite; fix or mask them before using this image."
            )
    return Volume(array=np.ascontiguousarray(array), affine=affine, path=path, header=header, notes=notes,
                  stored_dtype=stored_dtype, dicom=dicom)


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray, Any]:
    import nibabel as nib

    try:
        image = nib.load(str(path))  # the header only: the voxels are read below
        _check_data_size(path, image.header)
        data = np.asanyarray(image.dataobj)
    except InputError:
        raise
    except Exception as exc:  # nibabel raises many types for damaged files
        raise InputError(f"{path}: cannot read this NIfTI file ({one_line(exc)}).") from None
    if data.ndim < 3:
        raise InputError(f"{path}: the volume is {data.ndim}D (shape {data.shape}); a 3D volume is expected.")
    # NIfTI stores (x, y, z[, t, ...]); we work in ([..., t,] z, y, x).
    data = np.transpose(data, tuple(range(data.ndim - 1, 2, -1)) + (2, 1, 0))
    return data, np.asarray(image.affine, dtype=np.float64), image.header.copy()


def one_line(exc: Exception) -> str:
    """An exception as ``Type: message`` on one line (libraries' messages may run over several)."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _check_data_size(path: Path, header: Any) -> None:
    """Refuse a NIfTI file whose header describes more voxel data than the file holds, before any is read.

    (Reading it would first fill the size the header claims, e.g. 512 MiB for a file of a few hundred bytes.)
    For ``.nii.gz`` the size of the decompressed data is bounded by the gzip trailer and, where that is not
    enough (several gzip members, or more than 4 GiB), counted by decompressing with a small buffer.
    """
    shape, dtype, offset = header.get_data_shape(), header.get_data_dtype(), int(header.get_data_offset())
    data_size = int(np.prod(shape, dtype=object)) * dtype.itemsize
    compressed = path.name.lower().endswith(".gz")
    held = _decompressed_size(path, offset + data_size) if compressed else path.stat().st_size
    if held < offset + data_size:
        raise InputError(f"{path}: its header describes {' x '.join(map(str, shape))} voxels of {dtype} "
                         f"({_byte_size(data_size)}) but the file holds {_byte_size(max(held - offset, 0))} of voxel "
                         f"data{' once decompressed' if compressed else ''}; the file is truncated or its header is "
                         "damaged.")


def _decompressed_size(path: Path, needed: int) -> int:
    """The decompressed size of a gzip file, or ``needed`` once it is known to be at least that."""
    with open(path, "rb") as file:
        file.seek(-4, os.SEEK_END)
        last_member = int.from_bytes(file.read(4), "little")  # ISIZE: the last member's size, modulo 2^32
    if last_member >= needed:
        return needed
    held = 0
    with gzip.open(path, "rb") as stream:
        while held < needed:
            chunk = stream.read(min(1 << 20, needed - held))
            if not chunk:
                break
            held += len(chunk)
    return held


def _byte_size(size: int) -> str:
    return f"{size} bytes" if size < 1 << 20 else f"{size / (1 << 20):,.0f} MiB"


MM_PER_UNIT = {"mm": 1.0, "millimeter": 1.0, "µm": 1e-3, "um": 1e-3, "micron": 1e-3, "microns": 1e-3,
               "micrometer": 1e-3, "nm": 1e-6, "nanometer": 1e-6, "cm": 10.0, "centimeter": 10.0, "m": 1000.0,
               "meter": 1000.0, "inch": 25.4, "in": 25.4}
"""Millimetres per length unit, by the names ImageJ metadata gives them (lower case; µ also written μ or \\u00B5)."""
RESOLUTION_UNIT_MM = {2: 25.4, 3: 10.0, 4: 1.0, 5: 1e-3}
"""Millimetres per TIFF ResolutionUnit: inch (2), centimetre (3), and tifffile's millimetre (4) and micrometre (5);
1 (none) names no unit."""
TIFF_ORIENTATION_NOTE = "TIFF has no orientation: the voxel axes (X, Y, Z) taken as RAS"
IMAGEJ_DEFAULT_SPACING = 1.0
"""ImageJ leaves ``spacing`` out of its metadata when the slices are 1 unit apart."""


def _read_tiff(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """The voxels ([C,] Z, Y, X), the affine and the notes on what was assumed (see the module docstring)."""
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tif:
            series = tif.series[0]
            named = series.kind in ("imagej", "ome")
            data = _channels_first(series.asarray(), series.axes, named)
            spacing, notes = _tiff_spacing(tif)
    except Exception as exc:
        raise InputError(f"{path}: cannot read this TIFF file ({one_line(exc)}).") from None
    return data, affine_from_spacing(spacing), notes + (TIFF_ORIENTATION_NOTE,)


def _channels_first(data: np.ndarray, axes: str, named: bool) -> np.ndarray:
    """A TIFF series' array with its axes in the order (other axes..., Z, Y, X), from tifffile's axis letters.

    ``named``: the file names its axes (ImageJ, OME-TIFF), so an image with no Z axis is one slice (ImageJ stores
    a hyperstack T, Z, C, Y, X: its channels are moved before Z). Otherwise the axis before Y is the one the pages
    run along (tifffile calls it I, Q or S), and interleaved samples (RGB, after X) are channels.
    """
    if "Y" not in axes or "X" not in axes:
        return data
    if "Z" not in axes:
        y = axes.index("Y")
        if named:
            data, axes = np.expand_dims(data, y), axes[:y] + "Z" + axes[y:]
        elif y == 0:
            return data  # a single page: 2D, refused by the caller
        else:
            axes = axes[: y - 1] + "Z" + axes[y:]
    others = [i for i, letter in enumerate(axes) if letter not in "ZYX"]
    return np.transpose(data, others + [axes.index(letter) for letter in "ZYX"])


def _tiff_spacing(tif: Any) -> tuple[tuple[float, float, float], tuple[str, ...]]:
    """(sz, sy, sx) in mm and notes on what was assumed; see the module docstring."""
    imagej = tif.imagej_metadata
    page = tif.pages[0]
    sizes = [float(imagej.get("spacing", IMAGEJ_DEFAULT_SPACING)) if imagej else None]  # in the file's unit
    for name in ("YResolution", "XResolution"):
        tag = page.tags.get(name)
        pixels_per_unit = tag.value[0] / tag.value[1] if tag is not None and tag.value[0] and tag.value[1] else 0
        sizes.append(1 / pixels_per_unit if pixels_per_unit else None)
    unit_name = str((imagej or {}).get("unit", "")).strip()
    mm_per_unit = MM_PER_UNIT.get(unit_name.lower().replace("\\u00b5", "µ").replace("μ", "µ"))
    unit_tag = page.tags.get("ResolutionUnit")
    if mm_per_unit is None and unit_tag is not None:
        mm_per_unit = RESOLUTION_UNIT_MM.get(int(unit_tag.value))
    if mm_per_unit is not None:
        unknown = [axis for axis, size in zip("ZYX", sizes) if size is None]
        spacing = tuple(size * mm_per_unit if size is not None else 1.0 for size in sizes)
        return spacing, ((f"{', '.join(unknown)} spacing unknown, 1 mm assumed",) if unknown else ())
    spacing = tuple(size if size is not None else 1.0 for size in sizes)
    if all(size in (None, 1.0) for size in sizes):
        return spacing, ("spacing unknown, 1 mm assumed",)
    unit = f"names the unknown length unit {unit_name!r}" if unit_name else "names no length unit"
    return spacing, (f"the file {unit}: its voxel size {'/'.join(f'{s:g}' for s in spacing)} (Z/Y/X) taken as mm",)


def _spatial_array(array: np.ndarray, path: Path, channels_allowed: bool) -> np.ndarray:
    """(Z, Y, X), or (C, Z, Y, X) when several channels are allowed and present (leading axes of size 1 dropped).

    A single slice (a spatial axis of size 1) is read: napari shows it and ``info`` describes it; training and
    segmentation refuse it as 2D (:func:`napari_pgps.data.dataset.check_image`).
    """
    if array.ndim > 3:
        leading = int(np.prod(array.shape[: array.ndim - 3]))
        if leading == 1:
            array = array.reshape(array.shape[-3:])
        elif channels_allowed:
            array = array.reshape((leading,) + array.shape[-3:])
        else:
            raise InputError(
                f"{path}: the label map is {array.ndim}D (shape {array.shape}); one 3D label map is expected."
            )
    if array.ndim not in (3, 4):
        raise InputError(f"{path}: the volume is {array.ndim}D (shape {array.shape}); a 3D volume is expected.")
    if min(array.shape) < 1:
        raise InputError(f"{path}: the volume is empty (shape {array.shape}).")
    return array


def read_image(paths: Sequence[str | os.PathLike], *, series: Optional[str] = None) -> Volume:
    """One image from one file per channel (nnU-Net's ``CASE_0000``, ``CASE_0001``, ...), as (C, Z, Y, X).

    A single path is read as it is (3D, or 4D with its channels). ``series``: the DICOM series to read from a
    folder of several (:func:`read_volume`).

    Raises:
        InputError: a file cannot be read, or the channels differ in shape or geometry.
    """
    volumes = [read_volume(path, kind="image", series=series) for path in paths]
    if len(volumes) == 1:
        return volumes[0]
    first = volumes[0]
    for volume in volumes[1:]:
        if volume.shape != first.shape or not np.allclose(volume.affine, first.affine, atol=1e-3):
            raise InputError(f"{volume.path}: its shape or geometry differs from {first.path}; the channels of a case "
                             "must cover the same voxels.")
    array = np.concatenate([v.channel_first() for v in volumes])
    return Volume(array=array, affine=first.affine, path=first.path, header=first.header, notes=first.notes,
                  dicom=first.dicom)


def _as_labels(array: np.ndarray, path: Path) -> np.ndarray:
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise InputError(f"{path}: the label map holds NaN or infinite values; labels must be whole numbers.")
        if not np.array_equal(array, np.round(array)):
            raise InputError(
                f"{path}: the label map holds non-integer values (e.g. {array[array != np.round(array)].flat[0]}); "
                "labels must be whole numbers such as 0, 1, 2."
            )
    elif not np.issubdtype(array.dtype, np.integer) and array.dtype != bool:
        raise InputError(f"{path}: label values of type {array.dtype} are not whole numbers.")
    if array.size and (array.min() < 0 or array.max() > MAX_LABEL_VALUE):
        raise InputError(f"{path}: label values must lie in 0..{MAX_LABEL_VALUE} (found {array.min()}..{array.max()}).")
    return array.astype(label_dtype(array.max(initial=0)))


def write_volume(volume: Volume, path: str | os.PathLike) -> Path:
    """Write ``volume`` as NIfTI, TIFF, NRRD (``.nrrd``) or MetaImage (``.mha``) atomically, on its grid.

    NIfTI: the array is written in (x, y, z) order, the transpose of ``volume.array``; a header copied from the
    source keeps its qform/sform codes. NRRD and MetaImage: the affine as ITK's LPS origin, spacing and direction
    (:func:`~napari_pgps.data.itk_image.write_itk`), so a result written for an NRRD, MetaImage or DICOM input has
    that input's size, origin and direction. The data type follows the array.
    """
    import nibabel as nib

    path = Path(path)
    name = path.name.lower()
    if name.endswith(ITK_SUFFIXES):
        write_itk(volume.array, volume.affine, path)
        return path
    suffix = ".nii.gz" if name.endswith(".nii.gz") else path.suffix
    if not name.endswith(WRITE_SUFFIXES):
        raise InputError(f"{path}: choose an output ending in .nii.gz, .nii, .tif, .tiff, .nrrd or .mha.")
    with atomic_path(path, suffix=suffix) as tmp:
        if name.endswith(NIFTI_SUFFIXES):
            data = np.transpose(volume.array, tuple(range(volume.array.ndim))[::-1])  # (x, y, z[, c])
            header = volume.header.copy() if volume.header is not None else None
            image = nib.Nifti1Image(data, volume.affine, header=header)
            image.set_data_dtype(data.dtype)
            if header is not None:
                image.header.set_slope_inter(1.0, 0.0)
            nib.save(image, tmp)
        else:
            import tifffile

            sz, sy, sx = volume.spacing
            tifffile.imwrite(tmp, volume.array, imagej=True, resolution=(1 / sx, 1 / sy),
                             metadata={"spacing": sz, "unit": "mm", "axes": "ZYX"})
    return path
