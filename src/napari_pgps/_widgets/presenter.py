"""What a training or pruning run's events look like in a widget: the engine's words in the status line.

The command line prints :func:`~napari_pgps.engine.progress.describe_event`'s line for each event; the widgets
show the same line, so a run reads the same in a terminal and in napari, and the run's recipe (the "recipe:" lines
``train`` prints) under it. The widgets draw their plots and
progress bars from the folded :class:`~napari_pgps.engine.progress.TrainingProgress` (``presenter.history``).
"""

from __future__ import annotations

from typing import Optional

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel

from ..engine.progress import TrainingProgress, describe_event
from ..events import Event


def status_line(event: Event, history: TrainingProgress) -> str | None:
    """The first line of what :func:`describe_event` says of ``event`` (``history`` already folded with it), or
    ``None`` when it says nothing. Its further lines (a run's notes, a pruning report's table) are shown apart."""
    text = describe_event(event, history)
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[0] if lines else None


def show_notes(notes: tuple[str, ...]) -> None:
    """A napari warning for each note of a run (e.g. a pruning rule this run is too short for)."""
    from napari.utils.notifications import show_warning

    for note in notes:
        show_warning(note)


def recipe_label() -> QLabel:
    """An empty label for a run's recipe: one line per part, as ``napari-pgps train`` prints them."""
    label = QLabel()
    label.setWordWrap(True)
    label.setTextFormat(Qt.TextFormat.PlainText)
    label.setToolTip("The run's recipe, one line per part: what it trains with and why (napari-pgps train prints the "
                     "same lines).")
    return label


class RunPresenter:
    """Folds a run's events into :attr:`history` and says each in ``status``; a run's recipe goes in ``recipe`` (one
    line per part), its notes become warnings."""

    def __init__(self, status: QLabel, recipe: Optional[QLabel] = None) -> None:
        self.status = status
        self.recipe = recipe
        self.history = TrainingProgress()

    def reset(self) -> None:
        """Forget the last run (a new one starts)."""
        self.history = TrainingProgress()
        if self.recipe is not None:
            self.recipe.setText("")

    def show(self, event: Event) -> TrainingProgress:
        """Fold ``event`` in and put its line in the status line (the line before stays when it has none)."""
        history = self.history.update(event)
        line = status_line(event, history)
        if line is not None:
            self.status.setText(line)
        if history.started is event:
            show_notes(history.started.notes)
            if self.recipe is not None:
                self.recipe.setText("\n".join(history.started.recipe))
        return history
