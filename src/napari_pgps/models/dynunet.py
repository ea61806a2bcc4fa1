"""The plain nnU-Net-style U-Net: MONAI's DynUNet built from a planned :class:`ModelConfig`.

Both the network factory and the patch-size hypernetwork (which generates this
network's weights) build it here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import ModelConfig

if TYPE_CHECKING:
    from torch import nn

MAX_DEEP_SUPERVISION_HEADS = 2


def deep_supervision_heads(model: ModelConfig) -> int:
    """Extra low-resolution outputs of a U-Net with this plan: one per level below the first two, at most 2."""
    if not model.deep_supervision:
        return 0
    return max(0, min(MAX_DEEP_SUPERVISION_HEADS, len(model.strides) - 2))


def build_dynunet(model: ModelConfig) -> nn.Module:
    """MONAI's DynUNet for a resolved model config (kernels, strides, channels, labels).

    Input (B, in_channels, Z, Y, X) -> logits (B, out_channels, Z, Y, X); in
    training mode with deep supervision (B, 1 + heads, out_channels, Z, Y, X).
    Instance norm with affine parameters and LeakyReLU(0.01), as nnU-Net.
    """
    from monai.networks.nets import DynUNet

    heads = deep_supervision_heads(model)
    return DynUNet(
        spatial_dims=3,
        in_channels=model.in_channels,
        out_channels=model.out_channels,
        kernel_size=[list(k) for k in model.kernel_sizes],
        strides=[list(s) for s in model.strides],
        upsample_kernel_size=[list(s) for s in model.strides[1:]],
        filters=list(model.channels),
        norm_name=("instance", {"affine": True}),
        act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
        deep_supervision=heads > 0,
        deep_supr_num=max(heads, 1),
    )
