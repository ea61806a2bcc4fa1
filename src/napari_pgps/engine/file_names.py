"""The names of the files napari-pgps writes: a run folder's (:mod:`.run_folder`) and a model package's
(:mod:`.package`).

Torch-free, so that the command line's help can name them without importing the engine's heavy modules.
"""

from __future__ import annotations

CONFIG_FILE = "config.yaml"
"""The run's resolved configuration (in a run folder and in a model package)."""
SPLITS_FILE = "splits.json"
"""The run's training and validation case names, ``{"training": [...], "validation": [...]}`` (in a run folder and
in a model package)."""
POSTPROCESSING_FILE = "postprocessing.json"
"""The post-processing chosen on the validation cases (:mod:`.postprocessing`; in a run folder and in a model
package)."""
LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"
FINAL = "checkpoint_final.pt"
"""The names of a run's checkpoints in its run folder."""

MANIFEST = "napari-pgps-model.json"
WEIGHTS = "weights.pt"
MODEL_CARD = "model_card.md"
ONNX = "network.onnx"
"""The members of a model package (a .zip), with :data:`CONFIG_FILE`, :data:`SPLITS_FILE` and
:data:`POSTPROCESSING_FILE`."""
