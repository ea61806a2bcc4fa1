"""Segmentation metrics as the field computes them, and label volumes.

Per foreground label, between a prediction and a reference label map on the
same grid (distances in mm at the given spacing):

* **Dice**, with nnU-Net's convention for empty references: reference and
  prediction both empty, not counted (NaN); reference empty and prediction
  not, 0.
* **HD95**: the 95th percentile of the symmetric surface distances, as MONAI
  computes it (the larger of the two directed 95th percentiles). NaN when both
  maps lack the label; when only one has it (a missed or a spurious structure)
  the length of the image's diagonal (:func:`image_diagonal_mm`), which is
  longer than any distance inside the image: a miss always scores worse than
  any hit, and a mean over cases rises, as in the Medical Segmentation
  Decathlon's scoring, instead of leaving the case out.
* **Surface Dice** (normalised surface distance) at a tolerance in mm: the share
  of both surfaces within the tolerance of the other; NaN when both lack the
  label, 0 when one does.
* **Precision** (TP / predicted) and **recall** (TP / reference); NaN where the
  denominator is 0.

Surfaces and distances are computed as MONAI's ``get_edge_surface_distance``
computes them: a label's surface is its voxels that a 6-connected erosion
removes, and a surface voxel's distance is the exact Euclidean distance in mm to
the nearest surface voxel of the other map (a KD-tree), kept in single precision
as MONAI keeps it (so a distance equal to the tolerance up to rounding counts as
within it).

Memory is bounded by design: each label is scored on its own, with boolean
masks of the image (1 byte a voxel), its surfaces found inside the bounding box
of both masks only; no one-hot map of all labels is built. A 384 x 384 x 200
volume with 14 labels peaks under 3 GB (benchmarks/evaluation_memory.py).

Voxels to leave out (nnU-Net v2's ``ignore`` label in the reference) are given
as a boolean mask: there both maps count as background, MONAI's ``ignore_index``
convention for the surface Dice.

Means over cases and labels leave NaNs out. Validation during training,
``napari-pgps evaluate``, the bench and the widgets all use these functions.

Per voxel, :func:`entropy_map` measures how unsure a prediction is: the entropy
of its label probabilities divided by its largest possible value, so 0 means
certain and 1 uniform over the labels (the Segment widget's uncertainty layer
and ``napari-pgps segment --uncertainty``).
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import numpy as np

METRICS = ("dice", "hd95", "surface_dice", "precision", "recall")
SURFACE_TOLERANCE_MM = 1.0
"""Default tolerance of the surface Dice."""


def image_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length in mm of the diagonal of an image of ``shape`` (Z, Y, X) voxels of ``spacing`` (sz, sy, sx) mm: the
    HD95 of a missed or spurious structure."""
    return float(np.linalg.norm(np.asarray(shape, dtype=np.float64) * np.asarray(spacing, dtype=np.float64)))


def class_indices(label_map: np.ndarray, labels: dict[int, str],
                  ignore_label: Optional[int] = None) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """A label map of values (Z, Y, X) as the class indices that the metrics take, and its ignored voxels.

    Args:
        label_map: label values, each one of ``labels`` or ``ignore_label`` (checked by the caller).
        labels: the classes, value -> name, background (0) included.
        ignore_label: the value of nnU-Net v2's ``ignore`` label, or ``None``.

    Returns:
        (int16 indices 0..K-1 in the order of the sorted values, ignore voxels 0; the boolean mask of the voxels
        holding ``ignore_label``, or ``None`` without one).
    """
    values = sorted(labels)
    lookup = np.zeros(max(values + [ignore_label or 0]) + 1, dtype=np.int16)
    lookup[values] = np.arange(len(values))
    return lookup[label_map], (None if ignore_label is None else np.asarray(label_map) == ignore_label)


