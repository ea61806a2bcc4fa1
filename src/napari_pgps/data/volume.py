"""Reading and writing 3D volumes with their geometry.

A :class:`Volume` carries the voxel array in (Z, Y, X) order together with the
spacing and the affine, so nothing downstream loses the geometry.

Conventions:

* ``array`` has shape (Z, Y, X), or (C, Z, Y, X) for an image of several
  channels (a 4D NIfTI stores them as (x, y, z, c)). For NIfTI this is the
  file's (i, j, k) voxel order reversed, which puts the slowest-varying axis
  first as napari expects.
* ``spacing`` is (sz, sy, sx) in millimetres.
* ``affine`` is the 4x4 NIfTI affine of the file, mapping a voxel index
  (i, j, k, 1) = (x, y, z, 1) to world coordinates in mm (RAS+). It is kept as
  the file had it, so written results share the source's geometry exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import InputError
from ..files import atomic_path

NIFTI_SUFFIXES = (".nii", ".nii.gz")
TIFF_SUFFIXES = (".tif", ".tiff")


@dataclass
class Volume:
    """A 3D image or label map with its geometry.

    Attributes:
        array: voxel values, shape (Z, Y, X); an image of several channels (C, Z, Y, X).
        affine: 4x4 NIfTI-style voxel-to-world matrix for index order (x, y, z).
        path: where the volume was read from, if anywhere.
        header: the source NIfTI header, kept to write results with the same geometry.
    """

    array: np.ndarray
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    path: Optional[Path] = None
    header: Any = None

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm, (sz, sy, sx)."""
        sizes = np.sqrt((np.asarray(self.affine)[:3, :3] ** 2).sum(axis=0))  # (sx, sy, sz)
        return tuple(float(s) for s in sizes[::-1])

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
        """A new volume with the same geometry (affine and header) and another array of the same spatial shape."""
        if tuple(array.shape[-3:]) != self.shape:
            raise ValueError(f"spatial shape {tuple(array.shape[-3:])} differs from {self.shape}")
        return Volume(array=array, affine=self.affine.copy(), path=self.path, header=self.header)


def reverse_axes(affine: np.ndarray) -> np.ndarray:
    """A NIfTI affine (voxel (i, j, k) -> world (x, y, z)) as the affine of our (Z, Y, X) arrays to world (z, y, x),
    as napari takes it; and back (the operation is its own inverse)."""
    flip = np.eye(4)[[2, 1, 0, 3]]
    return flip @ np.asarray(affine, dtype=float) @ flip


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


def affine_from_spacing(spacing: tuple[float, float, float]) -> np.ndarray:
    """A diagonal NIfTI affine for a (sz, sy, sx) spacing and origin 0."""
    sz, sy, sx = spacing
    return np.diag([sx, sy, sz, 1.0])


def case_name(path: Path) -> str:
    """File name without its volume suffix: ``a/case_001.nii.gz`` -> ``case_001``."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES + TIFF_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_volume_file(path: Path) -> bool:
    name = path.name.lower()
    return not name.startswith(".") and name.endswith(NIFTI_SUFFIXES + TIFF_SUFFIXES)


def read_volume(path: str | os.PathLike, *, kind: str = "image") -> Volume:
    """Read a 3D NIfTI (``.nii``, ``.nii.gz``) or TIFF volume; an image may be 4D (channels).

    Args:
        path: the file.
        kind: ``"image"`` (intensities must be finite; returned as float32,
            (Z, Y, X) or (C, Z, Y, X)) or ``"labels"`` (values must be whole
            numbers; returned as uint8/int16, (Z, Y, X)).

    Raises:
        InputError: missing or unreadable file, not 3D (or 4D for an image),
            NaN or infinite intensities, or labels that are not whole numbers.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found.")
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        array, affine, header = _read_nifti(path)
    elif name.endswith(TIFF_SUFFIXES):
        array, affine = _read_tiff(path)
        header = None
    else:
        raise InputError(f"{path}: unsupported file type; use NIfTI (.nii, .nii.gz) or TIFF (.tif, .tiff).")
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
    return Volume(array=np.ascontiguousarray(array), affine=affine, path=path, header=header)


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray, Any]:
    import nibabel as nib

    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except Exception as exc:  # nibabel raises many types for damaged files
        raise InputError(f"{path}: cannot read this NIfTI file ({type(exc).__name__}: {exc}).") from None
    if data.ndim < 3:
        raise InputError(f"{path}: the volume is {data.ndim}D (shape {data.shape}); a 3D volume is expected.")
    # NIfTI stores (x, y, z[, t, ...]); we work in ([..., t,] z, y, x).
    data = np.transpose(data, tuple(range(data.ndim - 1, 2, -1)) + (2, 1, 0))
    return data, np.asarray(image.affine, dtype=np.float64), image.header.copy()


