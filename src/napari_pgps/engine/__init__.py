"""The training engine (no Qt): the training loop, checkpoints, inference, metrics and the event fold.

Events are in :mod:`napari_pgps.events`; the loop's plug-in interface in :mod:`napari_pgps.plugins`. The names
below are imported when first used, so that the command line's help and napari's reader, which need a constant
or two from the engine's light modules, do not wait for torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
    from .control import TrainingControl
    from .device import pick_device
    from .inference import Cancelled, Segmentation, SegmentationModel, load_model, predict_probabilities, segment_volume
    from .progress import TrainingProgress, describe_event, fold, read_events
    from .run_folder import RunFolder, model_config
    from .trainer import TrainingDiverged, train

_EXPORTS = {
    **dict.fromkeys(["find_checkpoint", "load_checkpoint", "save_checkpoint"], ".checkpoint"),
    "TrainingControl": ".control",
    "pick_device": ".device",
    **dict.fromkeys(
        ["Cancelled", "Segmentation", "SegmentationModel", "load_model", "predict_probabilities", "segment_volume"],
        ".inference",
    ),
    **dict.fromkeys(["TrainingProgress", "describe_event", "fold", "read_events"], ".progress"),
    **dict.fromkeys(["RunFolder", "model_config"], ".run_folder"),
    **dict.fromkeys(["TrainingDiverged", "train"], ".trainer"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
