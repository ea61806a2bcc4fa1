"""The PSP-Seg network: a U-Net whose deeper stages hold Parallel Redundant Modules (PRMs).

A PRM holds several light parallel branches on the same input and adds
their outputs, each scaled by a learnable scalar that starts at 0:

    y = LeakyReLU(x + sum_i mask_i * w_i * branch_i(x))     (y = x when no branch is left or unmasked)
    branch_i = 1x1x1 conv -> instance norm -> LeakyReLU -> anisotropic conv k_i -> instance norm

Training starts with every branch (a redundant network); progressive pruning
(:mod:`napari_pgps.pruning.progressive`) masks the branches that matter least
and then removes them physically, so the final network is small; a PRM may
lose every branch and then passes its input on unchanged. The remaining
branches of every PRM are part of :class:`ModelConfig` (``prm_branches``), so a
checkpoint's config alone rebuilds the pruned network.

Layout for a plan of L levels (channels c_0..c_{L-1}, strides s_1..s_{L-1}):

- level 0 (full resolution, where activations are largest, so it is kept light as in the PSP-Seg
  reference): one 3x3x3 conv block in the encoder; in the decoder the skip is added (not concatenated)
  and one 3x3x3 conv block follows;
- encoder level l >= 1: downsampling c_{l-1} -> c_l by s_l, then a PRM; the deepest level is the
  bottleneck. ``ModelConfig.prm_downsampling``: "residual" (the reference's: 3x3x3 conv with stride
  s_l -> norm -> LeakyReLU -> 3x3x3 conv -> norm, plus a 1x1x1 conv with stride s_l on the input, summed,
  then LeakyReLU) or "strided-conv" (one conv with kernel = stride s_l -> norm -> LeakyReLU);
- decoder level l < L-1: 1x1x1 conv c_{l+1} -> c_l and nearest upsampling (as PSP-Seg; a transposed
  conv would hold 8x the weights, a quarter of the network at the bottleneck), joined with the skip,
  then a PRM (levels >= 1). ``ModelConfig.prm_skips``: "add" (the reference's: upsampled + skip) or
  "concat" (concatenation, then a 1x1x1 fusion 2 c_l -> c_l -> norm -> LeakyReLU);
- PRMs recompute their branches in the backward pass (activation checkpointing) in training;
- deep supervision: 1x1x1 heads on decoder levels 1 and 2, upsampled to full resolution in training.

A saved config without the two layout fields (``None``: written before they existed) rebuilds the layout
of that time: "strided-conv" and "concat".

Axis order is (Z, Y, X) throughout; tensors are (B, C, Z, Y, X).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import ModelConfig
from ..errors import InputError
from .planning import level_channels

Kernel = tuple[int, int, int]

ALL_KERNELS: tuple[Kernel, ...] = ((1, 1, 1), (1, 1, 3), (1, 3, 1), (3, 1, 1), (1, 3, 3), (3, 1, 3), (3, 3, 1))


@dataclass(frozen=True)
class PRMVariant:
    """Size of a PSP-Seg network: channels, branch width and the starting branches."""

    base_channels: int
    max_channels: int
    expansion: float
    kernels: tuple[Kernel, ...]


# S: the light variant (16..256 channels, branch width 0.5 x channels, 4 branches: 1x1x1 and the
# three planar kernels, as the reference code's 4-branch module);
# B: 7 branches twice as wide; L: wider stages up to 320 channels. The levels
# follow the dataset's plan (nnU-Net rules), so a small task keeps fewer levels.
VARIANTS = {
    "S": PRMVariant(16, 256, 0.5, (ALL_KERNELS[0], *ALL_KERNELS[4:])),
    "B": PRMVariant(16, 256, 2.0, ALL_KERNELS),
    "L": PRMVariant(32, 320, 2.0, ALL_KERNELS),
}
DEEP_SUPERVISION_LEVELS = (1, 2)
DOWNSAMPLING = ("residual", "strided-conv")
SKIPS = ("add", "concat")
REFERENCE_LAYOUT = {"downsampling": "residual", "skips": "add"}
"""The PSP-Seg reference's layout: what a new network gets."""
LEGACY_LAYOUT = {"downsampling": "strided-conv", "skips": "concat"}
"""What a saved config without the layout fields was trained with."""


def _norm(channels: int) -> nn.Module:
    return nn.InstanceNorm3d(channels, affine=True)


def _act() -> nn.Module:
    return nn.LeakyReLU(0.01, inplace=True)


