"""The Segment widget: segment an open volume in the background, then inspect and measure the result."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .forms import ChannelPicker
from .layers import find_layer, image_from_layers, placement
from .state import state_for


class _Progress(QObject):
    """Carries progress from the worker thread to the GUI thread (queued signal)."""

    advanced = Signal(int, int)


def _segment(model_paths: list[str], image, patch, mirror: bool, uncertainty: bool, postprocess: bool, device: str,
             report, cancel):
    from ..engine import load_model, segment_volume

    models = [load_model(path, device) for path in model_paths]
    result = segment_volume(models, image, patch_size=patch, mirror=mirror, keep_probabilities=uncertainty,
                            postprocess=postprocess, progress=report, cancel=cancel)
    return models[0], result


def _estimate(model_path: str, device: str):
    """Yield the memory estimate of each candidate patch size of a model (run folder or checkpoint), smallest first."""
    from ..config import CONFIG_FILE, RunConfig
    from ..engine import find_checkpoint, load_checkpoint, pick_device
    from ..engine.memory import candidate_patches, estimate_memory

    path = Path(model_path)
    if (path / CONFIG_FILE).is_file():
        config = RunConfig.load(path / CONFIG_FILE)
    else:
        checkpoint = find_checkpoint(path)
        config = RunConfig.from_dict(load_checkpoint(checkpoint)["config"], source=str(checkpoint))
    chosen = pick_device(device)
    for patch in candidate_patches(config.model):
        yield estimate_memory(config.model, patch, chosen, batch=config.training.batch_size,
                              mixed_precision=config.training.mixed_precision)


class SegmentWidget(QWidget):
    """Model, image layer, patch size, test-time augmentation; a Labels layer and a table of volumes."""

    def __init__(self, napari_viewer, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = state_for(napari_viewer)
        self.worker = None
        self.estimate_worker = None
        self._cancel = False
        self._progress = _Progress()
        self.result_layer = None

        self.model = QComboBox()
        self.model.setEditable(True)
        self.model.setToolTip("a run folder or a checkpoint (.pt); the model trained last is offered first")
        browse_dir, browse_file = QPushButton("Run folder..."), QPushButton("Checkpoint...")
        self.image = ChannelPicker(napari_viewer)
        self.training_patch = QCheckBox("training patch size")
        self.training_patch.setChecked(True)
        self.patch = [QSpinBox() for _ in range(3)]
        for spin in self.patch:
            spin.setRange(1, 1024)
            spin.setSingleStep(8)
            spin.setValue(64)
            spin.setEnabled(False)
        self.sizes = QComboBox()
        self.sizes.setToolTip(
            "patch sizes with the memory one sliding-window batch takes on the chosen device, in MB (10^6 bytes): the "
            "weights plus the peak of the tensors a forward pass creates, measured by the allocator on a CUDA GPU, "
            "computed without running the network elsewhere (allocator overhead not included). AP and HN models "
            "segment well at other sizes than the training one; a hypernetwork (HN) is baked for the chosen size."
        )
        self.estimate = QPushButton("Estimate memory")
        self._estimates: dict[tuple[str, str], list] = {}
        self.tta = QCheckBox("test-time augmentation (8 mirrored passes)")
        self.uncertainty = QCheckBox("uncertainty (entropy) layer")
        self.postprocess = QCheckBox("post-processing (as chosen on the validation cases)")
        self.postprocess.setChecked(True)
        self.postprocess.setToolTip("largest-connected-component steps chosen by napari-pgps postprocess; "
                                    "without postprocessing.json beside the model there is none")
        self.add_model, self.clear_models = QPushButton("Add to ensemble"), QPushButton("Clear")
        self.ensemble: list[str] = []
        self.ensemble_label = QLabel("")
        self.ensemble_label.setWordWrap(True)
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda", "mps"])
        self.run, self.cancel = QPushButton("Segment"), QPushButton("Cancel")
        self.progress = QProgressBar()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["label", "voxels", "volume (mL)"])

        model_row = QHBoxLayout()
        for button in (browse_dir, browse_file, self.add_model, self.clear_models):
            model_row.addWidget(button)
        patch_row = QHBoxLayout()
        patch_row.addWidget(self.training_patch)
        for label, spin in zip("ZYX", self.patch):
            patch_row.addWidget(QLabel(label))
            patch_row.addWidget(spin)
        form = QFormLayout()
        form.addRow("Model", self.model)
        form.addRow("", model_row)
        form.addRow("", self.ensemble_label)
        form.addRow("Image layer(s)", self.image)
        form.addRow("Patch", patch_row)
        sizes_row = QHBoxLayout()
        sizes_row.addWidget(self.sizes, 1)
        sizes_row.addWidget(self.estimate)
        form.addRow("Memory", sizes_row)
        form.addRow("", self.tta)
        form.addRow("", self.uncertainty)
        form.addRow("", self.postprocess)
        form.addRow("Device", self.device)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run)
        buttons.addWidget(self.cancel)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.table)

        browse_dir.clicked.connect(self._browse_dir)
        self.add_model.clicked.connect(self.add_to_ensemble)
        self.clear_models.clicked.connect(self.clear_ensemble)
        browse_file.clicked.connect(self._browse_file)
        self.training_patch.toggled.connect(lambda on: [s.setEnabled(not on) for s in self.patch])
        self.run.clicked.connect(self.segment)
        self.estimate.clicked.connect(self.estimate_memory)
        self.sizes.activated.connect(self._choose_size)
        self.cancel.clicked.connect(self.cancel_segmentation)
        self._progress.advanced.connect(self._advance)
        self.state.model_trained.connect(self.offer_model)
        if self.state.last_model is not None:
            self.offer_model(self.state.last_model)
        self.cancel.setEnabled(False)

    def offer_model(self, path) -> None:
        """Put ``path`` first in the model list and select it."""
        text = str(path)
        index = self.model.findText(text)
        if index >= 0:
            self.model.removeItem(index)
        self.model.insertItem(0, text)
        self.model.setCurrentIndex(0)
        self._show_training_patch(Path(text))

    def _show_training_patch(self, model: Path) -> None:
        """Show a run folder's training patch in the (disabled) patch boxes."""
        from ..config import CONFIG_FILE, RunConfig
        from ..errors import InputError

        try:
            patch = RunConfig.load(model / CONFIG_FILE).model.patch_size if model.is_dir() else None
        except InputError:
            patch = None
        for spin, value in zip(self.patch, patch or ()):
            spin.setValue(int(value))

    def estimate_memory(self) -> None:
        """Fill the patch-size chooser with each candidate size's memory (cached per model and device; background thread)."""
        from napari.qt.threading import thread_worker
        from napari.utils.notifications import show_error

        key = (self.model.currentText().strip(), self.device.currentText())
        if not key[0]:
            show_error("choose a model: a run folder or a checkpoint.")
            return
        self.sizes.clear()
        if key in self._estimates:
            for estimate in self._estimates[key]:
                self._add_size(estimate)
            return
        found: list = []
        self.estimate.setEnabled(False)
        self.status.setText("estimating memory per patch size...")

        def done() -> None:
            self.estimate.setEnabled(True)
            self.estimate_worker = None

        def finished() -> None:
            self._estimates[key] = found
            self.status.setText(f"{len(found)} patch sizes estimated ({found[0].method})" if found else "")

        def errored(exc: Exception) -> None:
            show_error(f"Memory estimate failed: {exc}")
            self.status.setText(f"failed: {exc}")

        def add(estimate) -> None:
            found.append(estimate)
            self._add_size(estimate)

        self.estimate_worker = thread_worker(_estimate, connect={"yielded": add, "returned": lambda _: finished(),
                                                                 "errored": errored, "finished": done},
                                             start_thread=False)(*key)
        self.estimate_worker.start()

    def _add_size(self, estimate) -> None:
        size = " x ".join(map(str, estimate.patch))
        self.sizes.addItem(f"{size}: {estimate.megabytes:,.0f} MB ({estimate.method})", estimate.patch)

    def _choose_size(self, index: int) -> None:
        """Segment with the chosen size: its values go to the patch boxes."""
        patch = self.sizes.itemData(index)
        self.training_patch.setChecked(False)
        for spin, value in zip(self.patch, patch):
            spin.setValue(int(value))

    def _browse_dir(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Run folder")
        if folder:
            self.offer_model(folder)

    def models(self) -> list[str]:
        """The models to segment with: the ensemble when one was put together, else the model shown."""
        return list(self.ensemble) or ([self.model.currentText().strip()] if self.model.currentText().strip() else [])

    def add_to_ensemble(self) -> None:
        """Add the model shown to the ensemble (their probabilities are averaged)."""
        text = self.model.currentText().strip()
        if text and text not in self.ensemble:
            self.ensemble.append(text)
            self.ensemble_label.setText(f"ensemble of {len(self.ensemble)}: " + ", ".join(Path(p).name for p in self.ensemble))

    def clear_ensemble(self) -> None:
        self.ensemble = []
        self.ensemble_label.setText("")

    def _browse_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Checkpoint", "", "Models (*.pt *.zip)")
        if path:
            self.offer_model(path)

    def segment(self) -> None:
        """Segment the chosen image layer (or layers, as channels) in a background thread."""
        from napari.qt.threading import thread_worker
        from napari.utils.notifications import show_error

        from ..errors import InputError

        layers = [find_layer(self.viewer, name) for name in self.image.names()]
        layer = layers[0] if layers else None
        try:
            if not self.models():
                raise InputError("choose a model: a run folder or a checkpoint.")
            if layer is None or not all(layers):
                raise InputError("open a 3D image layer to segment.")
            image = image_from_layers(layers)
        except InputError as exc:
            show_error(str(exc))
            return
        patch = None if self.training_patch.isChecked() else tuple(s.value() for s in self.patch)
        self._cancel = False
        self.progress.setRange(0, 0)
        self.status.setText(f"segmenting '{layer.name}'...")
        handlers = {"returned": lambda out: self._show(layer, image, patch, *out), "errored": self._on_error,
                    "finished": self._on_finished}
        self.worker = thread_worker(_segment, connect=handlers, start_thread=False)(
            self.models(), image, patch, self.tta.isChecked(), self.uncertainty.isChecked(), self.postprocess.isChecked(),
            self.device.currentText(), self._progress.advanced.emit, lambda: self._cancel,
        )
        self.run.setEnabled(False)
        self.cancel.setEnabled(True)
        self.worker.start()

    def cancel_segmentation(self) -> None:
        self._cancel = True

    def _advance(self, done: int, total: int) -> None:
        self.progress.setRange(0, total)
        self.progress.setValue(done)

    def _on_error(self, exc: Exception) -> None:
        from napari.utils.notifications import show_error

        from ..engine import Cancelled

        if isinstance(exc, Cancelled):
            self.status.setText("cancelled; nothing was added")
        else:
            show_error(f"Segmentation failed: {exc}")
            self.status.setText(f"failed: {exc}")

    def _on_finished(self) -> None:
        self.run.setEnabled(True)
        self.cancel.setEnabled(False)
        self.progress.setRange(0, 1)
        self.worker = None

    def _show(self, layer, image, patch, model, result) -> None:
        """Add the Labels layer (same scale and translate as the image) and fill the volumes table."""
        import pandas as pd

        labels = model.config.labels
        values = sorted(labels)
        features = pd.DataFrame({"index": values, "name": [labels[v] for v in values]})
        metadata = {"affine": image.affine, "label_names": labels, "source": layer.name, "model": model.checkpoint,
                    "nifti": (layer.metadata or {}).get("nifti", {})}
        self.result_layer = self.viewer.add_labels(
            result.labels.array, name=f"{layer.name} segmentation", features=features, metadata=metadata,
            **placement(layer),
        )
        if result.probabilities is not None:
            p = np.clip(result.probabilities, 1e-8, 1.0)
            entropy = -(p * np.log(p)).sum(axis=0) / np.log(len(values))
            self.viewer.add_image(entropy.astype(np.float32), name=f"{layer.name} uncertainty", colormap="magma",
                                  opacity=0.6, contrast_limits=(0, 1), blending="additive", **placement(layer))
        self.table.setRowCount(len(result.volumes))
        for row, (name, volume) in enumerate(result.volumes.items()):
            for column, text in enumerate((name, f"{volume['voxels']}", f"{volume['ml']:.3f}")):
                self.table.setItem(row, column, QTableWidgetItem(text))
        size = " x ".join(str(s) for s in (patch or model.patch_size))
        from ..models import architecture

        baked = ", hypernetwork baked for it" if architecture(model.config.model).bakes_to else ""
        notes = "".join(f"; {note}" for note in result.notes)
        self.status.setText(f"'{self.result_layer.name}' added (patch {size}{baked}{notes})")
