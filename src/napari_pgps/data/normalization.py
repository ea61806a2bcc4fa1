"""Intensity normalisation, fitted on the training cases and stored with the model."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..config import NormalizationConfig

CT_PERCENTILES = (0.5, 99.5)
_SAMPLES_PER_CASE = 10_000


def fit_normalization(modality: str, images: Sequence[np.ndarray], labels: Sequence[np.ndarray], seed: int = 0) -> NormalizationConfig:
    """Choose and fit the normalisation for a dataset.

    CT (modality named "CT"): foreground voxels of every training case are
    sampled; the clip range is their 0.5/99.5 percentiles and mean/std are
    taken after clipping. Every other modality: per-case z-score.

    Args:
        modality: the modality named in ``dataset.json``.
        images, labels: arrays (Z, Y, X) of the training cases.
    """
    if modality.strip().upper() != "CT":
        return NormalizationConfig(scheme="zscore")
    rng = np.random.default_rng(seed)
    samples = []
    for image, label in zip(images, labels):
        values = image[label > 0]
        if values.size > _SAMPLES_PER_CASE:
            values = rng.choice(values, _SAMPLES_PER_CASE, replace=False)
        samples.append(values)
    values = np.concatenate(samples) if samples else np.zeros(1)
    if values.size == 0:
        values = np.concatenate([np.ravel(i) for i in images])
    low, high = (float(v) for v in np.percentile(values, CT_PERCENTILES))
    clipped = np.clip(values, low, high)
    return NormalizationConfig(scheme="ct", clip_low=low, clip_high=high, mean=float(clipped.mean()), std=float(clipped.std()))


def normalize(image: np.ndarray, config: NormalizationConfig) -> np.ndarray:
    """Normalised copy of ``image`` (any shape) as float32."""
    image = np.asarray(image, dtype=np.float32)
    if config.scheme not in ("ct", "zscore"):
        raise ValueError(f"normalisation not fitted (scheme {config.scheme!r})")
    if config.scheme == "ct":
        out = np.clip(image, config.clip_low, config.clip_high)
        return ((out - config.mean) / max(config.std, 1e-8)).astype(np.float32)
    mean = float(image.mean(dtype=np.float64))
    std = float(image.std(dtype=np.float64))
    return ((image - mean) / max(std, 1e-8)).astype(np.float32)
