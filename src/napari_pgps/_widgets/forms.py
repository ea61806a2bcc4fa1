"""The form pieces of the dock widgets: magicgui forms, and the few Qt controls magicgui has no counterpart for.

A widget's settings are a magicgui :func:`form`: one labelled row per field, the labels aligned, each field a
magicgui widget with its type, range, default and tooltip (``ComboBox``, ``SpinBox``, ``CheckBox``, ...). The
widget keeps each field's Qt control (``field.native``) under the field's name, so that code and tests read and
set it as any Qt control. Controls magicgui does not offer sit in the same form as a row of their own
(:func:`qt_field`):

- :class:`PathField`: a path typed, or chosen with a button that offers a file of a filter *or* a folder
  (magicgui's ``FileEdit`` picks one kind);
- :class:`ModelChoice`: an editable list of models, the one trained last offered first (magicgui's ``ComboBox``
  holds a fixed set of choices, not typed text);
- :class:`ChannelPicker`: the channels of one image picked layer by layer, in order;
- :func:`count_box`: a whole number whose 0 reads as words ("the schedule's epochs"): magicgui's ``SpinBox``
  (superqt's large-integer box) shows no special-value text and no suffix.
"""

from __future__ import annotations

from typing import Optional

from magicgui.widgets import Container, Widget
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMenu,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

CHANNEL_SEPARATOR = " + "
MODEL_FILES = "Models (*.pt *.zip)"
"""The file filter of a model: a checkpoint or a model package."""


def form(*fields: Widget) -> Container:
    """A magicgui form: ``fields`` one under the other, each after its ``label`` (aligned); buttons and check
    boxes span the row."""
    container = Container()
    container.extend(fields)  # added after creation: magicgui aligns the labels of a container it has made
    return container


def row(*fields: Widget, label: str = "", labels: bool = False) -> Container:
    """``fields`` side by side as one row of a :func:`form`, after ``label``; ``labels`` puts each field's own
    label before it (e.g. "Z", "Y", "X")."""
    container = Container(widgets=fields, layout="horizontal", labels=labels, label=label)
    container.margins = (0, 0, 0, 0)
    return container


def qt_field(widget: QWidget, label: str = "") -> Container:
    """A Qt control as one row of a :func:`form`, after ``label`` (for the controls magicgui has no counterpart of)."""
    holder = Container(labels=False, label=label)
    holder.margins = (0, 0, 0, 0)
    holder.native.layout().addWidget(widget)
    return holder


def count_box(low: int, high: int, value: int, zero_means: str, suffix: str = "") -> QSpinBox:
    """A whole number in [low, high] whose 0 shows ``zero_means`` instead of the number."""
    spin = QSpinBox()
    spin.setRange(low, high)
    spin.setValue(value)
    spin.setSpecialValueText(zero_means)
    spin.setSuffix(suffix)
    return spin


