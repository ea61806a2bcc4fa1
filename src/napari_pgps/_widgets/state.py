"""What the widgets of one viewer share: the run configuration being designed, the last trained model, the last
segmentation."""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Optional

from psygnal import Signal

from ..config import RunConfig

DERIVED = "napari_pgps_derived"
"""Metadata key of the layers the widgets derive from a result (its uncertainty, its disagreement with a reference):
neither segmented by "Segment all open images" nor offered for review."""


class PluginState:
    """Evented state shared by the widgets of one viewer.

    ``config`` is what the Curriculum widget designs and the Train and Prune widgets read when they start (no
    signal: nothing follows it live); ``last_model`` is the run folder the Train widget finished last, offered first
    by the Segment and Prune widgets (``model_trained``). ``segmented`` is emitted with each Labels layer the Segment
    widget adds and whether it was segmented alone (not as one of "Segment all open images"): the Review widget
    chooses it, and reviews one segmented alone against the reference chosen there. ``device`` and ``time_budget``
    (seconds, ``None``: none) are the Train widget's, which the run's recipe depends on (``run_settings_changed``:
    the Curriculum widget's automatic schedule follows them).
    """

    model_trained = Signal(object)
    segmented = Signal(object, bool)
    run_settings_changed = Signal()

    def __init__(self) -> None:
        self.config = RunConfig()
        self.last_model: Optional[Path] = None
        self.device = "auto"
        self.time_budget: Optional[float] = None

    def set_run_settings(self, device: str, time_budget: Optional[float]) -> None:
        self.device, self.time_budget = device, time_budget
        self.run_settings_changed.emit()

    def set_last_model(self, path: Path) -> None:
        self.last_model = Path(path)
        self.model_trained.emit(self.last_model)


_STATES: "weakref.WeakKeyDictionary[object, PluginState]" = weakref.WeakKeyDictionary()


def state_for(viewer) -> PluginState:
    """The shared state of ``viewer``'s widgets (created on first use)."""
    if viewer not in _STATES:
        _STATES[viewer] = PluginState()
    return _STATES[viewer]
