"""Network planning and construction (MONAI networks)."""

from .factory import build_network, check_inference_patch, count_parameters, patch_divisor, training_outputs
from .planning import UNetPlan, check_patch_size, plan_patch_size, plan_unet

__all__ = [
    "UNetPlan",
    "build_network",
    "check_inference_patch",
    "check_patch_size",
    "count_parameters",
    "patch_divisor",
    "plan_patch_size",
    "plan_unet",
    "training_outputs",
]
