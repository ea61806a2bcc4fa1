"""What the widgets of one viewer share: the run configuration being designed and the last trained model."""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Optional

from psygnal import Signal

from ..config import RunConfig


class PluginState:
    """Evented state shared by the Curriculum, Train and Segment widgets of one viewer.

    ``config`` is what the Curriculum widget designs and the Train and Prune widgets read when they start (no
    signal: nothing follows it live); ``last_model`` is the run folder the Train widget finished last, offered first
    by the Segment widget (``model_trained``).
    """

    model_trained = Signal(object)

    def __init__(self) -> None:
        self.config = RunConfig()
        self.last_model: Optional[Path] = None

    def set_last_model(self, path: Path) -> None:
        self.last_model = Path(path)
        self.model_trained.emit(self.last_model)


_STATES: "weakref.WeakKeyDictionary[object, PluginState]" = weakref.WeakKeyDictionary()


def state_for(viewer) -> PluginState:
    """The shared state of ``viewer``'s widgets (created on first use)."""
    if viewer not in _STATES:
        _STATES[viewer] = PluginState()
    return _STATES[viewer]
