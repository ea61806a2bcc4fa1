"""Reviewing one segmentation against a reference label map: per-label scores and a map of where they disagree.

The scores are :mod:`napari_pgps.engine.metrics`' (nnU-Net's Dice convention,
MONAI's HD95 in mm), computed by the same :func:`~napari_pgps.engine.metrics.scores_per_label`
that ``napari-pgps evaluate`` uses, so a case scores the same in the Review
widget and on the command line. Both label maps hold label *values* (Z, Y, X)
on the same grid, of voxel size ``spacing`` (sz, sy, sx) mm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .metrics import class_indices, label_volumes, scores_per_label

FALSE_POSITIVE = 1
"""Disagreement value: the result labels a voxel the reference leaves as background or labels otherwise."""
FALSE_NEGATIVE = 2
"""Disagreement value: the reference labels a voxel the result leaves as background."""
DISAGREEMENT_NAMES = {0: "agreement", FALSE_POSITIVE: "false positive", FALSE_NEGATIVE: "false negative"}


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
    """A result reviewed against its reference: one row per foreground label, and where they disagree."""

    labels: list[LabelReview]
    disagreement: np.ndarray
    """uint8 (Z, Y, X): 0 agreement, 1 false positive, 2 false negative."""
    spacing: tuple[float, float, float]
    """(sz, sy, sx) mm."""

    @property
    def false_positives(self) -> int:
        return int((self.disagreement == FALSE_POSITIVE).sum())

    @property
    def false_negatives(self) -> int:
        return int((self.disagreement == FALSE_NEGATIVE).sum())


def disagreement_map(result: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """uint8 (Z, Y, X): 1 where the result labels a voxel that the reference does not (or labels with another
    value), 2 where the reference labels a voxel that the result leaves as background, 0 elsewhere."""
    result, reference = np.asarray(result), np.asarray(reference)
    out = np.zeros(result.shape, dtype=np.uint8)
    out[(result != 0) & (result != reference)] = FALSE_POSITIVE
    out[(reference != 0) & (result == 0)] = FALSE_NEGATIVE
    return out


def review_labels(result: np.ndarray, reference: np.ndarray, spacing, labels: dict[int, str]) -> Review:
    """Per-label Dice, HD95 and volumes of ``result`` against ``reference`` (label values (Z, Y, X), same grid) and
    where they disagree.

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
    ordered = dict(sorted(named.items()))
    spacing = tuple(float(s) for s in spacing)
    scores = scores_per_label(class_indices(result, ordered)[0], class_indices(reference, ordered)[0], len(ordered),
                              spacing)
    mine, theirs = label_volumes(result, spacing, ordered), label_volumes(reference, spacing, ordered)
    rows = []
    for index, name in enumerate(list(ordered.values())[1:]):
        rows.append(LabelReview(name=name, voxels=mine[name]["voxels"], ml=mine[name]["ml"],
                                dice=float(scores["dice"][index]), hd95=float(scores["hd95"][index]),
                                ml_difference=mine[name]["ml"] - theirs[name]["ml"]))
    return Review(labels=rows, disagreement=disagreement_map(result, reference), spacing=spacing)
