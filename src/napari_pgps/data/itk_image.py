"""NRRD (``.nrrd``, ``.nhdr``) and MetaImage (``.mha``, ``.mhd``) volumes, read and written through SimpleITK.

ITK places an image in LPS patient coordinates (x to the patient's left, y
posterior, z superior): voxel index (i, j, k) lies at
``origin + direction @ diag(spacing) @ (i, j, k)``, ``direction``'s columns
being the unit vectors of the voxel axes. NRRD files that declare another
space (RAS, say) are brought to LPS by ITK as it reads them; MetaImage files
are LPS by ITK's convention. Our volumes use a NIfTI-style affine to RAS
(x to the right, y anterior, z superior), so the two differ by the sign of
the first two world axes (:data:`LPS_TO_RAS`). ``sitk.GetArrayFromImage``
gives the voxels as (k, j, i) = (Z, Y, X), our array order; an image of
several components per voxel (an NRRD ``vector`` axis, a MetaImage with
``ElementNumberOfChannels``) or a 4D image is read as channels (C, Z, Y, X).

Written files keep the volume's grid: size, origin, spacing and direction
come from its affine (an affine whose columns are not at right angles, a
sheared grid, cannot be written as ITK's direction and is refused). They are
compressed (gzip for NRRD, zlib for MetaImage). The header-and-data pairs
(``.nhdr``, ``.mhd``) are read but not written, as an output must be one file
written atomically: write ``.nrrd`` or ``.mha``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from ..files import atomic_path

ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
ITK_WRITE_SUFFIXES = (".nrrd", ".mha")
"""The ITK formats written: one file each."""
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""World LPS (ITK, DICOM) to world RAS (NIfTI, ours), and back (it is its own inverse)."""
MAX_COMPRESSION = 1100
"""More voxel bytes than this many times the file's size cannot be in it (zlib compresses 1032:1 at most)."""
RIGHT_ANGLE_TOLERANCE = 1e-4
"""Largest cosine between two voxel axes that still counts as at right angles."""


def ras_affine(direction: np.ndarray, spacing: Sequence[float], origin: Sequence[float]) -> np.ndarray:
    """The 4x4 affine from voxel (i, j, k) to world RAS mm of an image placed in LPS.

    Args:
        direction: 3x3, column ``n`` the LPS unit vector of voxel axis ``n`` (i, j, k).
        spacing: (si, sj, sk) mm, in the voxel axes' order (ITK's, the reverse of our (sz, sy, sx)).
        origin: LPS mm of voxel (0, 0, 0).
    """
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(direction, dtype=float) @ np.diag(np.asarray(spacing, dtype=float))
    lps[:3, 3] = origin
    return LPS_TO_RAS @ lps