class ChannelPicker(QWidget):
    """Pick an image layer, or several as the channels of one image, in the order the model takes them.

    The list offers the open image layers (3D, or channels x 3D); "Add channel"
    appends the one shown to the channels, "Clear" empties them. Without
    added channels the image is the layer shown.
    """

    def __init__(self, viewer, exclude: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.viewer, self.exclude = viewer, exclude
        self.layer = QComboBox()
        self.add, self.clear = QPushButton("Add channel"), QPushButton("Clear")
        self.chosen: list[str] = []
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.summary.setVisible(False)  # shown once channels are added
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        for widget in (self.layer, self.add, self.clear):
            row.addWidget(widget)
        column = QVBoxLayout(self)
        column.setContentsMargins(0, 0, 0, 0)
        column.addLayout(row)
        column.addWidget(self.summary)
        self.add.clicked.connect(self.add_channel)
        self.clear.clicked.connect(self.reset)
        viewer.layers.events.inserted.connect(self.refresh)
        viewer.layers.events.removed.connect(self.refresh)
        self.refresh()

    def refresh(self, *_) -> None:
        from napari.layers import Image

        current = self.layer.currentText()
        self.layer.clear()
        self.layer.addItems([layer.name for layer in self.viewer.layers
                             if isinstance(layer, Image) and layer.ndim in (3, 4) and layer.name not in self.exclude])
        if current:
            self.layer.setCurrentText(current)

    def names(self) -> list[str]:
        """The chosen layers' names in channel order."""
        return list(self.chosen) or ([self.layer.currentText()] if self.layer.currentText() else [])

    def text(self) -> str:
        """The chosen layers' names joined by " + "."""
        return CHANNEL_SEPARATOR.join(self.names())

    def reset(self) -> None:
        self.chosen = []
        self.summary.setText("")
        self.summary.setVisible(False)

    def add_channel(self) -> None:
        """Append the layer shown to the channels."""
        if self.layer.currentText():
            self.chosen.append(self.layer.currentText())
            self.summary.setText("channels: " + ", ".join(f"{i}: {n}" for i, n in enumerate(self.chosen)))
            self.summary.setVisible(True)


class PathField(QWidget):
    """A path typed in a line edit or chosen with its "..." button.

    Without ``file_filter`` the button picks a folder; with one (e.g. ``"Models (*.pt *.zip)"``) it offers a
    menu: a file of that filter, or a folder. ``edited`` is the line edit's ``textChanged``; ``chosen`` is emitted
    with a path chosen with the button.
    """

    chosen = Signal(str)

    def __init__(self, placeholder: str = "", file_filter: Optional[str] = None, caption: str = "Choose") -> None:
        super().__init__()
        self.caption, self.file_filter = caption, file_filter
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(placeholder)
        self.browse = QPushButton("...")
        self.browse.setMaximumWidth(36)
        self.edited = self.edit.textChanged
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.edit)
        row.addWidget(self.browse)
        if file_filter:
            menu = QMenu(self.browse)
            menu.addAction(f"File ({file_filter})...", self.choose_file)
            menu.addAction("Folder...", self.choose_folder)
            self.browse.setMenu(menu)
        else:
            self.browse.clicked.connect(self.choose_folder)

    def text(self) -> str:
        """The path as typed, without surrounding spaces ("" when empty)."""
        return self.edit.text().strip()

    def setText(self, text: str) -> None:  # Qt's spelling, as QLineEdit's
        self.edit.setText(text)

    def choose_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, self.caption, self.text(), self.file_filter or "")
        if path:
            self.edit.setText(path)
            self.chosen.emit(path)

    def choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, self.caption, self.text())
        if folder:
            self.edit.setText(folder)
            self.chosen.emit(folder)


class ModelChoice(QComboBox):
    """An editable list of models: a run folder, a checkpoint (.pt) or a model package (.zip), typed, chosen with
    :attr:`browse_folder` ("Run folder...") or :attr:`browse_file` ("Checkpoint...": either file), or offered by a
    widget (:meth:`offer`; the model trained last first). ``chosen`` is emitted with a model browsed to: the widget
    offers it as it offers any model."""

    chosen = Signal(str)

    def __init__(self, tooltip: str) -> None:
        super().__init__()
        self.setEditable(True)
        self.setToolTip(tooltip)
        self.browse_folder, self.browse_file = QPushButton("Run folder..."), QPushButton("Checkpoint...")
        self.browse_folder.clicked.connect(lambda: self._browsed(QFileDialog.getExistingDirectory(self, "Run folder")))
        self.browse_file.clicked.connect(
            lambda: self._browsed(QFileDialog.getOpenFileName(self, "Checkpoint", "", MODEL_FILES)[0]))

    def path(self) -> str:
        """The model shown, without surrounding spaces ("" when none)."""
        return self.currentText().strip()

    def offer(self, path) -> None:
        """Put ``path`` first in the list and select it."""
        text = str(path)
        index = self.findText(text)
        if index >= 0:
            self.removeItem(index)
        self.insertItem(0, text)
        self.setCurrentIndex(0)

    def _browsed(self, path: str) -> None:
        if path:
            self.chosen.emit(path)
