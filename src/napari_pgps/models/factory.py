"""Building the segmentation network of a (resolved) :class:`ModelConfig` with MONAI."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from ..config import ARCHITECTURES, ModelConfig
from ..errors import InputError
from .planning import UNetPlan, check_patch_size

_SWIN_DIVISOR = 32
_SWIN_MINIMUM = 64  # its deepest stage (1/32) must keep 2 voxels per axis for instance norm
_UNETR_DIVISOR = 16


def level_channels(levels: int, base: int, maximum: int) -> list[int]:
    """Feature maps per level: base, 2*base, ... capped at ``maximum``."""
    return [min(base * 2**i, maximum) for i in range(levels)]


def patch_divisor(model: ModelConfig) -> tuple[int, int, int]:
    """Every patch the network takes is a multiple of this, per axis (Z, Y, X)."""
    if model.architecture == "swinunetr":
        return (_SWIN_DIVISOR,) * 3
    if model.architecture == "unetr":
        return (_UNETR_DIVISOR,) * 3
    return UNetPlan(model.kernel_sizes, model.strides).divisor


def check_inference_patch(model: ModelConfig, patch_size: Sequence[int]) -> None:
    """Raise a clear error if the network cannot run on this patch size."""
    if model.architecture == "unetr" and tuple(patch_size) != tuple(model.patch_size):
        raise InputError(
            f"UNETR has position embeddings for its training patch {tuple(model.patch_size)} only; "
            f"it cannot segment with patch size {tuple(patch_size)}."
        )
    check_patch_size(patch_size, patch_divisor(model))
    check_minimum_patch(model, patch_size)


def check_minimum_patch(model: ModelConfig, patch_size: Sequence[int]) -> None:
    """SwinUNETR needs at least 64 voxels per axis; every other network takes one divisor step."""
    if model.architecture == "swinunetr" and min(patch_size) < _SWIN_MINIMUM:
        raise InputError(f"SwinUNETR needs a patch of at least 64 voxels per axis, got {tuple(patch_size)}.")


def deep_supervision_heads(model: ModelConfig) -> int:
    """Number of extra low-resolution outputs trained with deep supervision (DynUNet-based networks only)."""
    if model.architecture not in ("dynunet", "prm", "hypernet") or not model.deep_supervision:
        return 0
    return max(0, min(2, len(model.strides) - 2))


def build_network(model: ModelConfig, weights: Optional[dict[str, torch.Tensor]] = None) -> nn.Module:
    """The network for a resolved model config, with ``weights`` (a state dict) loaded if given.

    A channel-pruned network (``model.channels_pruned``) takes its layer sizes from ``weights``.

    Input (B, in_channels, Z, Y, X) -> logits (B, out_channels, Z, Y, X). A
    DynUNet with deep supervision, in training mode, returns
    (B, 1 + heads, out_channels, Z, Y, X) instead (see :func:`training_outputs`).
    """
    network = _build(model)
    if weights is not None:
        if model.channels_pruned:
            from ..pruning.channels import fit_to_state_dict

            fit_to_state_dict(network, weights)
        else:
            network.load_state_dict(weights)
    return network


def _build(model: ModelConfig) -> nn.Module:
    from monai.networks import nets

    if model.architecture not in ARCHITECTURES:
        raise InputError(f"unknown architecture '{model.architecture}'; choose one of {', '.join(ARCHITECTURES)}.")
    if model.out_channels is None or model.channels is None:
        raise ValueError("the model config is not resolved (out_channels / channels missing)")
    if model.architecture == "dynunet":
        heads = deep_supervision_heads(model)
        return nets.DynUNet(
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
    if model.architecture == "hypernet":
        from .hypernetwork import PatchSizeHypernetwork

        return PatchSizeHypernetwork(model)
    if model.architecture == "prm":
        from .prm import build_prm_unet

        return build_prm_unet(
            model.prm_variant,
            model.in_channels,
            model.out_channels,
            model.channels,
            model.strides,
            model.prm_branches,
            deep_supervision=deep_supervision_heads(model) > 0,
        )
    if model.architecture == "unet":
        return nets.UNet(
            spatial_dims=3,
            in_channels=model.in_channels,
            out_channels=model.out_channels,
            channels=list(model.channels),
            strides=[tuple(s) for s in model.strides[1:]],
            num_res_units=2,
            norm="instance",
        )
    if model.architecture == "unetr":
        return nets.UNETR(
            in_channels=model.in_channels,
            out_channels=model.out_channels,
            img_size=tuple(model.patch_size),
            feature_size=model.channels[0],
            norm_name="instance",
        )
    return nets.SwinUNETR(
        in_channels=model.in_channels,
        out_channels=model.out_channels,
        feature_size=max(12, 12 * round(model.channels[0] / 12)),
        norm_name="instance",
        spatial_dims=3,
    )


def training_outputs(network: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Forward pass in training mode as a list: the full-resolution logits first, then deep-supervision heads.

    Each item is (B, K, Z, Y, X).
    """
    return split_outputs(network(images), images)


def split_outputs(output: torch.Tensor, images: torch.Tensor) -> list[torch.Tensor]:
    """A training-mode output as a list of (B, K, Z, Y, X): stacked deep-supervision outputs are unbound."""
    if output.dim() == images.dim() + 1:
        return list(torch.unbind(output, dim=1))
    return [output]


def count_parameters(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())
