"""Progressive Deep Learning (PDL): rank training cases by similarity to a reference and add them in groups.

Cases of different shapes are compared on a common grid: each normalised image
is resampled (trilinear) to ``GRID`` voxels, Z, Y, X. The similarity metrics are
MONAI's (MSE, PSNR, SSIM) and our Universal Quality Index (UQI, which the PDL
journal paper adds). :class:`PDLCurriculum` plugs the curriculum into the
training loop: it ranks the cases when the run starts and widens the sampler's
pool of cases at the start of the epochs where a group joins.
"""

from __future__ import annotations

import math
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from ..config import PDL_METHOD
from ..errors import InputError
from ..events import CasesAdded
from ..plugins import TrainingPlugin, TrainingRun

METRICS = ("mse", "psnr", "ssim", "uqi")
GRID = (32, 32, 32)
UQI_WINDOW = 8
"""Side of the cubic windows UQI is computed in, in grid voxels. The PDL paper states none; 8 is the default of
Wang & Bovik's reference code and of the ``sewar`` package."""


def _on_grid(images: Sequence[np.ndarray]) -> torch.Tensor:
    """(N, C, *GRID) float32 tensor of the images ((Z, Y, X) or (C, Z, Y, X)) resampled to the common grid,
    read one at a time."""
    out = []
    for index in range(len(images)):
        image = torch.as_tensor(np.asarray(images[index]), dtype=torch.float32)
        image = image[None, None] if image.dim() == 3 else image[None]
        out.append(torch.nn.functional.interpolate(image, size=GRID, mode="trilinear", align_corners=False))
    return torch.cat(out)


def similarity(images: torch.Tensor, reference: torch.Tensor, metric: str) -> np.ndarray:
    """Similarity of each image (N, C, Z, Y, X) to ``reference`` (1, C, Z, Y, X); larger is more similar
    (MSE is negated); each metric averages the channels."""
    from monai.metrics import MSEMetric, PSNRMetric, SSIMMetric

    target = reference.expand_as(images)
    if metric == "mse":
        return -MSEMetric(reduction="none")(images, target).reshape(-1).numpy()
    data_range = float(reference.max() - reference.min()) or 1.0
    if metric == "psnr":
        return PSNRMetric(max_val=data_range, reduction="none")(images, target).reshape(-1).numpy()
    if metric == "ssim":
        return SSIMMetric(spatial_dims=3, data_range=data_range, win_size=7, reduction="none")(images, target).reshape(-1).numpy()
    if metric == "uqi":
        # UQI's mean term is meant for non-negative grey levels: each channel is shifted so its smallest value is 0
        lowest = torch.minimum(images.amin(dim=(0, 2, 3, 4)), reference.amin(dim=(0, 2, 3, 4))).double()[:, None, None, None]
        target = (reference[0].double() - lowest).numpy()
        scores = []
        for image in images:
            channels = (image.double() - lowest).numpy()
            scores.append(np.mean([universal_quality_index(x, y) for x, y in zip(channels, target)]))
        return np.array(scores)
    raise InputError(f"unknown PDL similarity '{metric}'; choose one of {', '.join(METRICS)}.")


def universal_quality_index(image: np.ndarray, reference: np.ndarray, window: int = UQI_WINDOW) -> float:
    """Universal Quality Index (Wang & Bovik 2002) of ``image`` against ``reference``: non-negative intensities,
    (Z, Y, X) of one shape.

    In every ``window``^3 window lying wholly inside the volumes,
    ``Q = 4 cov(x, y) mean(x) mean(y) / ((var(x) + var(y)) (mean(x)^2 + mean(y)^2))``;
    where that denominator is 0, ``Q = 2 mean(x) mean(y) / (mean(x)^2 + mean(y)^2)``
    if neither window varies and the means are not both 0, else 1 (as Wang &
    Bovik's code). Returns the mean over the windows: 1 for identical volumes,
    lower the less similar (at least -1).
    """
    x = np.asarray(image, dtype=np.float64)
    y = np.asarray(reference, dtype=np.float64)
    mean_x, mean_y = _window_means(x, window), _window_means(y, window)
    spread = _window_means(x * x, window) - mean_x**2 + _window_means(y * y, window) - mean_y**2
    covariance = _window_means(x * y, window) - mean_x * mean_y
    means = mean_x**2 + mean_y**2
    quality = np.ones_like(means)
    flat = (spread == 0) & (means != 0)
    quality[flat] = 2 * mean_x[flat] * mean_y[flat] / means[flat]
    varies = spread * means != 0
    quality[varies] = 4 * covariance[varies] * mean_x[varies] * mean_y[varies] / (spread[varies] * means[varies])
    return float(quality.mean())