def _label_masks(prediction: np.ndarray, truth: np.ndarray, num_labels: int,
                 ignore: Optional[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """For each foreground label index 1..K-1, boolean masks (Z, Y, X) of where the prediction and the reference
    hold it, both False where ``ignore`` is True. One label's pair at a time."""
    keep = None if ignore is None else ~np.asarray(ignore, dtype=bool)
    for index in range(1, num_labels):
        predicted, reference = prediction == index, truth == index
        if keep is not None:
            predicted &= keep
            reference &= keep
        yield predicted, reference


def _counts(predicted: np.ndarray, reference: np.ndarray) -> tuple[int, int, int]:
    """(predicted voxels, reference voxels, voxels in both) of two boolean masks."""
    return (int(np.count_nonzero(predicted)), int(np.count_nonzero(reference)),
            int(np.count_nonzero(predicted & reference)))


def _dice(predicted: int, reference: int, overlap: int) -> float:
    """Dice from voxel counts, NaN when both are empty (nnU-Net's convention)."""
    total = predicted + reference
    return 2.0 * overlap / total if total else float("nan")


def dice_per_label(prediction: np.ndarray, truth: np.ndarray, num_labels: int,
                   ignore: Optional[np.ndarray] = None) -> np.ndarray:
    """Dice of each foreground label index 1..K-1 between two index maps of the same shape (Z, Y, X).

    Args:
        ignore: optional boolean mask (Z, Y, X) of voxels left out (the reference's ignore label).

    Returns:
        float array of length K-1: NaN where the label is absent from both, 0 where only the reference lacks it.
    """
    return np.array([_dice(*_counts(p, r)) for p, r in _label_masks(prediction, truth, num_labels, ignore)],
                    dtype=np.float64)


def surface_distances(predicted: np.ndarray, reference: np.ndarray,
                      spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm from each surface voxel of one boolean mask (Z, Y, X) to the other's surface, both ways.

    Only the bounding box of both masks, grown by one voxel (so that the box's faces are background unless they
    are the image's), is looked at. Both masks must hold at least one voxel.

    Returns:
        (float32 distances from the prediction's surface voxels, from the reference's), as MONAI's
        ``get_edge_surface_distance(..., symmetric=True)`` returns them.
    """
    from scipy.ndimage import binary_erosion
    from scipy.spatial import KDTree

    either = predicted | reference
    box = []
    for axis in range(either.ndim):  # the first and last index holding either mask, one voxel further out
        held = np.flatnonzero(either.any(axis=tuple(other for other in range(either.ndim) if other != axis)))
        box.append(slice(max(int(held[0]) - 1, 0), int(held[-1]) + 2))
    scale = np.asarray(spacing, dtype=np.float64)
    # surface voxels' positions in mm, (N, 3) in the order (z, y, x), from the box's corner
    prediction_surface, reference_surface = (np.argwhere(mask & ~binary_erosion(mask)) * scale
                                             for mask in (predicted[tuple(box)], reference[tuple(box)]))
    to_reference = KDTree(reference_surface, leafsize=32).query(prediction_surface, k=1)[0]
    to_prediction = KDTree(prediction_surface, leafsize=32).query(reference_surface, k=1)[0]
    return to_reference.astype(np.float32), to_prediction.astype(np.float32)


def scores_per_label(
    prediction: np.ndarray, truth: np.ndarray, num_labels: int, spacing: Sequence[float],
    tolerance_mm: float = SURFACE_TOLERANCE_MM, ignore: Optional[np.ndarray] = None,
) -> dict[str, np.ndarray]:
    """Every metric of :data:`METRICS` for each foreground label index 1..K-1 (see the module docstring).

    Args:
        prediction, truth: label index maps (Z, Y, X) on the same grid.
        spacing: (sz, sy, sx) in mm of that grid.
        ignore: optional boolean mask (Z, Y, X) of voxels left out (the reference's ignore label).

    Returns:
        ``{metric: float array of length K-1}``.
    """
    missed = image_diagonal_mm(np.shape(truth), spacing)
    tolerance = np.float32(tolerance_mm)
    scores = {metric: np.full(num_labels - 1, np.nan) for metric in METRICS}
    for row, (predicted_mask, reference_mask) in enumerate(_label_masks(prediction, truth, num_labels, ignore)):
        predicted, reference, overlap = _counts(predicted_mask, reference_mask)
        scores["dice"][row] = _dice(predicted, reference, overlap)
        if predicted:
            scores["precision"][row] = overlap / predicted
        if reference:
            scores["recall"][row] = overlap / reference
        if predicted and reference:
            to_reference, to_prediction = surface_distances(predicted_mask, reference_mask, spacing)
            scores["hd95"][row] = max(float(np.percentile(to_reference, 95)), float(np.percentile(to_prediction, 95)))
            within = np.count_nonzero(to_reference <= tolerance) + np.count_nonzero(to_prediction <= tolerance)
            scores["surface_dice"][row] = within / (len(to_reference) + len(to_prediction))
        elif predicted or reference:
            scores["hd95"][row], scores["surface_dice"][row] = missed, 0.0
    return scores


def summarize_dice(per_case: list[np.ndarray], names: list[str]) -> dict[str, float]:
    """Mean per label name over cases, leaving out the cases where it is NaN (NaN if every case is)."""
    stacked = np.vstack(per_case) if per_case else np.full((1, len(names)), np.nan)
    scored = np.isfinite(stacked).sum(axis=0)
    sums = np.where(np.isfinite(stacked), stacked, 0.0).sum(axis=0)
    means = np.divide(sums, scored, out=np.full(len(names), np.nan), where=scored > 0)
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
