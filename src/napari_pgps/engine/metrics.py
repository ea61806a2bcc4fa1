"""Segmentation metrics as the field computes them, and label volumes.

Per foreground label, between a prediction and a reference label map on the
same grid (MONAI's implementations; distances in mm at the given spacing):

* **Dice**, with nnU-Net's convention for empty references: reference and
  prediction both empty, not counted (NaN); reference empty and prediction
  not, 0.
* **HD95**: the 95th percentile of the symmetric surface distances; NaN when
  either map lacks the label.
* **Surface Dice** (normalised surface distance) at a tolerance in mm: the share
  of both surfaces within the tolerance of the other; NaN when both lack the
  label, 0 when one does.
* **Precision** (TP / predicted) and **recall** (TP / reference); NaN where the
  denominator is 0.

Means over cases and labels leave NaNs out. Validation during training,
``napari-pgps evaluate``, the bench and the widgets all use these functions.

Per voxel, :func:`entropy_map` measures how unsure a prediction is: the entropy
of its label probabilities divided by its largest possible value, so 0 means
certain and 1 uniform over the labels (the Segment widget's uncertainty layer
and ``napari-pgps segment --uncertainty``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

METRICS = ("dice", "hd95", "surface_dice", "precision", "recall")
SURFACE_TOLERANCE_MM = 1.0
"""Default tolerance of the surface Dice."""


def _one_hot(indices: np.ndarray, num_labels: int) -> torch.Tensor:
    from monai.networks.utils import one_hot

    return one_hot(torch.as_tensor(np.asarray(indices, dtype=np.int64))[None, None], num_labels)


def dice_per_label(prediction: np.ndarray, truth: np.ndarray, num_labels: int) -> np.ndarray:
    """Dice of each foreground label index 1..K-1 between two index maps of the same shape (Z, Y, X).

    Returns:
        float array of length K-1: NaN where the label is absent from both, 0 where only the reference lacks it.
    """
    from monai.metrics import compute_dice

    pred, true = _one_hot(prediction, num_labels), _one_hot(truth, num_labels)
    dice = compute_dice(pred, true, include_background=False, ignore_empty=False)[0].numpy().astype(np.float64)
    both_empty = (pred[0, 1:].flatten(1).sum(1) == 0) & (true[0, 1:].flatten(1).sum(1) == 0)
    dice[both_empty.numpy()] = np.nan
    return dice


def scores_per_label(
    prediction: np.ndarray, truth: np.ndarray, num_labels: int, spacing: Sequence[float],
    tolerance_mm: float = SURFACE_TOLERANCE_MM,
) -> dict[str, np.ndarray]:
    """Every metric of :data:`METRICS` for each foreground label index 1..K-1 (see the module docstring).

    Args:
        prediction, truth: label index maps (Z, Y, X) on the same grid.
        spacing: (sz, sy, sx) in mm of that grid.
    """
    import warnings

    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    pred, true = _one_hot(prediction, num_labels), _one_hot(truth, num_labels)
    predicted = pred[0, 1:].flatten(1).sum(1).numpy().astype(np.float64)
    reference = true[0, 1:].flatten(1).sum(1).numpy().astype(np.float64)
    overlap = (pred[0, 1:] * true[0, 1:]).flatten(1).sum(1).numpy().astype(np.float64)
    spacing = [float(s) for s in spacing]
    with warnings.catch_warnings():  # MONAI warns about empty maps; they are handled below
        warnings.simplefilter("ignore")
        hd95 = compute_hausdorff_distance(pred, true, include_background=False, percentile=95,
                                          spacing=spacing)[0].numpy().astype(np.float64)
        surface = compute_surface_dice(pred, true, [float(tolerance_mm)] * (num_labels - 1), include_background=False,
                                       spacing=spacing)[0].numpy().astype(np.float64)
    hd95[(predicted == 0) | (reference == 0)] = np.nan
    surface[(predicted == 0) ^ (reference == 0)] = 0.0
    surface[(predicted == 0) & (reference == 0)] = np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "dice": dice_per_label(prediction, truth, num_labels),
            "hd95": hd95,
            "surface_dice": surface,
            "precision": np.where(predicted > 0, overlap / np.maximum(predicted, 1), np.nan),
            "recall": np.where(reference > 0, overlap / np.maximum(reference, 1), np.nan),
        }


def summarize_dice(per_case: list[np.ndarray], names: list[str]) -> dict[str, float]:
    """Mean per label name over cases, leaving out the cases where it is NaN (NaN if every case is)."""
    stacked = np.vstack(per_case) if per_case else np.full((1, len(names)), np.nan)
    with np.errstate(all="ignore"):
        means = np.nanmean(stacked, axis=0) if np.isfinite(stacked).any() else np.full(len(names), np.nan)
    return {name: float(value) for name, value in zip(names, means)}


def mean_of(values_per_label: dict[str, float]) -> float:
    """Mean over the labels, leaving NaNs out."""
    values = [v for v in values_per_label.values() if np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def label_volumes(label_map: np.ndarray, spacing: tuple[float, float, float], labels: dict[int, str]) -> dict[str, dict[str, float]]:
    """Volume of each foreground label value in mL and voxels.

    Args:
        label_map: label *values* (Z, Y, X).
        spacing: (sz, sy, sx) in mm.
        labels: value -> name.
    """
    voxel_ml = float(np.prod(spacing)) / 1000.0
    counts = np.bincount(np.asarray(label_map, dtype=np.int64).ravel(), minlength=max(labels) + 1)
    return {
        name: {"voxels": int(counts[value]), "ml": float(counts[value] * voxel_ml)}
        for value, name in labels.items()
        if value != 0
    }


def entropy_map(probabilities: np.ndarray) -> np.ndarray:
    """Normalised entropy per voxel of label probabilities (K, Z, Y, X): float32 (Z, Y, X) in [0, 1].

    ``-sum_k p_k log p_k / log K``: 0 where one label has all the probability,
    1 where every label has 1/K. Probabilities are clipped to [1e-8, 1] first
    so that a zero contributes nothing.
    """
    p = np.clip(np.asarray(probabilities, dtype=np.float32), 1e-8, 1.0)
    labels = p.shape[0]
    if labels < 2:
        return np.zeros(p.shape[1:], dtype=np.float32)
    return (-(p * np.log(p)).sum(axis=0) / np.log(labels)).astype(np.float32)
