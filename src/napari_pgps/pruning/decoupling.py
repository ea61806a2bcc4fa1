"""PSP-Seg's functional decoupling loss.

It pushes the encoder to describe the foreground the same way whether or not
the background is there, and a decoder feature map to mark where the
foreground is, so that each branch has a distinct job and redundant ones can
be pruned without loss:

    x_m = image with every background voxel set to a low percentile intensity
    l1  = sum over the PRM encoder levels (1..L-1) of mean over voxels of (1 - cos(f(x), stopgrad(f(x_m))))
          (cosine over channels; level 0 has no PRM to decouple and the largest maps, so it is left out)
    l2  = BCE(channel mean of the decoder's level-1 features, foreground fraction of each of its voxels)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.prm import PRMUNet

LOW_PERCENTILE = 0.01


def foreground_only(images: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
    """Images (B, 1, Z, Y, X) with the voxels outside ``foreground`` (boolean, (B, 1, Z, Y, X)) set to each image's
    1st percentile."""
    low = torch.quantile(images.flatten(1).float(), LOW_PERCENTILE, dim=1).to(images.dtype)
    return torch.where(foreground, images, low.view(-1, *([1] * (images.dim() - 1))))


def decoupling_terms(
    network: PRMUNet,
    images: torch.Tensor,
    labels: torch.Tensor,
    encoded: list[torch.Tensor],
    decoded: list[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(l1, l2) for one batch, given the encoder and decoder features of ``images`` from the same forward pass.

    The loss is their sum; progressive pruning also watches each one alone.

    Args:
        images, labels: (B, 1, Z, Y, X); label indices from the network's classes up (nnU-Net v2's ignore label)
            count as background here, as label 0 does.
        encoded: encoder features, full resolution first (:meth:`PRMUNet.encode`).
        decoded: decoder features, full resolution last (:meth:`PRMUNet.decode`).
    """
    labelled = (labels > 0) & (labels < network.head.out_channels)
    with torch.no_grad():
        reference = network.encode(foreground_only(images, labelled))[1:]
    l1 = sum((1.0 - F.cosine_similarity(f, r, dim=1)).mean() for f, r in zip(encoded[1:], reference))
    feature = decoded[-2] if len(decoded) > 1 else decoded[-1]
    foreground = F.adaptive_avg_pool3d(labelled.to(feature.dtype), feature.shape[2:])
    l2 = F.binary_cross_entropy_with_logits(feature.mean(dim=1, keepdim=True), foreground)
    return l1, l2
