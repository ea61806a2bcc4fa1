"""Turning napari layers into engine volumes and back, keeping the geometry."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..data.dataset import Case, TrainingSet, check_case
from ..data.volume import Volume, affine_from_spacing
from ..errors import InputError


def volume_from_layer(layer, kind: str = "image") -> Volume:
    """A copy of a 3D layer's data as a :class:`Volume` (Z, Y, X).

    The affine is the one our reader kept in the layer's metadata when it
    still fits the data, else a diagonal one from the layer's scale and
    translate. The layer itself is never modified.
    """
    data = np.asarray(layer.data)
    if data.ndim != 3:
        raise InputError(f"layer '{layer.name}' is {data.ndim}D (shape {data.shape}); a 3D layer is expected.")
    affine = (layer.metadata or {}).get("affine")
    if affine is None or np.asarray(affine).shape != (4, 4):
        affine = affine_from_spacing(tuple(float(s) for s in layer.scale[-3:]))
        affine[:3, 3] = [float(t) for t in layer.translate[-3:][::-1]]
    if kind == "labels":
        if not np.issubdtype(data.dtype, np.integer):
            raise InputError(f"labels layer '{layer.name}' holds {data.dtype} values; labels must be whole numbers.")
        array = data.astype(np.uint8 if data.max(initial=0) < 256 else np.int16)
    else:
        array = data.astype(np.float32)
        if not np.isfinite(array).all():
            raise InputError(f"image layer '{layer.name}' holds NaN or infinite values; fix or mask them first.")
    return Volume(array=array, affine=np.asarray(affine, dtype=float))


def label_names_of(layer) -> dict[int, str]:
    """Label value -> name from a labels layer's metadata (``label_names``) or its values."""
    names = (layer.metadata or {}).get("label_names")
    if names:
        return {int(k): str(v) for k, v in names.items()}
    values = np.unique(np.asarray(layer.data))
    return {int(v): ("background" if v == 0 else f"label {int(v)}") for v in values} | {0: "background"}


def training_set_from_layers(pairs: list[tuple[object, object]]) -> TrainingSet:
    """Labelled cases from (image layer, labels layer) pairs; label names merged over all pairs."""
    if not pairs:
        raise InputError("no training data: open an image and a labels layer, or choose a dataset folder.")
    cases, labels = [], {}
    for image_layer, labels_layer in pairs:
        image = volume_from_layer(image_layer, "image")
        label_map = volume_from_layer(labels_layer, "labels")
        label_map.affine = image.affine.copy()
        if image.shape != label_map.shape:
            raise InputError(
                f"labels layer '{labels_layer.name}' has shape {label_map.shape}, image layer '{image_layer.name}' "
                f"{image.shape}; pair layers that cover the same voxels."
            )
        check_case(image, label_map)
        labels.update(label_names_of(labels_layer))
        cases.append(Case(name=image_layer.name, image=image, labels=label_map))
    present = set().union(*(np.unique(c.labels.array).tolist() for c in cases))
    labels.update({int(v): f"label {int(v)}" for v in present if int(v) not in labels})
    return TrainingSet(cases=cases, labels=dict(sorted(labels.items())), modality="unknown")


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
