"""napari-pgps: curriculum and efficiency methods for training 3D segmentation networks.

The layers, from the faces down (``docs/architecture.md``; ``lint-imports`` checks them):
the faces (``cli``, ``_widgets``, ``_reader``, ``_writer``, ``demo``) drive the
tasks (``tasks``), which drive the engine (``engine``), which uses the domain
(``curriculum``, ``pruning``, ``models``, ``data``) and the base (``config``,
``errors``, ``events``, ``files``, ``plugins``). Nothing from ``engine`` down imports
Qt, napari or matplotlib.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .config import RunConfig
    from .engine import TrainingControl, load_model, segment_volume
    from .tasks.training import train

_PUBLIC = {"RunConfig": ".config", "TrainingControl": ".engine", "load_model": ".engine", "segment_volume": ".engine",
           "train": ".tasks.training"}
"""The Python API, imported when first used: napari's reader and writer and the command line's help do not wait
for torch."""

__all__ = ["__version__", *sorted(_PUBLIC)]
__getattr__, __dir__ = lazy_exports(globals(), _PUBLIC)
