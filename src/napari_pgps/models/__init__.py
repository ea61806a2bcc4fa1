"""Networks: planning from the data, the architecture registry, building and rebuilding (MONAI networks).

The names below are imported when first used, so that the command line's help, which lists the architectures,
does not wait for torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
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

_EXPORTS = {
    **dict.fromkeys(
        ["ARCHITECTURES", "MODEL_KINDS", "Architecture", "architecture", "check_inference_patch",
         "deep_supervision_heads", "model_kind", "patch_divisor", "segmenting_config"],
        ".architectures",
    ),
    **dict.fromkeys(["build_network", "count_parameters", "split_outputs", "training_outputs"], ".factory"),
    **dict.fromkeys(["UNetPlan", "check_patch_size", "level_channels", "plan_patch_size", "plan_unet"], ".planning"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
