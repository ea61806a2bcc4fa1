"""Intensity normalisation per channel, fitted on the dataset and stored with the model (nnU-Net's rules).

* A channel named "CT" (any case, see :func:`is_ct`) is clipped to the 0.5 and 99.5 percentiles of the
  foreground intensities of the dataset's cases, then the dataset's foreground
  mean is subtracted and its standard deviation divided out.
* Every other channel is z-scored per case. When cropping to the nonzero
  region shrinks the cases markedly (the median case keeps less than 3/4 of its
  voxels, as for skull-stripped brains), the mean and deviation are taken
  inside the nonzero region only and the outside is set to 0.

A channel holding one value in every voxel becomes 0 everywhere (its
deviation is taken as at least 1e-8 and every difference from its mean is
0); training refuses such an image (:mod:`.fingerprint`), as it shows nothing.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..config import NormalizationConfig

CT_PERCENTILES = (0.5, 99.5)
SAMPLES_PER_CASE = 10_000
"""Foreground intensities sampled from each case for CT statistics."""
MASK_FRACTION = 0.75
"""Z-score inside the nonzero region when the median case keeps less than this share of its voxels after cropping."""


def is_ct(channel: str) -> bool:
    """Whether a channel named ``channel`` is a CT (Hounsfield units), normalised with the dataset's statistics.

    As nnU-Net v2 (``channel_names`` value "CT" compared case-insensitively): "CT", "ct" or "Ct", with surrounding
    spaces allowed; any other name ("CTA", "CT1", "channel 0") is z-scored per case.
    """
    return channel.strip().upper() == "CT"


def fit_normalization(
    channels: Sequence[str], foreground_samples: Sequence[np.ndarray], crop_fractions: Sequence[float]
) -> list[NormalizationConfig]:
    """The normalisation of each channel.

    Args:
        channels: the channel names ("CT", "MRI", "FLAIR", ...).
        foreground_samples: per channel, foreground intensities sampled from the cases (used for CT channels).
        crop_fractions: per case, the share of its voxels inside its nonzero region.
    """
    use_mask = bool(crop_fractions) and float(np.median(crop_fractions)) < MASK_FRACTION
    configs = []
    for channel, samples in zip(channels, foreground_samples):
        if is_ct(channel) and samples.size:
            low, high = (float(v) for v in np.percentile(samples, CT_PERCENTILES))
            clipped = np.clip(samples, low, high)
            configs.append(NormalizationConfig("ct", low, high, float(clipped.mean()), float(clipped.std())))
        else:
            configs.append(NormalizationConfig("zscore", nonzero_mask=use_mask))
    return configs


def foreground_sample(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Up to :data:`SAMPLES_PER_CASE` foreground intensities of each channel of ``image`` (C, Z, Y, X)."""
    foreground = labels > 0
    samples = []
    for channel in image:
        values = channel[foreground]
        if values.size > SAMPLES_PER_CASE:
            values = rng.choice(values, SAMPLES_PER_CASE, replace=False)
        samples.append(values.astype(np.float32))
    return samples


def normalize(image: np.ndarray, configs: Sequence[NormalizationConfig], mask: Optional[np.ndarray] = None) -> np.ndarray:
    """Normalised copy of ``image`` (C, Z, Y, X) as float32, one config per channel.

    ``mask`` (Z, Y, X) bool is the nonzero region, used by channels whose config says ``nonzero_mask``.
    """
    if len(configs) != image.shape[0]:
        raise ValueError(f"{len(configs)} normalisation(s) for an image of {image.shape[0]} channel(s)")
    out = np.empty(image.shape, dtype=np.float32)
    for c, (channel, config) in enumerate(zip(image, configs)):
        channel = np.asarray(channel, dtype=np.float32)
        if config.scheme == "ct":
            out[c] = (np.clip(channel, config.clip_low, config.clip_high) - config.mean) / max(config.std, 1e-8)
        elif config.scheme == "zscore":
            inside = mask if config.nonzero_mask and mask is not None else None
            values = channel[inside] if inside is not None else channel
            mean, std = float(values.mean(dtype=np.float64)), float(values.std(dtype=np.float64))
            out[c] = (channel - mean) / max(std, 1e-8)
            if inside is not None:
                out[c][~inside] = 0.0
        else:
            raise ValueError(f"normalisation not fitted (scheme {config.scheme!r})")
    return out
