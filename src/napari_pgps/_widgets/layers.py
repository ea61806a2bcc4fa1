"""Turning napari layers into engine volumes and back, keeping the geometry."""

from __future__ import annotations

from typing import Optional

import numpy as np

from .._reader import DICOM_SERIES, STORED_AXES
from ..data.dataset import Case, TrainingSet
from ..data.geometry import AFFINE_TOLERANCE, label_dtype, layer_to_world, reverse_axes
from ..data.volume import Volume, nifti_header
from ..errors import InputError


def world_matrix(layer) -> np.ndarray:
    """The 4x4 matrix taking a layer's last three data axes (Z, Y, X) to world (z, y, x): its affine after its
    scale, translate, rotation and shear (:func:`~napari_pgps.data.geometry.layer_to_world`)."""
    return layer_to_world(layer.affine.affine_matrix, layer.scale, layer.translate, layer.rotate, layer.shear)


def nifti_affine(layer) -> np.ndarray:
    """The NIfTI affine (voxel (i, j, k) -> world (x, y, z) mm) of a layer's last three data axes (Z, Y, X), as
    :class:`~napari_pgps.data.volume.Volume` and :func:`~napari_pgps.data.geometry.spacing_of` take it."""
    return reverse_axes(world_matrix(layer))


def placement(layer) -> dict:
    """Keyword arguments that place a new 3D layer exactly over ``layer`` (whose last three axes are Z, Y, X)."""
    matrix = world_matrix(layer)
    return {"affine": matrix}


def source_grid(layer) -> dict:
    """The metadata a layer made over ``layer`` carries so that the writer saves it on ``layer``'s source file grid:
    the file's NIfTI header codes (``nifti``), the order its axes are shown in (``stored_axes``) and, for a DICOM
    series, the series it came from (``dicom_series``, for a DICOM SEG), where known."""
    metadata = layer.metadata or {}
    return {key: metadata[key] for key in ("nifti", STORED_AXES, DICOM_SERIES) if key in metadata}


def volume_from_layer(layer, kind: str = "image") -> Volume:
    """A copy of a layer's data as a :class:`Volume`: (Z, Y, X), or (C, Z, Y, X) for an image layer with a leading
    channel axis.

    The affine is the layer's placement in the world (:func:`world_matrix`), so
    a volume read by our reader in any orientation keeps its own. Its axes are
    the layer's: for a file our reader showed with its axes reordered
    (``stored_axes``), the same voxels in another order, which the engine
    reorients to its canonical orientation as it does the file itself. The
    layer is never modified.
    """
    data = np.asarray(layer.data)
    if data.ndim != 3 and not (kind == "image" and data.ndim == 4):
        raise InputError(f"layer '{layer.name}' is {data.ndim}D (shape {data.shape}); a 3D layer "
                         "(or, for an image, channels x 3D) is expected.")
    affine = nifti_affine(layer)
    codes = (layer.metadata or {}).get("nifti") or {}
    if kind == "labels":
        if not np.issubdtype(data.dtype, np.integer):
            raise InputError(f"labels layer '{layer.name}' holds {data.dtype} values; labels must be whole numbers.")
        array = data.astype(label_dtype(data.max(initial=0)))
    else:
        array = data.astype(np.float32)
        if not np.isfinite(array).all():
            raise InputError(f"image layer '{layer.name}' holds NaN or infinite values; fix or mask them first.")
    return Volume(array=array, affine=affine, header=nifti_header(affine, codes))


def image_from_layers(layers: list) -> Volume:
    """One image of several channels from image layers (in the order given) that cover the same voxels.

    Raises:
        InputError: a layer is not 3D, or the layers differ in shape or placement.
    """
    volumes = [volume_from_layer(layer) for layer in layers]
    first = volumes[0]
    for layer, volume in zip(layers[1:], volumes[1:]):
        if volume.shape != first.shape or not np.allclose(volume.affine, first.affine, atol=AFFINE_TOLERANCE):
            raise InputError(f"image layer '{layer.name}' differs from '{layers[0].name}' in shape or placement; the "
                             "channels of an image must cover the same voxels.")
    if len(volumes) == 1:
        return first
    return Volume(np.concatenate([v.channel_first() for v in volumes]), first.affine, header=first.header)