def _window_means(volume: np.ndarray, size: int) -> np.ndarray:
    """Mean of every ``size``^3 window lying wholly inside ``volume`` (Z, Y, X), one axis at a time:
    shape (Z - size + 1, Y - size + 1, X - size + 1)."""
    for axis in range(3):
        volume = np.lib.stride_tricks.sliding_window_view(volume, size, axis=axis).mean(axis=-1)
    return volume


def rank_cases(images: Sequence[np.ndarray], metric: str = "ssim", reference: Optional[int] = None) -> tuple[list[int], int]:
    """Order training cases from most to least similar to a reference.

    Args:
        images: normalised volumes (Z, Y, X) or (C, Z, Y, X), any shapes (indexed one at a time).
        metric: "mse", "psnr", "ssim" or "uqi".
        reference: index of the reference case; by default the case with the
            smallest MSE to the mean of all cases.

    Returns:
        (case indices, most similar first with the reference itself first; the reference index)
    """
    grid = _on_grid(images)
    if reference is None:
        mean = grid.mean(dim=0, keepdim=True)
        reference = int(np.argmax(similarity(grid, mean, "mse")))
    scores = similarity(grid, grid[reference : reference + 1], metric)
    scores[reference] = np.inf
    order = sorted(range(len(images)), key=lambda i: (-scores[i], i))
    return order, reference


def active_cases(epoch: int, total: int, groups: int, every_epochs: int) -> int:
    """How many of the ranked cases train in epoch ``epoch`` (0-based): one more group every ``every_epochs``."""
    group_size = math.ceil(total / max(1, min(groups, total)))
    return min(total, group_size * (1 + epoch // max(1, every_epochs)))


def default_interval(epochs: int, groups: int) -> int:
    """Spread the groups over the first half of training: the last group joins at about half-way."""
    return max(1, epochs // (2 * max(1, groups - 1))) if groups > 1 else epochs


class PDLCurriculum(TrainingPlugin):
    """The PDL data curriculum as a training-loop plug-in (active when ``curriculum.pdl.enabled``)."""

    name = PDL_METHOD

    def __init__(self) -> None:
        self.order: Optional[list[int]] = None
        self.active = 0

    def start(self, run: TrainingRun) -> None:
        pdl = run.config.curriculum.pdl
        if not pdl.enabled:
            return
        reference = None
        if pdl.reference is not None:
            if pdl.reference not in run.training_names:
                raise InputError(f"PDL reference case '{pdl.reference}' is not among the training cases.")
            reference = run.training_names.index(pdl.reference)
        self.order, _ = rank_cases(run.training_images, pdl.metric, reference)

    def epoch_start(self, run: TrainingRun, epoch: int) -> Iterator[CasesAdded]:
        if self.order is None:
            return
        pdl = run.config.curriculum.pdl
        every = pdl.every_epochs or default_interval(run.config.training.epochs, pdl.groups)
        count = active_cases(epoch, len(self.order), pdl.groups, every)
        if count != self.active:
            self.active = count
            run.sampler.set_active(self.order[:count])
            names = tuple(run.training_names[i] for i in self.order[:count])
            yield CasesAdded(epoch=epoch, cases=count, total=len(self.order), names=names)