def _padding(kernel: Sequence[int]) -> tuple[int, ...]:
    return tuple(k // 2 for k in kernel)


class ConvBlock(nn.Sequential):
    """3x3x3 conv -> instance norm -> LeakyReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=False), _norm(out_channels), _act())


class Branch(nn.Module):
    """One light branch: 1x1x1 conv to ``hidden`` channels, then an anisotropic conv back to ``channels``.

    ``scale`` is the learnable scalar ``w_i`` (starts at 0, so a new PRM is the identity + activation).
    """

    def __init__(self, channels: int, hidden: int, kernel: Kernel):
        super().__init__()
        self.kernel = tuple(int(k) for k in kernel)
        self.body = nn.Sequential(
            nn.Conv3d(channels, hidden, 1, bias=False),
            _norm(hidden),
            _act(),
            nn.Conv3d(hidden, channels, self.kernel, padding=_padding(self.kernel), bias=False),
            _norm(channels),
        )
        self.scale = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.body(x)


class ParallelRedundantModule(nn.Module):
    """Parallel branches summed onto a residual; branches can be masked (temporarily) or removed.

    Input and output: (B, channels, Z, Y, X).
    """

    def __init__(self, channels: int, hidden: int, kernels: Sequence[Kernel]):
        super().__init__()
        self.channels, self.hidden = channels, hidden
        self.branches = nn.ModuleList(Branch(channels, hidden, k) for k in kernels)
        self.register_buffer("mask", torch.ones(len(self.branches)))
        self.act = _act()

    @property
    def kernels(self) -> list[Kernel]:
        return [b.kernel for b in self.branches]

    def branch_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of the unmasked branches' scaled outputs (B, C, Z, Y, X)."""
        total = torch.zeros_like(x)
        for keep, branch in zip(self.mask, self.branches):
            if keep > 0:
                total = total + branch(x)
        return total

    def combine(self, x: torch.Tensor, branch_total: Optional[torch.Tensor]) -> torch.Tensor:
        """The module's output (B, C, Z, Y, X) from its input ``x`` and the summed scaled outputs of the branches in
        use: act(x + branch_total), or ``x`` itself when no branch is in use (``None``: an empty PRM, as the
        reference's, passes its input on)."""
        return x if branch_total is None else self.act(x + branch_total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool((self.mask > 0).any()):  # no branch left, or every one masked
            return self.combine(x, None)
        if self.training and torch.is_grad_enabled():
            # Activation checkpointing: keep only the input and recompute the branches in the backward pass.
            # The redundant branches would otherwise hold more activations than a plain U-Net level.
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.combine(x, self.branch_sum(x))

    def set_mask(self, masked: Sequence[int]) -> None:
        """Mask the branches at these indices (and unmask every other one)."""
        self.mask.fill_(1.0)
        for i in masked:
            self.mask[i] = 0.0

    def remove_masked(self) -> list[nn.Parameter]:
        """Delete the masked branches; returns their parameters (to drop from the optimiser)."""
        keep = [i for i, m in enumerate(self.mask.tolist()) if m > 0]
        removed = [p for i, b in enumerate(self.branches) if i not in keep for p in b.parameters()]
        self.branches = nn.ModuleList(self.branches[i] for i in keep)
        self.mask = torch.ones(len(keep), device=self.mask.device)
        return removed


class ResidualDownsample(nn.Module):
    """The reference's downsampling: (3x3x3 conv, stride -> norm -> LeakyReLU -> 3x3x3 conv -> norm) + strided 1x1x1 conv, then LeakyReLU.

    (B, c_in, Z, Y, X) -> (B, c_out, ceil(Z / s_z), ceil(Y / s_y), ceil(X / s_x)).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: Sequence[int]):
        super().__init__()
        stride = tuple(stride)
        self.body = nn.Sequential(
            nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            _norm(out_channels),
            _act(),
            nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False),
            _norm(out_channels),
        )
        self.bypass = nn.Conv3d(in_channels, out_channels, 1, stride=stride)
        self.act = _act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bypass(x) + self.body(x))


def _downsample(kind: str, in_channels: int, out_channels: int, stride: Sequence[int]) -> nn.Module:
    """The ``kind`` of downsampling (see :data:`DOWNSAMPLING`) by ``stride`` (Z, Y, X)."""
    if kind == "residual":
        return ResidualDownsample(in_channels, out_channels, stride)
    stride = tuple(stride)
    return nn.Sequential(nn.Conv3d(in_channels, out_channels, stride, stride=stride, bias=False), _norm(out_channels), _act())


class Upsample(nn.Module):
    """1x1x1 conv c_in -> c_out, then nearest upsampling by ``stride`` (Z, Y, X).

    The same as upsampling first and then convolving (a 1x1x1 conv commutes with
    nearest upsampling), at 1/prod(stride) of the cost.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: Sequence[int]):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 1, bias=False)
        self.stride = tuple(float(s) for s in stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.conv(x), scale_factor=self.stride, mode="nearest")


