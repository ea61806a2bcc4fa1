"""napari-pgps: curriculum and efficiency methods for training 3D segmentation networks.

The layers, from the faces down (``docs/architecture.md``; ``lint-imports`` checks them):
the faces (``cli``, ``_widgets``, ``_reader``, ``_writer``, ``demo``) drive the
tasks (``tasks``), which drive the engine (``engine``), which uses the domain
(``curriculum``, ``pruning``, ``models``, ``data``) and the base (``config``,
``errors``, ``events``, ``files``, ``plugins``). Nothing from ``engine`` down imports
Qt, napari or matplotlib.
"""

__version__ = "0.1.0"

from .config import RunConfig
from .engine import TrainingControl, load_model, segment_volume
from .tasks.training import train

__all__ = ["RunConfig", "TrainingControl", "__version__", "load_model", "segment_volume", "train"]
