"""Small form controls shared by the dock widgets."""

from __future__ import annotations

from typing import Optional

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


def spin_box(low: int, high: int, value: int) -> QSpinBox:
    """A whole-number box limited to [low, high], showing ``value``."""
    spin = QSpinBox()
    spin.setRange(low, high)
    spin.setValue(value)
    return spin


def show_notes(started) -> None:
    """A napari warning for each note of a ``RunStarted`` event (e.g. a pruning rule this run is too short for)."""
    from napari.utils.notifications import show_warning

    for note in started.notes:
        show_warning(note)


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

    def add_channel(self) -> None:
        """Append the layer shown to the channels."""
        if self.layer.currentText():
            self.chosen.append(self.layer.currentText())
            self.summary.setText("channels: " + ", ".join(f"{i}: {n}" for i, n in enumerate(self.chosen)))


class PathField(QWidget):
    """A path typed in a line edit or chosen with its "..." button.

    Without ``file_filter`` the button picks a folder; with one (e.g. ``"Models (*.pt *.zip)"``) it offers a
    menu: a file of that filter, or a folder. ``edited`` is the line edit's ``textChanged``.
    """

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

    def choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, self.caption, self.text())
        if folder:
            self.edit.setText(folder)
