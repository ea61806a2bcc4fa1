"""The architecture registry: everything napari-pgps knows about each network, in one place.

A new network is one :class:`Architecture` entry in :data:`ARCHITECTURES`
(its builder may live in a module of its own, as :mod:`.prm` and
:mod:`.hypernetwork` do). Nothing outside this module asks which network a
configuration names; it asks the entry what the network can do.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from ..config import ModelConfig, RunConfig
from ..errors import InputError
from .dynunet import build_dynunet
from .dynunet import deep_supervision_heads as unet_heads
from .planning import UNetPlan, check_patch_size

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Architecture:
    """One network and what it can do."""

    name: str
    """``model.architecture`` in configurations, ``--architecture`` on the command line."""
    description: str
    """One line for help texts and widgets."""
    build: Callable[[ModelConfig], nn.Module]
    """The network of a resolved model config (random weights)."""
    fixed_divisor: Optional[int] = None
    """Every patch axis must be a multiple of this; ``None``: of the plan's poolings (``2 ** poolings``)."""
    minimum_patch: int = 1
    """The smallest patch size per axis the network takes (beyond one divisor step)."""
    deep_supervision: bool = False
    """Has low-resolution deep-supervision heads (as many as :func:`napari_pgps.models.dynunet.deep_supervision_heads`)."""
    channel_prunable: bool = False
    """Torch-Pruning can remove channels from it (``napari-pgps prune --model``)."""
    branch_prunable: bool = False
    """Holds PSP-Seg's parallel redundant modules: progressive pruning removes their branches."""
    bakes_to: Optional[str] = None
    """Segments through the plain network of this architecture, baked for each patch size (the hypernetwork)."""
    only_training_patch: bool = False
    """Takes its final training patch and no other (position embeddings), so trains with the constant schedule only."""
    default_schedule: str = "constant"
    """The patch schedule when the configuration names none."""
    needs_varying_patch: bool = False
    """Learns from varying patch sizes: the constant schedule is refused."""
    model_kind: Optional[str] = None
    """The model kind it defines whatever the schedule (see :data:`MODEL_KINDS`); ``None``: the schedule decides."""
    resolve: Optional[Callable[[ModelConfig], None]] = None
    """Fills the network's own planned fields (channels, branches) of a model config in place."""


def _unet(model: ModelConfig) -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=model.in_channels, out_channels=model.out_channels,
                channels=list(model.channels), strides=[tuple(s) for s in model.strides[1:]], num_res_units=2,
                norm="instance")


def _unetr(model: ModelConfig) -> nn.Module:
    from monai.networks.nets import UNETR

    return UNETR(in_channels=model.in_channels, out_channels=model.out_channels, img_size=tuple(model.patch_size),
                 feature_size=model.channels[0], norm_name="instance")


def _swinunetr(model: ModelConfig) -> nn.Module:
    from monai.networks.nets import SwinUNETR

    return SwinUNETR(in_channels=model.in_channels, out_channels=model.out_channels,
                     feature_size=max(12, 12 * round(model.channels[0] / 12)), norm_name="instance", spatial_dims=3)


def _prm(model: ModelConfig) -> nn.Module:
    from .prm import build_prm_unet

    return build_prm_unet(model.prm_variant, model.in_channels, model.out_channels, model.channels, model.strides,
                          model.prm_branches, deep_supervision=deep_supervision_heads(model) > 0,
                          downsampling=model.prm_downsampling, skips=model.prm_skips)


def _resolve_prm(model: ModelConfig) -> None:
    from .prm import resolve_prm

    resolve_prm(model)


def _hypernet(model: ModelConfig) -> nn.Module:
    from .hypernetwork import PatchSizeHypernetwork

    return PatchSizeHypernetwork(model)


ARCHITECTURES: dict[str, Architecture] = {
    spec.name: spec
    for spec in (
        Architecture("dynunet", "nnU-Net-style U-Net planned from the data (MONAI DynUNet; the default)", build_dynunet,
                     deep_supervision=True, channel_prunable=True),
        Architecture("unet", "MONAI's residual UNet with the planned strides", _unet, channel_prunable=True),
        Architecture("unetr", "UNETR (transformer encoder; takes its training patch only)", _unetr, fixed_divisor=16,
                     only_training_patch=True),
        # its deepest stage (1/32) must keep 2 voxels per axis for instance norm
        Architecture("swinunetr", "SwinUNETR (shifted-window transformer; patches of at least 64 voxels)", _swinunetr,
                     fixed_divisor=32, minimum_patch=64),
        Architecture("prm", "PSP-Seg network with parallel redundant modules, for progressive pruning", _prm,
                     deep_supervision=True, channel_prunable=True, branch_prunable=True, resolve=_resolve_prm),
        Architecture("hypernet", "patch-size hypernetwork: an MLP generates the DynUNet's weights from the patch size",
                     _hypernet, deep_supervision=True, bakes_to="dynunet", default_schedule="augment",
                     needs_varying_patch=True, model_kind="HN"),
    )
}