class PRMUNet(nn.Module):
    """The PSP-Seg U-Net (see the module docstring).

    Args:
        in_channels, out_channels: image channels and labels (background included).
        channels: feature maps per level, c_0..c_{L-1}.
        strides: per level (Z, Y, X); ``strides[0]`` is (1, 1, 1).
        expansion: branch width as a fraction of the level's channels.
        branches: kernels of each PRM, in :meth:`prm_names` order (encoder levels 1..L-1, then decoder levels L-2..1);
            a PRM's list may be empty.
        downsampling: "residual" or "strided-conv" (:data:`DOWNSAMPLING`).
        skips: "add" or "concat" (:data:`SKIPS`): how a decoder level >= 1 joins the skip.
        deep_supervision: return the heads too in training mode.

    Forward: (B, in_channels, Z, Y, X) -> logits (B, out_channels, Z, Y, X); in
    training mode with deep supervision (B, 1 + heads, out_channels, Z, Y, X)
    like MONAI's DynUNet.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int],
        strides: Sequence[Sequence[int]],
        expansion: float,
        branches: Sequence[Sequence[Kernel]],
        downsampling: str,
        skips: str,
        deep_supervision: bool = True,
    ):
        super().__init__()
        levels = len(channels)
        if levels < 2:
            raise ValueError("a PRM U-Net needs at least two levels")
        if downsampling not in DOWNSAMPLING or skips not in SKIPS:
            raise ValueError(f"PRM downsampling must be one of {DOWNSAMPLING}, skips one of {SKIPS}")
        if len(branches) != 2 * levels - 3:
            raise ValueError(f"expected {2 * levels - 3} PRM branch lists, got {len(branches)}")
        self.levels = levels
        self.skips = skips

        def prm(level: int, kernels: Sequence[Kernel]) -> ParallelRedundantModule:
            c = channels[level]
            return ParallelRedundantModule(c, max(1, round(c * expansion)), kernels)

        encoder_branches, decoder_branches = branches[: levels - 1], branches[levels - 1 :]
        self.stem = ConvBlock(in_channels, channels[0])
        self.down = nn.ModuleList()
        self.encoder = nn.ModuleList()
        for level in range(1, levels):
            self.down.append(_downsample(downsampling, channels[level - 1], channels[level], strides[level]))
            self.encoder.append(prm(level, encoder_branches[level - 1]))
        self.up = nn.ModuleList()
        self.fuse = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in range(levels - 2, -1, -1):
            stride = tuple(strides[level + 1])
            c = channels[level]
            self.up.append(Upsample(channels[level + 1], c, stride))
            if level >= 1:
                concat = skips == "concat"
                self.fuse.append(nn.Sequential(nn.Conv3d(2 * c, c, 1, bias=False), _norm(c), _act()) if concat else nn.Identity())
                self.decoder.append(prm(level, decoder_branches[levels - 2 - level]))
            else:  # full resolution: the skip is always added, and one 3x3x3 conv follows
                self.fuse.append(ConvBlock(c, c))
                self.decoder.append(nn.Identity())
        self.head = nn.Conv3d(channels[0], out_channels, 1)
        self.supervised_levels = [l for l in DEEP_SUPERVISION_LEVELS if l <= levels - 2] if deep_supervision else []
        self.supervision_heads = nn.ModuleList(nn.Conv3d(channels[l], out_channels, 1) for l in self.supervised_levels)

    # -- structure ---------------------------------------------------------------
    def prms(self) -> list[ParallelRedundantModule]:
        """Every PRM: encoder levels 1..L-1 (the last is the bottleneck), then decoder levels L-2..1."""
        return list(self.encoder) + [m for m in self.decoder if isinstance(m, ParallelRedundantModule)]

    def prm_names(self) -> list[str]:
        """Readable names in :meth:`prms` order, e.g. ``encoder 1``, ``bottleneck``, ``decoder 2``."""
        names = [f"encoder {l}" for l in range(1, self.levels - 1)] + ["bottleneck"]
        return names + [f"decoder {l}" for l in range(self.levels - 2, 0, -1)]

    def branch_kernels(self) -> list[list[Kernel]]:
        """The remaining kernels of every PRM (what ``ModelConfig.prm_branches`` stores)."""
        return [m.kernels for m in self.prms()]

    def unmasked_kernels(self) -> list[list[Kernel]]:
        """The kernels of every PRM's unmasked branches: the architecture the network computes."""
        return [[k for k, m in zip(prm.kernels, prm.mask.tolist()) if m > 0] for prm in self.prms()]

    # -- forward -----------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features of every level, full resolution first: [(B, c_l, Z_l, Y_l, X_l)]."""
        features = [self.stem(x)]
        for down, prm in zip(self.down, self.encoder):
            features.append(prm(down(features[-1])))
        return features

    def decode(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Decoder features from the level above the bottleneck down to level 0 (last item: full resolution)."""
        x = features[-1]
        outputs = []
        levels = range(self.levels - 2, -1, -1)
        for level, up, fuse, block, skip in zip(levels, self.up, self.fuse, self.decoder, reversed(features[:-1])):
            joined = torch.cat([up(x), skip], dim=1) if level > 0 and self.skips == "concat" else up(x) + skip
            x = block(fuse(joined))
            outputs.append(x)
        return outputs

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """(output as :meth:`forward`, encoder features, decoder features)."""
        encoded = self.encode(x)
        decoded = self.decode(encoded)
        logits = self.head(decoded[-1])
        if not (self.training and self.supervision_heads):
            return logits, encoded, decoded
        size = logits.shape[2:]
        heads = [
            F.interpolate(head(decoded[-1 - level]), size=size, mode="trilinear", align_corners=False)
            for head, level in zip(self.supervision_heads, self.supervised_levels)
        ]
        return torch.stack([logits, *heads], dim=1), encoded, decoded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_features(x)[0]


def initial_branches(variant: str, levels: int) -> list[list[Kernel]]:
    """Every PRM starts with the variant's full set of kernels."""
    return [list(VARIANTS[variant].kernels) for _ in range(2 * levels - 3)]


def variant_channels(variant: str, levels: int) -> list[int]:
    v = VARIANTS[variant]
    return level_channels(levels, v.base_channels, v.max_channels)


def resolve_prm(model: ModelConfig) -> None:
    """Fill a planned model config's channels (from the variant), starting branches and layout, in place.

    A new network (no ``prm_branches`` yet) gets all of the variant's branches
    and, where not chosen, the reference's layout (:data:`REFERENCE_LAYOUT`);
    an existing network's config (a resumed run, a model to start from) keeps
    its layout fields, ``None`` included (:data:`LEGACY_LAYOUT`).

    Raises:
        InputError: unknown variant, or a plan that never pools.
    """
    if model.prm_variant not in VARIANTS:
        raise InputError(f"unknown PRM variant '{model.prm_variant}'; choose one of {', '.join(VARIANTS)}.")
    levels = len(model.strides)
    if levels < 2:
        raise InputError(f"the PRM network needs a patch the plan pools at least once; {tuple(model.patch_size)} is too small.")
    if model.channels is None:
        model.channels = variant_channels(model.prm_variant, levels)
        model.base_channels = model.channels[0]
    if model.prm_downsampling not in (None, *DOWNSAMPLING) or model.prm_skips not in (None, *SKIPS):
        raise InputError(f"PRM downsampling must be one of {', '.join(DOWNSAMPLING)} and skips one of {', '.join(SKIPS)}; "
                         f"got '{model.prm_downsampling}' and '{model.prm_skips}'.")
    if model.prm_branches is None:
        model.prm_branches = initial_branches(model.prm_variant, levels)
        model.prm_downsampling = model.prm_downsampling or REFERENCE_LAYOUT["downsampling"]
        model.prm_skips = model.prm_skips or REFERENCE_LAYOUT["skips"]


def build_prm_unet(
    variant: str,
    in_channels: int,
    out_channels: int,
    channels: Sequence[int],
    strides: Sequence[Sequence[int]],
    branches: Optional[Sequence[Sequence[Kernel]]],
    deep_supervision: bool,
    downsampling: Optional[str] = None,
    skips: Optional[str] = None,
) -> PRMUNet:
    """The PRM U-Net of a variant with the given (possibly pruned) branches.

    ``downsampling`` / ``skips`` ``None`` (a config saved before they existed) mean :data:`LEGACY_LAYOUT`.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown PRM variant '{variant}'")
    branches = branches if branches is not None else initial_branches(variant, len(channels))
    kernels = [[tuple(int(k) for k in kernel) for kernel in prm] for prm in branches]
    return PRMUNet(in_channels, out_channels, channels, strides, VARIANTS[variant].expansion, kernels,
                   downsampling or LEGACY_LAYOUT["downsampling"], skips or LEGACY_LAYOUT["skips"], deep_supervision)
