"""Small form controls shared by the dock widgets."""

from __future__ import annotations

from qtpy.QtWidgets import QSpinBox


def spin_box(low: int, high: int, value: int) -> QSpinBox:
    """A whole-number box limited to [low, high], showing ``value``."""
    spin = QSpinBox()
    spin.setRange(low, high)
    spin.setValue(value)
    return spin
