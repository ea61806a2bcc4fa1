"""Networks: planning from the data, the architecture registry, building and rebuilding (MONAI networks)."""

from .architectures import (
    ARCHITECTURES,
    MODEL_KINDS,
    Architecture,
    architecture,
    check_inference_patch,
    deep_supervision_heads,
    model_kind,
    patch_divisor,
    segmenting_config,
)
from .factory import build_network, count_parameters, split_outputs, training_outputs
from .planning import UNetPlan, check_patch_size, level_channels, plan_patch_size, plan_unet

__all__ = [
    "ARCHITECTURES",
    "MODEL_KINDS",
    "Architecture",
    "UNetPlan",
    "architecture",
    "build_network",
    "check_inference_patch",
    "check_patch_size",
    "count_parameters",
    "deep_supervision_heads",
    "level_channels",
    "model_kind",
    "patch_divisor",
    "plan_patch_size",
    "plan_unet",
    "segmenting_config",
    "split_outputs",
    "training_outputs",
]
