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

With nnU-Net v2's ignore label, its voxels (label index ``ignore_index``) are
left out of both terms, as in nnU-Net: the Dice sums run over the other voxels
only and the cross-entropy is their mean (0 when a step has none); under DDP
the weight is then this rank's share of the step's counted voxels.
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
        ignore_index: the label index of voxels that count nowhere (nnU-Net v2's
            ignore label; K, one past the classes), or ``None``.
    """

    def __init__(self, smooth: float = 1e-5, distributed: bool = False, ignore_index: int | None = None) -> None:
        super().__init__()
        self.smooth = smooth
        self.distributed = distributed
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of one step's crops.

        Args:
            logits: (B, K, Z, Y, X) network outputs, K labels with background first.
            target: (B, 1, Z, Y, X) label indices 0..K-1, and ``ignore_index`` where a voxel counts nowhere.

        Returns:
            A scalar: mean over the K-1 foreground labels of ``1 - Dice`` plus the mean cross-entropy.
        """
        probabilities = torch.softmax(logits, 1)[:, 1:]
        if self.ignore_index is None:
            share = float(logits.shape[0])  # what the cross-entropy is a mean over: crops of one size
            cross_entropy = F.cross_entropy(logits, target[:, 0].long())
        else:
            counted = target != self.ignore_index  # (B, 1, Z, Y, X)
            share = counted.sum().float()  # what the cross-entropy is a mean over: the counted voxels
            cross_entropy = F.cross_entropy(logits, target[:, 0].long(), ignore_index=self.ignore_index,
                                            reduction="sum") / share.clamp(min=1)
            probabilities = probabilities * counted
            target = torch.where(counted, target, 0)  # background: no term of the foreground Dice
        truth = one_hot(target, num_classes=logits.shape[1])[:, 1:]
        axes = [0, *range(2, logits.dim())]
        overlap = torch.sum(probabilities * truth, dim=axes)
        predicted = torch.sum(probabilities, dim=axes)
        actual = torch.sum(truth, dim=axes)
        if self.distributed:
            local_share = torch.as_tensor(share, dtype=overlap.dtype, device=overlap.device).reshape(1)
            gathered = all_gather_with_grad(torch.cat([overlap, predicted, actual, local_share]))  # (W, 3 (K-1) + 1)
            totals = gathered.sum(0)
            overlap, predicted, actual = totals[:-1].chunk(3)
            cross_entropy = cross_entropy * (gathered.shape[0] * local_share[0] / totals[-1].detach().clamp(min=1))
        false_positive = (predicted - overlap) * 0.5
        false_negative = (actual - overlap) * 0.5
        dice = 1 - (2 * overlap + self.smooth) / (2 * (overlap + false_positive + false_negative) + self.smooth)
        return torch.mean(dice) + cross_entropy


def training_loss(deep_supervision: bool, across_ranks: bool = False, ignore_index: int | None = None):
    """The training loss of a step's outputs (the network's heads, full resolution first) and (B, 1, Z, Y, X) labels:
    Dice + cross-entropy (:class:`BatchDiceCELoss`, global over DDP ranks ``across_ranks``), with deep supervision
    if used; voxels of label index ``ignore_index`` (nnU-Net v2's ignore label) count in neither."""
    from monai.losses import DeepSupervisionLoss

    dice_ce = BatchDiceCELoss(smooth=1e-5, distributed=across_ranks, ignore_index=ignore_index)
    if deep_supervision:
        supervised = DeepSupervisionLoss(dice_ce, weight_mode="exp")
        return lambda outputs, target: supervised(outputs, target)
    return lambda outputs, target: dice_ce(outputs[0], target)
