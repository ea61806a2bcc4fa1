"""The training loss: Dice over the whole batch plus cross-entropy, exact under DDP.

nnU-Net's "batch Dice" sums the soft true positives and volumes of each label
over every crop of the step before taking the ratio, so it is not a mean of
per-crop (or per-rank) terms, and DDP's gradient averaging alone would not
give the gradient of the step's global batch. As in nnU-Net v2, each rank
therefore all-gathers those sums (differentiably) and computes the Dice of the
global batch; the cross-entropy, a mean over this rank's voxels, is weighted
by ``world_size * local_batch / global_batch`` so that DDP's average of the
ranks' gradients is the gradient of the global mean, also when the batch does
not split evenly. One DDP step then equals one single-process step on the
union of the ranks' crops (up to floating-point summation order).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.utils import one_hot

from .distributed import all_gather_with_grad


class BatchDiceCELoss(torch.nn.Module):
    """Soft Dice of the foreground labels over the whole batch, plus cross-entropy.

    In a single process it computes the same numbers, with the same operations,
    as MONAI's ``DiceCELoss(include_background=False, to_onehot_y=True,
    softmax=True, batch=True, smooth_nr=smooth, smooth_dr=smooth)``.

    Args:
        smooth: added to the Dice numerator and denominator.
        distributed: gather the Dice sums over the ranks of the process group
            and weight the cross-entropy by this rank's share of the batch.
    """

    def __init__(self, smooth: float = 1e-5, distributed: bool = False) -> None:
        super().__init__()
        self.smooth = smooth
        self.distributed = distributed

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of one step's crops.

        Args:
            logits: (B, K, Z, Y, X) network outputs, K labels with background first.
            target: (B, 1, Z, Y, X) label indices 0..K-1.

        Returns:
            A scalar: mean over the K-1 foreground labels of ``1 - Dice`` plus the mean cross-entropy.
        """
        probabilities = torch.softmax(logits, 1)[:, 1:]
        truth = one_hot(target, num_classes=logits.shape[1])[:, 1:]
        axes = [0, *range(2, logits.dim())]
        overlap = torch.sum(probabilities * truth, dim=axes)
        predicted = torch.sum(probabilities, dim=axes)
        actual = torch.sum(truth, dim=axes)
        cross_entropy = F.cross_entropy(logits, target[:, 0].long())
        if self.distributed:
            local_batch = torch.full((1,), float(logits.shape[0]), dtype=overlap.dtype, device=overlap.device)
            gathered = all_gather_with_grad(torch.cat([overlap, predicted, actual, local_batch]))  # (W, 3 (K-1) + 1)
            totals = gathered.sum(0)
            overlap, predicted, actual = totals[:-1].chunk(3)
            cross_entropy = cross_entropy * (gathered.shape[0] * logits.shape[0] / totals[-1].detach())
        false_positive = (predicted - overlap) * 0.5
        false_negative = (actual - overlap) * 0.5
        dice = 1 - (2 * overlap + self.smooth) / (2 * (overlap + false_positive + false_negative) + self.smooth)
        return torch.mean(dice) + cross_entropy
