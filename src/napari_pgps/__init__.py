"""napari-pgps: curriculum and efficiency methods for training 3D segmentation networks.

The engine (``napari_pgps.config``, ``data``, ``models``, ``curriculum``,
``engine``) never imports Qt; the napari widgets and the command line are thin
faces over it.
"""

__version__ = "0.1.0"

from .config import RunConfig
from .engine import TrainingControl, load_model, segment_volume, train

__all__ = ["RunConfig", "TrainingControl", "__version__", "load_model", "segment_volume", "train"]
