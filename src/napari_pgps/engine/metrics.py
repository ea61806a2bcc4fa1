"""Segmentation metrics (MONAI's Dice) and label volumes."""

from __future__ import annotations

import numpy as np
import torch


def dice_per_label(prediction: np.ndarray, truth: np.ndarray, num_labels: int) -> np.ndarray:
    """Dice of each foreground label index 1..K-1 between two index maps of the same shape.

    Returns:
        float array of length K-1; NaN where the label is absent from both.
    """
    from monai.metrics import compute_dice
    from monai.networks.utils import one_hot

    pred = one_hot(torch.as_tensor(np.asarray(prediction, dtype=np.int64))[None, None], num_labels)
    true = one_hot(torch.as_tensor(np.asarray(truth, dtype=np.int64))[None, None], num_labels)
    dice = compute_dice(pred, true, include_background=False, ignore_empty=True)
    return dice[0].numpy().astype(np.float64)


def summarize_dice(per_case: list[np.ndarray], names: list[str]) -> dict[str, float]:
    """Mean Dice per label name over cases, ignoring cases where the label is absent (NaN)."""
    stacked = np.vstack(per_case) if per_case else np.full((1, len(names)), np.nan)
    with np.errstate(all="ignore"):
        means = np.nanmean(stacked, axis=0) if np.isfinite(stacked).any() else np.full(len(names), np.nan)
    return {name: float(value) for name, value in zip(names, means)}


def mean_of(dice_per_label: dict[str, float]) -> float:
    values = [v for v in dice_per_label.values() if np.isfinite(v)]
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
