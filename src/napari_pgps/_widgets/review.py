"""Reviewing a segmentation against a reference labels layer: per-label scores and a map of where they disagree.

The scores are the engine's (:func:`napari_pgps.engine.metrics.scores_per_label`: nnU-Net's Dice convention,
MONAI's HD95 in mm) at the voxel spacing of the layers' placement in the world. Nothing here imports Qt: the
Segment widget calls it, and the work can run in a background thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..engine.metrics import label_volumes, scores_per_label
from .layers import world_matrix

FALSE_POSITIVE = 1
"""Disagreement value: the result labels a voxel the reference leaves as background or labels otherwise."""
FALSE_NEGATIVE = 2
"""Disagreement value: the reference labels a voxel the result leaves as background."""
DISAGREEMENT_NAMES = {0: "agreement", FALSE_POSITIVE: "false positive", FALSE_NEGATIVE: "false negative"}
DISAGREEMENT_COLORS = {None: "transparent", 0: "transparent", FALSE_POSITIVE: "red", FALSE_NEGATIVE: "dodgerblue"}


@dataclass
class LabelReview:
    """One foreground label of a result compared with the reference."""

    name: str
    voxels: int
    ml: float
    dice: float
    """NaN when both maps lack the label, 0 when only one has it."""
    hd95: float
    """mm; NaN when both maps lack the label, the image's diagonal (mm) when only one has it."""
    ml_difference: float
    """result minus reference, mL."""


@dataclass
class Review:
    labels: list[LabelReview]
    disagreement: np.ndarray
    """uint8 (Z, Y, X): 0 agreement, 1 false positive, 2 false negative."""
    spacing: tuple[float, float, float]

    @property
    def false_positives(self) -> int:
        return int((self.disagreement == FALSE_POSITIVE).sum())

    @property
    def false_negatives(self) -> int:
        return int((self.disagreement == FALSE_NEGATIVE).sum())


def spacing_of(matrix: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm (sz, sy, sx) of a 4x4 (Z, Y, X) -> world matrix: the lengths of its columns."""
    return tuple(float(s) for s in np.sqrt((np.asarray(matrix)[:3, :3] ** 2).sum(axis=0)))


def disagreement_map(result: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """1 where the result labels a voxel that the reference does not (or labels with another value), 2 where the
    reference labels a voxel that the result leaves as background, 0 elsewhere."""
    result, reference = np.asarray(result), np.asarray(reference)
    out = np.zeros(result.shape, dtype=np.uint8)
    out[(result != 0) & (result != reference)] = FALSE_POSITIVE
    out[(reference != 0) & (result == 0)] = FALSE_NEGATIVE
    return out


def review_labels(result: np.ndarray, reference: np.ndarray, spacing, labels: dict[int, str]) -> Review:
    """Per-label Dice, HD95 and volumes of ``result`` against ``reference`` (label values, same grid) and where
    they disagree.

    Args:
        spacing: (sz, sy, sx) mm.
        labels: value -> name; values found in either map but not named are called "label N".
    """
    result = np.asarray(result).astype(np.int64)
    reference = np.asarray(reference).astype(np.int64)
    present = set(np.unique(result).tolist()) | set(np.unique(reference).tolist())
    named = {int(v): str(n) for v, n in labels.items()}
    named.update({v: f"label {v}" for v in present if v not in named})
    named[0] = named.get(0, "background")
    values = sorted(named)
    spacing = tuple(float(s) for s in spacing)
    scores = scores_per_label(np.searchsorted(values, result), np.searchsorted(values, reference), len(values), spacing)
    ordered = {v: named[v] for v in values}
    mine, theirs = label_volumes(result, spacing, ordered), label_volumes(reference, spacing, ordered)
    rows = []
    for index, value in enumerate(values[1:]):
        name = named[value]
        rows.append(LabelReview(name=name, voxels=mine[name]["voxels"], ml=mine[name]["ml"],
                                dice=float(scores["dice"][index]), hd95=float(scores["hd95"][index]),
                                ml_difference=mine[name]["ml"] - theirs[name]["ml"]))
    return Review(labels=rows, disagreement=disagreement_map(result, reference), spacing=spacing)


def placement_difference(result_layer, reference_layer) -> Optional[str]:
    """Why ``reference_layer`` cannot be compared with ``result_layer`` voxel by voxel, or ``None`` when it can
    (same 3D shape, same placement in the world)."""
    shape, other = tuple(np.shape(result_layer.data)), tuple(np.shape(reference_layer.data))
    if other != shape:
        return (f"reference '{reference_layer.name}' has shape {other}, result '{result_layer.name}' {shape}; "
                "compare layers of the same voxels. Nothing was compared.")
    if len(shape) != 3:
        return f"'{result_layer.name}' is {len(shape)}D; a 3D labels layer is compared. Nothing was compared."
    mine, theirs = world_matrix(result_layer), world_matrix(reference_layer)
    if np.allclose(mine, theirs, atol=1e-3):
        return None
    found = []
    if not np.allclose(spacing_of(mine), spacing_of(theirs), atol=1e-3):
        found.append("spacing " + " x ".join(f"{s:g}" for s in spacing_of(theirs)) + " mm against "
                     + " x ".join(f"{s:g}" for s in spacing_of(mine)) + " mm (Z, Y, X)")
    if not np.allclose(mine[:3, 3], theirs[:3, 3], atol=1e-3):
        found.append("origin (" + ", ".join(f"{v:g}" for v in theirs[:3, 3]) + ") against ("
                     + ", ".join(f"{v:g}" for v in mine[:3, 3]) + ")")
    directions = [m[:3, :3] / np.maximum(np.linalg.norm(m[:3, :3], axis=0), 1e-12) for m in (mine, theirs)]
    if not np.allclose(*directions, atol=1e-3):
        found.append("orientation")
    return (f"reference '{reference_layer.name}' is placed differently from result '{result_layer.name}' "
            f"({'; '.join(found) or 'placement'}); compare layers on the same grid. Nothing was compared.")