def _read_tiff(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tif:
            data = tif.asarray()
            spacing = _tiff_spacing(tif)
    except Exception as exc:
        raise InputError(f"{path}: cannot read this TIFF file ({type(exc).__name__}: {exc}).") from None
    return data, affine_from_spacing(spacing)


def _tiff_spacing(tif: Any) -> tuple[float, float, float]:
    """(sz, sy, sx) from ImageJ metadata and the resolution tags; 1.0 where absent."""
    sz = float((tif.imagej_metadata or {}).get("spacing", 1.0))
    sy = sx = 1.0
    page = tif.pages[0]
    for tag_name, axis in (("YResolution", "y"), ("XResolution", "x")):
        tag = page.tags.get(tag_name)
        if tag is not None:
            num, den = tag.value
            if num:
                value = den / num
                if axis == "y":
                    sy = value
                else:
                    sx = value
    return sz, sy, sx


def _spatial_array(array: np.ndarray, path: Path, channels_allowed: bool) -> np.ndarray:
    """(Z, Y, X), or (C, Z, Y, X) when several channels are allowed and present (leading axes of size 1 dropped)."""
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


def read_image(paths: Sequence[str | os.PathLike]) -> Volume:
    """One image from one file per channel (nnU-Net's ``CASE_0000``, ``CASE_0001``, ...), as (C, Z, Y, X).

    A single path is read as it is (3D, or 4D with its channels).

    Raises:
        InputError: a file cannot be read, or the channels differ in shape or geometry.
    """
    volumes = [read_volume(path, kind="image") for path in paths]
    if len(volumes) == 1:
        return volumes[0]
    first = volumes[0]
    for volume in volumes[1:]:
        if volume.shape != first.shape or not np.allclose(volume.affine, first.affine, atol=1e-3):
            raise InputError(f"{volume.path}: its shape or geometry differs from {first.path}; the channels of a case "
                             "must cover the same voxels.")
    array = np.concatenate([v.channel_first() for v in volumes])
    return Volume(array=array, affine=first.affine, path=first.path, header=first.header)


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
    if array.size and (array.min() < 0 or array.max() > 32767):
        raise InputError(f"{path}: label values must lie in 0..32767 (found {array.min()}..{array.max()}).")
    dtype = np.uint8 if array.size == 0 or array.max() < 256 else np.int16
    return array.astype(dtype)


def write_volume(volume: Volume, path: str | os.PathLike) -> Path:
    """Write ``volume`` as NIfTI (or TIFF) atomically, keeping its affine and header geometry.

    The array is written in (x, y, z) order, the transpose of ``volume.array``.
    A header copied from the source keeps its qform/sform codes; the data type
    follows the array.
    """
    import nibabel as nib

    path = Path(path)
    name = path.name.lower()
    suffix = ".nii.gz" if name.endswith(".nii.gz") else path.suffix
    if not name.endswith(NIFTI_SUFFIXES + TIFF_SUFFIXES):
        raise InputError(f"{path}: choose an output ending in .nii.gz, .nii, .tif or .tiff.")
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
                             metadata={"spacing": sz, "axes": "ZYX"})
    return path
