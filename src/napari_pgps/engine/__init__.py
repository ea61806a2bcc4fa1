"""The training engine (no Qt): the training loop, checkpoints, inference, metrics and the event fold.

Events are in :mod:`napari_pgps.events`; the loop's plug-in interface in :mod:`napari_pgps.plugins`.
"""

from .checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from .control import TrainingControl
from .device import pick_device
from .inference import Cancelled, Segmentation, SegmentationModel, load_model, predict_probabilities, segment_volume
from .progress import TrainingProgress, describe_event, fold, read_events
from .run_folder import RunFolder, model_config
from .trainer import TrainingDiverged, train

__all__ = [
    "Cancelled",
    "RunFolder",
    "Segmentation",
    "SegmentationModel",
    "TrainingControl",
    "TrainingDiverged",
    "TrainingProgress",
    "describe_event",
    "find_checkpoint",
    "fold",
    "load_checkpoint",
    "load_model",
    "model_config",
    "pick_device",
    "predict_probabilities",
    "read_events",
    "save_checkpoint",
    "segment_volume",
    "train",
]
