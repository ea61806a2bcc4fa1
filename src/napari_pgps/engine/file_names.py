"""The names of the files napari-pgps writes: a run folder's (:mod:`.run_folder`) and a model package's
(:mod:`.package`).

Torch-free, so that the command line's help can name them without importing the engine's heavy modules.
"""

from __future__ import annotations

CONFIG_FILE = "config.yaml"
"""The run's resolved configuration."""
SPLITS_FILE = "splits.json"
"""The run's training and validation case names, ``{"training": [...], "validation": [...]}``."""
LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"
FINAL = "checkpoint_final.pt"
"""The names of a run's checkpoints in its run folder."""

MANIFEST = "napari-pgps-model.json"
WEIGHTS = "weights.pt"
CONFIG = "config.yaml"
SPLITS = "splits.json"
POSTPROCESSING = "postprocessing.json"
MODEL_CARD = "model_card.md"
ONNX = "network.onnx"
"""The members of a model package (a .zip)."""
