"""Training with every method napari-pgps has plugged into the engine's loop.

The engine's :func:`napari_pgps.engine.train` trains with the plug-ins it is
given; :func:`train` here gives it one of each method (they stay idle unless
the configuration asks for them), so the command line, the widgets and
Python train the same way. A new method is one plug-in module and one line
in :func:`method_plugins`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from ..config import RunConfig
from ..curriculum.pdl import PDLCurriculum
from ..engine import train as train_with
from ..events import Event
from ..plugins import TrainingPlugin
from ..pruning.psp_seg import PSPSeg


def method_plugins() -> list[TrainingPlugin]:
    """A fresh plug-in of every method: the PDL data curriculum, then PSP-Seg (decoupling and progressive pruning)."""
    return [PDLCurriculum(), PSPSeg()]


def train(
    config: RunConfig, run_dir: Optional[str | Path] = None, *, plugins: Sequence[TrainingPlugin] = (), **options: Any
) -> Iterator[Event]:
    """Train a segmentation network, yielding events: :func:`napari_pgps.engine.train` with every method plugged in.

    ``plugins`` are added after the methods' own; ``options`` (``dataset``, ``control``, ``resume``,
    ``initial_weights``) and the events are the engine function's.
    """
    yield from train_with(config, run_dir, plugins=[*method_plugins(), *plugins], **options)
