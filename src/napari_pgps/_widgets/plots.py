"""A small matplotlib canvas for dock widgets, redrawn at a bounded rate."""

from __future__ import annotations

from typing import Callable

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtCore import QTimer

MAX_REDRAWS_PER_SECOND = 4
_STAGGER_MS = 90  # canvases start their timers apart so two repaints never share one event-loop pass
_canvases_made = 0


class PlotCanvas(FigureCanvasQTAgg):
    """A figure whose ``draw_function(figure)`` runs at most 4 times a second, and only when marked stale.

    Redrawing a whole figure takes hundreds of milliseconds on a busy 2-core
    machine, so plots that change while training runs should create their
    artists once and let ``draw_function`` only update their data.

    Args:
        draw_function: brings the figure up to date with the widget's data.
        height: figure height in inches.
    """

    def __init__(self, draw_function: Callable[[Figure], None], height: float = 2.4) -> None:
        figure = Figure(figsize=(4.2, height))
        figure.subplots_adjust(left=0.15, right=0.85, top=0.95, bottom=0.17, hspace=0.12)
        super().__init__(figure)
        self.figure = figure
        self._draw_function = draw_function
        self._stale = True
        self.redraws = 0
        self._timer = QTimer(self)
        self._timer.setInterval(int(1000 / MAX_REDRAWS_PER_SECOND))
        self._timer.timeout.connect(self._redraw_if_stale)
        global _canvases_made
        QTimer.singleShot((_canvases_made % 3) * _STAGGER_MS, self._timer.start)
        _canvases_made += 1

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
        self._draw_function(self.figure)
        self.draw_idle()
        self.redraws += 1