DEFAULT_ARCHITECTURE = "dynunet"

MODEL_KINDS = {
    "FP": "fixed patch (constant schedule)",
    "AP": "patch-size augmentation (augment schedule)",
    "HN": "patch-size hypernetwork (hypernet architecture)",
    "PGPS": "progressive growing of patch size (pgps-efficiency / pgps-performance)",
    "RPSS": "random patch-size stages (rpss schedule)",
}
_SCHEDULE_KINDS = {"constant": "FP", "augment": "AP", "rpss": "RPSS", "pgps-efficiency": "PGPS", "pgps-performance": "PGPS"}


def architecture(model: ModelConfig | str) -> Architecture:
    """The registry entry of a model config (or of an architecture name); an unset one is the default network.

    Raises:
        InputError: the name is not in the registry.
    """
    name = (model if isinstance(model, str) else model.architecture) or DEFAULT_ARCHITECTURE
    if name not in ARCHITECTURES:
        raise InputError(f"unknown architecture '{name}'; choose one of {', '.join(ARCHITECTURES)}.")
    return ARCHITECTURES[name]


def patch_divisor(model: ModelConfig) -> tuple[int, int, int]:
    """Every patch the network takes is a multiple of this, per axis (Z, Y, X)."""
    fixed = architecture(model).fixed_divisor
    if fixed is not None:
        return (fixed,) * 3
    return UNetPlan(model.kernel_sizes, model.strides).divisor


def patch_poolings(model: ModelConfig) -> tuple[int, int, int]:
    """The 2x poolings per axis (Z, Y, X) of the network's patch grid: ``log2`` of :func:`patch_divisor`, the
    steps a patch schedule grows by."""
    return tuple(int(math.log2(d)) for d in patch_divisor(model))


def minimum_patch(model: ModelConfig) -> tuple[int, int, int]:
    """The smallest size per axis (Z, Y, X) the network takes."""
    return (architecture(model).minimum_patch,) * 3


def check_minimum_patch(model: ModelConfig, patch_size: Sequence[int]) -> None:
    """Raise a clear error if the patch is below the network's minimum size."""
    spec = architecture(model)
    if min(patch_size) < spec.minimum_patch:
        raise InputError(f"{spec.name} needs a patch of at least {spec.minimum_patch} voxels per axis, "
                         f"got {tuple(patch_size)}.")


def check_inference_patch(model: ModelConfig, patch_size: Sequence[int]) -> None:
    """Raise a clear error if the network cannot segment with windows of this size (Z, Y, X)."""
    spec = architecture(model)
    if spec.only_training_patch and tuple(patch_size) != tuple(model.patch_size):
        raise InputError(
            f"{spec.name} takes its training patch {tuple(model.patch_size)} only; "
            f"it cannot segment with patch size {tuple(patch_size)}."
        )
    check_patch_size(patch_size, patch_divisor(model))
    check_minimum_patch(model, patch_size)


def deep_supervision_heads(model: ModelConfig) -> int:
    """Number of extra low-resolution outputs trained with deep supervision."""
    return unet_heads(model) if architecture(model).deep_supervision else 0


def segmenting_config(model: ModelConfig) -> ModelConfig:
    """The config of the network that segments: for a hypernetwork, the plain network it bakes; else ``model``."""
    bakes_to = architecture(model).bakes_to
    return dataclasses.replace(model, architecture=bakes_to) if bakes_to else model


def default_architecture(config: RunConfig) -> str:
    """The network when the configuration names none: the PSP-Seg network under progressive pruning, else dynunet."""
    branch_prunable = [spec.name for spec in ARCHITECTURES.values() if spec.branch_prunable]
    return branch_prunable[0] if config.pruning.enabled else DEFAULT_ARCHITECTURE


def schedule_of(config: RunConfig) -> str:
    """The patch schedule a configuration trains with: its own, else its network's default."""
    return config.curriculum.schedule or architecture(config.model.architecture or default_architecture(config)).default_schedule


def model_kind(config: RunConfig) -> str:
    """The kind of model a run trains, one of :data:`MODEL_KINDS`: the network's own (HN), else by schedule."""
    spec = architecture(config.model.architecture or default_architecture(config))
    schedule = schedule_of(config)
    return spec.model_kind or _SCHEDULE_KINDS.get(schedule, schedule)