def lps_geometry(affine: np.ndarray) -> tuple[np.ndarray, tuple[float, ...], tuple[float, ...]]:
    """The ITK direction (3x3), spacing (si, sj, sk) and origin (LPS) of a RAS affine; :func:`ras_affine` undone.

    Raises:
        InputError: the affine's voxel axes are not at right angles (a sheared grid) or one has no length.
    """
    lps = LPS_TO_RAS @ np.asarray(affine, dtype=float)
    columns = lps[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    if not (spacing > 0).all():
        raise InputError(f"the affine {np.round(affine, 4).tolist()} has a voxel axis of no length.")
    direction = columns / spacing
    cosines = direction.T @ direction - np.eye(3)
    if np.abs(cosines).max() > RIGHT_ANGLE_TOLERANCE:
        raise InputError("the volume's voxel axes are not at right angles (a sheared grid, e.g. a CT with gantry "
                         "tilt), which NRRD and MetaImage cannot hold as ITK writes them; write NIfTI (.nii.gz).")
    return direction, tuple(float(s) for s in spacing), tuple(float(o) for o in lps[:3, 3])


def read_itk(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The voxels ((Z, Y, X), or (C, Z, Y, X) for several components or a 4D image) and RAS affine of an NRRD or
    MetaImage file, in the file's own voxel type.

    Raises:
        InputError: the file cannot be read (damaged, truncated, its data file missing), its header claims more
            voxel data than the file can hold, or it is not 3D (or 4D).
    """
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        _check_data_size(path, reader)
        image = reader.Execute()
    except InputError:
        raise
    except Exception as exc:  # ITK raises RuntimeError with several lines for damaged files
        raise InputError(f"{path}: cannot read this {_format_name(path)} file; it is damaged or truncated "
                         f"({itk_message(exc)}).") from None
    dimension = image.GetDimension()
    if dimension not in (3, 4):
        raise InputError(f"{path}: the volume is {dimension}D (size {image.GetSize()}); a 3D volume is expected.")
    array = sitk.GetArrayFromImage(image)  # (Z, Y, X[, C]) or (T, Z, Y, X[, C])
    if image.GetNumberOfComponentsPerPixel() > 1:
        array = np.moveaxis(array, -1, 0)  # components first
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(dimension, dimension)[:3, :3]
    affine = ras_affine(direction, image.GetSpacing()[:3], image.GetOrigin()[:3])
    return array, affine


def write_itk(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write ``array`` ((Z, Y, X), or (C, Z, Y, X) as a vector image) with the grid of ``affine`` to an ``.nrrd``
    or ``.mha`` file, compressed, atomically.

    Raises:
        InputError: another suffix, or a sheared affine (see :func:`lps_geometry`).
    """
    import SimpleITK as sitk

    suffix = path.suffix.lower()
    if suffix not in ITK_WRITE_SUFFIXES:
        raise InputError(f"{path}: NRRD and MetaImage are written as one file; choose an output ending in "
                         f"{' or '.join(ITK_WRITE_SUFFIXES)}.")
    try:
        direction, spacing, origin = lps_geometry(affine)
    except InputError as error:
        raise InputError(f"{path}: {error}") from None
    if array.dtype == bool or array.dtype == np.float16:  # types ITK does not hold
        array = array.astype(np.uint8 if array.dtype == bool else np.float32)
    vector = array.ndim == 4
    image = sitk.GetImageFromArray(np.moveaxis(array, 0, -1) if vector else array, isVector=vector)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction.reshape(-1).tolist())
    with atomic_path(path, suffix=suffix) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)


def _check_data_size(path: Path, reader: Any) -> None:
    """Refuse a file whose header claims more voxel data than it (with its data file) could hold, before ITK sets
    aside memory for it (a damaged header of a few bytes could claim terabytes)."""
    import SimpleITK as sitk

    voxels = int(np.prod(reader.GetSize(), dtype=object)) * reader.GetNumberOfComponents()
    claimed = voxels * np.dtype(sitk.GetArrayViewFromImage(sitk.Image(1, 1, reader.GetPixelID())).dtype).itemsize
    held = path.stat().st_size + sum(file.stat().st_size for file in data_files(path))
    if claimed > held * MAX_COMPRESSION:
        raise InputError(f"{path}: its header describes {' x '.join(map(str, reader.GetSize()))} voxels "
                         f"({claimed:,} bytes) but the file holds {held:,} bytes; the file is truncated or its header is "
                         "damaged.")


DATA_FILE_KEYS = {".nhdr": re.compile(r"^data ?file:\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE),
                  ".mhd": re.compile(r"^ElementDataFile\s*=\s*(.+?)\s*$", re.MULTILINE)}
"""Where a detached header names its data file."""


def data_files(path: Path) -> list[Path]:
    """The data file a detached header (``.nhdr``, ``.mhd``) names, when it names one file by its name.

    Raises:
        InputError: the named data file is not there.
    """
    key = DATA_FILE_KEYS.get(path.suffix.lower())
    if key is None:
        return []
    with open(path, "rb") as file:
        header = file.read(1 << 16).decode("latin-1")
    found = key.search(header)
    if found is None or found.group(1).upper() in ("LOCAL", "LIST") or " " in found.group(1):
        return []  # the data follows the header, or a list or pattern of files: ITK checks those
    data = path.parent / found.group(1)
    if not data.is_file():
        raise InputError(f"{path}: its data file {found.group(1)} is not there; keep it beside the header.")
    return [data]


def _format_name(path: Path) -> str:
    return "NRRD" if path.suffix.lower() in (".nrrd", ".nhdr") else "MetaImage"


def itk_message(exc: Exception) -> str:
    """ITK's reason on one line, without the source file and object it comes from ("Exception thrown in ...
    itkNrrdImageIO.cxx:935: ITK ERROR: NrrdImageIO(0x55bac3200100): why")."""
    text = " ".join(str(exc).split())
    return re.sub(r"^.*ITK ERROR: \w+\(0x[0-9a-fA-F]+\):\s*", "", text) or type(exc).__name__
