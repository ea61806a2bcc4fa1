"""A small matplotlib canvas for dock widgets, redrawn at a bounded rate."""

from __future__ import annotations

from typing import Callable

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtCore import QTimer

MAX_REDRAWS_PER_SECOND = 4


class PlotCanvas(FigureCanvasQTAgg):
    """A figure whose ``draw_function(figure)`` runs at most 4 times a second, and only when marked stale.

    Args:
        draw_function: clears and redraws the figure from the widget's data.
        height: figure height in inches.
    """

    def __init__(self, draw_function: Callable[[Figure], None], height: float = 2.4) -> None:
        figure = Figure(figsize=(4.2, height), layout="constrained")
        super().__init__(figure)
        self.figure = figure
        self._draw_function = draw_function
        self._stale = True
        self.redraws = 0
        self._timer = QTimer(self)
        self._timer.setInterval(int(1000 / MAX_REDRAWS_PER_SECOND))
        self._timer.timeout.connect(self._redraw_if_stale)
        self._timer.start()

    def mark_stale(self) -> None:
        """Ask for a redraw at the next tick."""
        self._stale = True

    def redraw_now(self) -> None:
        self._stale = True
        self._redraw_if_stale()

    def _redraw_if_stale(self) -> None:
        if not self._stale:
            return
        self._stale = False
        self.figure.clear()
        self._draw_function(self.figure)
        self.draw_idle()
        self.redraws += 1