def label_names_of(layer) -> dict[int, str]:
    """Label value -> name from a labels layer's metadata (``label_names``) or its values."""
    names = (layer.metadata or {}).get("label_names")
    if names:
        return {int(k): str(v) for k, v in names.items()}
    values = np.unique(np.asarray(layer.data))
    return {int(v): ("background" if v == 0 else f"label {int(v)}") for v in values} | {0: "background"}


def training_set_from_layers(pairs: list[tuple[object, object]], channels: Optional[list[str]] = None) -> TrainingSet:
    """Labelled cases from (image layer or list of channel layers, labels layer) pairs; label names merged.

    Args:
        pairs: each image (one layer, or its channel layers in order) with its labels layer; a labels layer must
            cover the same voxels as its image (same shape and placement in the world).
        channels: the name of each image channel ("CT" gets CT normalisation, see
            :mod:`napari_pgps.data.normalization`); ``None`` names them "channel 0", "channel 1", ...

    Raises:
        InputError: no pairs, a labels layer on other voxels than its image, channel counts that differ between
            cases or from ``channels``.
    """
    if not pairs:
        raise InputError("no training data: open an image and a labels layer, or choose a dataset folder.")
    cases, labels = [], {}
    for image_layer, labels_layer in pairs:
        image = image_from_layers(image_layer if isinstance(image_layer, (list, tuple)) else [image_layer])
        image_layer = image_layer[0] if isinstance(image_layer, (list, tuple)) else image_layer
        label_map = volume_from_layer(labels_layer, "labels")
        if image.shape != label_map.shape:
            raise InputError(
                f"labels layer '{labels_layer.name}' has shape {label_map.shape}, image layer '{image_layer.name}' "
                f"{image.shape}; pair layers that cover the same voxels."
            )
        if not np.allclose(image.affine, label_map.affine, atol=AFFINE_TOLERANCE):
            raise InputError(
                f"labels layer '{labels_layer.name}' is placed elsewhere in the world than image layer "
                f"'{image_layer.name}' (another affine, scale or translate); pair layers that cover the same voxels."
            )
        labels.update(label_names_of(labels_layer))
        cases.append(Case(name=image_layer.name, image=image, labels=label_map))
    present = set().union(*(np.unique(c.labels.array).tolist() for c in cases))
    labels.update({int(v): f"label {int(v)}" for v in present if int(v) not in labels})
    counts = {case.image.channels for case in cases}
    if len(counts) > 1:
        raise InputError("the training images differ in their number of channels; give every case the same channels.")
    count = counts.pop()
    if channels is not None and len(channels) != count:
        raise InputError(f"{len(channels)} channel name(s) ({', '.join(channels)}) for images of {count} channel(s); "
                         "give one name per channel.")
    return TrainingSet(cases=cases, labels=dict(sorted(labels.items())),
                       channels=list(channels) if channels is not None else [f"channel {c}" for c in range(count)])


def box_outlines(shape: tuple[int, int, int], boxes: list[tuple[tuple[int, int, int], tuple[int, int, int]]]) -> np.ndarray:
    """A uint8 volume (Z, Y, X) with the outline of each (origin, size) box drawn on every slice it spans."""
    out = np.zeros(shape, dtype=np.uint8)
    for index, (origin, size) in enumerate(boxes, start=1):
        lo = [max(0, int(o)) for o in origin]
        hi = [min(n, int(o) + int(s)) - 1 for o, s, n in zip(origin, size, shape)]
        if any(h < l for l, h in zip(lo, hi)):
            continue
        (z0, y0, x0), (z1, y1, x1) = lo, hi
        value = 1 + (index - 1) % 8
        out[z0 : z1 + 1, [y0, y1], x0 : x1 + 1] = value
        out[z0 : z1 + 1, y0 : y1 + 1, [x0, x1]] = value
    return out


def find_layer(viewer, name: Optional[str]):
    return next((layer for layer in viewer.layers if layer.name == name), None) if name else None
