"""The training engine (no Qt): training loop, checkpoints, inference, metrics."""

from .checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from .control import TrainingControl
from .device import pick_device
from .events import (
    CasesAdded,
    ChannelPruningStep,
    CheckpointSaved,
    Finished,
    Paused,
    PruningReport,
    PruningStep,
    Resumed,
    RunStarted,
    StageFinished,
    StageStarted,
    StepDone,
    Validated,
)
from .inference import Cancelled, Segmentation, SegmentationModel, load_model, predict_probabilities, segment_volume
from .trainer import TrainingDiverged, train

__all__ = [
    "CasesAdded",
    "Cancelled",
    "ChannelPruningStep",
    "CheckpointSaved",
    "Finished",
    "Paused",
    "PruningReport",
    "PruningStep",
    "Resumed",
    "RunStarted",
    "Segmentation",
    "SegmentationModel",
    "StageFinished",
    "StageStarted",
    "StepDone",
    "TrainingControl",
    "TrainingDiverged",
    "Validated",
    "find_checkpoint",
    "load_checkpoint",
    "load_model",
    "pick_device",
    "predict_probabilities",
    "save_checkpoint",
    "segment_volume",
    "train",
]
