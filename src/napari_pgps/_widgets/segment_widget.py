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
from .layers import find_layer, image_from_layers, placement, source_grid
from .state import state_for

NO_REFERENCE = "(none)"
DERIVED = "napari_pgps_derived"
"""Metadata key of the layers the widget derives from a result (uncertainty, disagreement); "Segment all open
images" leaves such image layers out."""
VOLUME_COLUMNS = ["label", "voxels", "volume (mL)"]
REVIEW_COLUMNS = VOLUME_COLUMNS + ["Dice", "HD95 (mm)", "volume difference (mL)"]


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


def _segment_each(model_paths: list[str], images: list, patch, mirror: bool, uncertainty: bool, postprocess: bool,
                  device: str, report, cancelled):
    """Segment each image in turn with models loaded once; yields ``("case", i, None, None)`` as case i starts and
    ``("done", i, model, result)`` when it is done. A cancel is honoured between cases: the case under way is
    finished first. Returns how many cases were segmented."""
    from ..engine import load_model, segment_volume
    from ..errors import InputError

    models = [load_model(path, device) for path in model_paths]
    channels = models[0].config.model.in_channels
    wrong = [f"'{name}' ({image.channels})" for name, image in images if image.channels != channels]
    if wrong:
        raise InputError(f"the model takes {channels} channel(s); each open image is segmented as one image, and "
                         f"{', '.join(wrong)} differ. Segment them one by one, choosing their channels.")
    for index, (_, image) in enumerate(images):
        if index and cancelled():
            return index

        def advanced(done: int, total: int, index: int = index) -> None:
            report(index * total + done, len(images) * total)

        yield "case", index, None, None
        result = segment_volume(models, image, patch_size=patch, mirror=mirror, keep_probabilities=uncertainty,
                                postprocess=postprocess, progress=advanced)
        yield "done", index, models[0], result
    return len(images)


def _review(result: np.ndarray, reference: np.ndarray, spacing, labels: dict[int, str]):
    from .review import review_labels

    return review_labels(result, reference, spacing, labels)


def _model_config(model_path: str | Path):
    """The configuration a model (run folder, checkpoint or model package) was trained with."""
    from ..config import CONFIG_FILE, RunConfig
    from ..engine import find_checkpoint, load_checkpoint

    path = Path(model_path)
    if (path / CONFIG_FILE).is_file():
        return RunConfig.load(path / CONFIG_FILE)
    checkpoint = find_checkpoint(path)
    return RunConfig.from_dict(load_checkpoint(checkpoint)["config"], source=str(checkpoint))


def _estimate(model_path: str, device: str):
    """Yield the memory estimate of each candidate patch size of a model (run folder, checkpoint or package), smallest
    first."""
    from ..engine import pick_device
    from ..engine.memory import candidate_patches, estimate_memory

    config = _model_config(model_path)
    chosen = pick_device(device)
    for patch in candidate_patches(config.model):
        yield estimate_memory(config.model, patch, chosen, batch=config.training.batch_size,
                              mixed_precision=config.training.mixed_precision)


class SegmentWidget(QWidget):
    """Model, image layer, patch size, test-time augmentation; a Labels layer and a table of volumes.

    "Segment all open images" segments every open image layer in turn with the model loaded once. "Compare with"
    reviews a result against a reference labels layer: Dice, HD95 and volume difference per label in the table,
    and a disagreement layer (1 false positive, 2 false negative) placed as the result.
    """

    def __init__(self, napari_viewer, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = state_for(napari_viewer)
        self.worker = None
        self.estimate_worker = None
        self.review_worker = None
        self.results: list = []
        """The Labels layers of the last run (one, or one per image of "Segment all open images")."""
        self._cancel = False
        self._batch = False
        self._progress = _Progress()
        self.result_layer = None
        self.review = None
        """The last comparison with a reference (:class:`~napari_pgps._widgets.review.Review`)."""
        self.disagreement_layer = None

        self.model = QComboBox()
        self.model.setEditable(True)
        self.model.setToolTip("a run folder, a checkpoint (.pt) or a model package (.zip, napari-pgps export); the model "
                                 "trained last is offered first")
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
        self.tta = QCheckBox("test-time augmentation (mirrored passes, if trained with mirroring)")
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
        self.run_all = QPushButton("Segment all open images")
        self.run_all.setToolTip("load the model once and segment every open image layer in turn (not the uncertainty "
                                "layers), each as one image; Cancel stops after the case under way")
        self.compare_with = QComboBox()
        self.compare_with.setToolTip("a labels layer to review the result against (same shape and placement): per "
                                     "label Dice, HD95 and volume difference, and a disagreement layer")
        self.compare_result = QComboBox()
        self.compare_result.setToolTip("the segmentation to compare with the reference")
        self.compare_button = QPushButton("Compare")
        self.progress = QProgressBar()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.table = QTableWidget(0, len(VOLUME_COLUMNS))
        self.table.setHorizontalHeaderLabels(VOLUME_COLUMNS)

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
        form.addRow("Compare with", self.compare_with)
        compare_row = QHBoxLayout()
        compare_row.addWidget(self.compare_result, 1)
        compare_row.addWidget(self.compare_button)
        form.addRow("Result layer", compare_row)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run)
        buttons.addWidget(self.run_all)
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
        self.run_all.clicked.connect(self.segment_all)
        self.compare_button.clicked.connect(self.compare)
        napari_viewer.layers.events.inserted.connect(self._refresh_labels_layers)
        napari_viewer.layers.events.removed.connect(self._refresh_labels_layers)
        self._refresh_labels_layers()
        self.estimate.clicked.connect(self.estimate_memory)
        self.sizes.activated.connect(self._choose_size)
        self.model.activated.connect(lambda _: self._show_training_patch(Path(self.model.currentText().strip())))
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
        """Show the training patch of a run folder, checkpoint or model package in the (disabled) patch boxes."""
        from ..errors import InputError

        try:
            patch = _model_config(model).model.patch_size
        except InputError:  # not (yet) a model: the boxes keep their values
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

    def _patch(self):
        return None if self.training_patch.isChecked() else tuple(s.value() for s in self.patch)

    def _start(self, worker, status: str, batch: bool) -> None:
        self._cancel, self._batch = False, batch
        self.progress.setRange(0, 0)
        self.progress.setFormat("%p%")
        self.status.setText(status)
        self.worker = worker
        self.run.setEnabled(False)
        self.run_all.setEnabled(False)
        self.cancel.setEnabled(True)
        worker.start()

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
        patch = self._patch()
        handlers = {"returned": lambda out: self._show(layer, image, patch, *out), "errored": self._on_error,
                    "finished": self._on_finished}
        worker = thread_worker(_segment, connect=handlers, start_thread=False)(
            self.models(), image, patch, self.tta.isChecked(), self.uncertainty.isChecked(), self.postprocess.isChecked(),
            self.device.currentText(), self._progress.advanced.emit, lambda: self._cancel,
        )
        self._start(worker, f"segmenting '{layer.name}'...", batch=False)

    def images_to_segment(self) -> list:
        """The open image layers "Segment all open images" takes: 3D (or channels x 3D), not derived from a result."""
        from napari.layers import Image

        return [layer for layer in self.viewer.layers
                if isinstance(layer, Image) and layer.ndim in (3, 4) and not getattr(layer, "rgb", False)
                and not (layer.metadata or {}).get(DERIVED)]

    def segment_all(self) -> None:
        """Segment every open image layer in turn (model loaded once) in a background thread; a Labels layer each."""
        from napari.qt.threading import thread_worker
        from napari.utils.notifications import show_error

        from ..errors import InputError

        layers = self.images_to_segment()
        try:
            if not self.models():
                raise InputError("choose a model: a run folder or a checkpoint.")
            if not layers:
                raise InputError("open a 3D image layer to segment.")
            # copies: the layers stay as they are
            images = [(layer.name, image_from_layers([layer])) for layer in layers]
        except InputError as exc:
            show_error(str(exc))
            return
        patch = self._patch()
        self.results = []
        self._show_columns(VOLUME_COLUMNS)
        handlers = {"yielded": lambda item: self._case(layers, images, patch, *item),
                    "returned": lambda count: self._all_done(count, len(images)), "errored": self._on_error,
                    "finished": self._on_finished}
        worker = thread_worker(_segment_each, connect=handlers, start_thread=False)(
            self.models(), images, patch, self.tta.isChecked(), self.uncertainty.isChecked(),
            self.postprocess.isChecked(), self.device.currentText(), self._progress.advanced.emit, lambda: self._cancel,
        )
        self._start(worker, f"segmenting {len(images)} image(s): loading the model...", batch=True)

    def _case(self, layers, images, patch, kind: str, index: int, model, result) -> None:
        name, total = images[index][0], len(images)
        if kind == "case":
            self.progress.setFormat(f"case {index + 1} of {total}: %p%")
            stopping = "; stopping after this case" if self._cancel else ""
            self.status.setText(f"case {index + 1} of {total}: segmenting '{name}'...{stopping}")
            return
        layer = self._add_result(layers[index], images[index][1], model, result)
        self.result_layer = layer
        self.results.append(layer)
        self._add_volume_rows(result.volumes, prefix=f"{name}: ")

    def _all_done(self, count: int, total: int) -> None:
        names = ", ".join(f"'{layer.name}'" for layer in self.results)
        if count < total:
            self.status.setText(f"cancelled after case {count} of {total}; kept {names}")
        else:
            self.status.setText(f"{count} of {total} images segmented: {names}")

    def cancel_segmentation(self) -> None:
        self._cancel = True
        if self.worker is not None and self._batch:
            self.status.setText(self.status.text() + "; stopping after this case")

    def _advance(self, done: int, total: int) -> None:
        self.progress.setRange(0, total)
        self.progress.setValue(done)

    def _on_error(self, exc: Exception) -> None:
        from napari.utils.notifications import show_error

        from ..engine import Cancelled

        if isinstance(exc, Cancelled):
            self.status.setText("cancelled; nothing was added")
            return
        kept = ""
        if self._batch and self.results:
            kept = "; kept " + ", ".join(f"'{layer.name}'" for layer in self.results)
        show_error(f"Segmentation failed: {exc}")
        self.status.setText(f"failed: {exc}{kept}")

    def _on_finished(self) -> None:
        self.run.setEnabled(True)
        self.run_all.setEnabled(True)
        self.cancel.setEnabled(False)
        self.progress.setRange(0, 1)
        self.progress.setFormat("%p%")
        self.worker = None
        self._batch = False

    def _add_result(self, layer, image, model, result):
        """Add the Labels layer of ``result`` placed over ``layer`` (and its uncertainty layer if asked for)."""
        import pandas as pd

        from ..engine.metrics import entropy_map

        labels = model.config.labels
        values = sorted(labels)
        features = pd.DataFrame({"index": values, "name": [labels[v] for v in values]})
        metadata = {"affine": image.affine, "label_names": labels, "source": layer.name, "model": model.checkpoint,
                    **source_grid(layer)}
        added = self.viewer.add_labels(
            result.labels.array, name=f"{layer.name} segmentation", features=features, metadata=metadata,
            **placement(layer),
        )
        if result.probabilities is not None:
            self.viewer.add_image(entropy_map(result.probabilities), name=f"{layer.name} uncertainty",
                                  colormap="magma", opacity=0.6, contrast_limits=(0, 1), blending="additive",
                                  metadata={DERIVED: "uncertainty", "source": layer.name}, **placement(layer))
        self.compare_result.setCurrentText(added.name)
        return added

    def _show_columns(self, columns: list[str]) -> None:
        self.table.setRowCount(0)
        self.table.setColumnCount(len(columns))
        self.table.setHorizontalHeaderLabels(columns)

    def _add_volume_rows(self, volumes: dict, prefix: str = "") -> None:
        for name, volume in volumes.items():
            row = self.table.rowCount()
            self.table.insertRow(row)
            for column, text in enumerate((prefix + name, f"{volume['voxels']}", f"{volume['ml']:.3f}")):
                self.table.setItem(row, column, QTableWidgetItem(text))

    def _show(self, layer, image, patch, model, result) -> None:
        """Add the Labels layer (placed as the image) and fill the volumes table; review it if a reference is chosen."""
        self.result_layer = self._add_result(layer, image, model, result)
        self.results = [self.result_layer]
        self._show_columns(VOLUME_COLUMNS)
        self._add_volume_rows(result.volumes)
        size = " x ".join(str(s) for s in (patch or model.patch_size))
        from ..models import architecture

        baked = ", hypernetwork baked for it" if architecture(model.config.model).bakes_to else ""
        notes = "".join(f"; {note}" for note in result.notes)
        self.status.setText(f"'{self.result_layer.name}' added (patch {size}{baked}{notes})")
        reference = self.reference_layer()
        if reference is not None:
            self.compare_layers(self.result_layer, reference)

    # -- review against a reference --------------------------------------------------------------------------
    def _refresh_labels_layers(self, *_) -> None:
        """Offer the open Labels layers as references and as results to compare (not the disagreement layers)."""
        from napari.layers import Labels

        names = [layer.name for layer in self.viewer.layers
                 if isinstance(layer, Labels) and not (layer.metadata or {}).get(DERIVED)]
        for combo, first in ((self.compare_with, [NO_REFERENCE]), (self.compare_result, [])):
            current = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(first + names)
            if current and combo.findText(current) >= 0:
                combo.setCurrentText(current)
            combo.blockSignals(False)

    def reference_layer(self):
        """The labels layer chosen under "Compare with", or ``None``."""
        name = self.compare_with.currentText()
        return None if name in ("", NO_REFERENCE) else find_layer(self.viewer, name)

    def compare(self) -> None:
        """Compare the chosen result layer with the reference chosen under "Compare with"."""
        from napari.utils.notifications import show_error

        result, reference = find_layer(self.viewer, self.compare_result.currentText()), self.reference_layer()
        if result is None or reference is None:
            show_error("choose a result layer and a reference labels layer under 'Compare with'.")
            return
        self.compare_layers(result, reference)

    def compare_layers(self, result_layer, reference_layer) -> None:
        """Per-label Dice, HD95 and volume difference of ``result_layer`` against ``reference_layer`` into the
        table, and a disagreement layer placed as the result (background thread). Layers that differ in shape or
        placement are refused with a notification; neither layer is changed."""
        from napari.qt.threading import thread_worker
        from napari.utils.notifications import show_error

        from .layers import label_names_of, world_matrix
        from .review import placement_difference, spacing_of

        problem = placement_difference(result_layer, reference_layer)
        if problem is None and result_layer is reference_layer:
            problem = f"'{result_layer.name}' is the reference itself; choose another layer to compare."
        if problem is None and self.review_worker is not None:
            problem = "a comparison is under way; wait for it to finish."
        if problem is None:
            for layer in (result_layer, reference_layer):
                if not np.issubdtype(np.asarray(layer.data).dtype, np.integer):
                    problem = f"'{layer.name}' holds {np.asarray(layer.data).dtype} values; labels are whole numbers."
        if problem is not None:
            show_error(problem)
            self.status.setText(problem)
            return
        result = np.array(result_layer.data, copy=True)  # copies: the layers are read, never changed
        reference = np.array(reference_layer.data, copy=True)
        labels = label_names_of(reference_layer) | label_names_of(result_layer)
        spacing = spacing_of(world_matrix(result_layer))

        def done() -> None:
            self.compare_button.setEnabled(True)
            self.review_worker = None

        def errored(exc: Exception) -> None:
            show_error(f"Comparison failed: {exc}")
            self.status.setText(f"comparison failed: {exc}")

        self.compare_button.setEnabled(False)
        self.status.setText(f"comparing '{result_layer.name}' with '{reference_layer.name}'...")
        self.review_worker = thread_worker(
            _review, connect={"returned": lambda review: self._show_review(result_layer, reference_layer, review),
                              "errored": errored, "finished": done},
            start_thread=False,
        )(result, reference, spacing, labels)
        self.review_worker.start()

    def _show_review(self, result_layer, reference_layer, review) -> None:
        import pandas as pd
        from napari.utils.colormaps import DirectLabelColormap

        from .review import DISAGREEMENT_COLORS, DISAGREEMENT_NAMES

        self.review = review
        self._show_columns(REVIEW_COLUMNS)

        def number(value: float, digits: int) -> str:
            return f"{value:.{digits}f}" if np.isfinite(value) else "n/a"

        for row, label in enumerate(review.labels):
            self.table.insertRow(row)
            texts = (label.name, f"{label.voxels}", f"{label.ml:.3f}", number(label.dice, 3), number(label.hd95, 2),
                     f"{label.ml_difference:+.3f}")
            for column, text in enumerate(texts):
                self.table.setItem(row, column, QTableWidgetItem(text))
        self.table.resizeColumnsToContents()
        source = (result_layer.metadata or {}).get("source") or result_layer.name
        name = f"{source} disagreement"
        old = find_layer(self.viewer, name)
        if old is not None and (old.metadata or {}).get(DERIVED) == "disagreement":
            self.viewer.layers.remove(old)
        values = sorted(DISAGREEMENT_NAMES)
        features = pd.DataFrame({"index": values, "name": [DISAGREEMENT_NAMES[v] for v in values]})
        self.disagreement_layer = self.viewer.add_labels(
            review.disagreement, name=name, features=features, opacity=0.7,
            colormap=DirectLabelColormap(color_dict=DISAGREEMENT_COLORS),
            metadata={DERIVED: "disagreement", "source": source, "result": result_layer.name,
                      "reference": reference_layer.name, "label_names": DISAGREEMENT_NAMES,
                      **source_grid(result_layer)},
            **placement(result_layer),
        )
        self.status.setText(
            f"'{result_layer.name}' against '{reference_layer.name}' (spacing "
            + " x ".join(f"{s:g}" for s in review.spacing)
            + f" mm): {review.false_positives} false-positive and {review.false_negatives} false-negative voxels in "
            f"'{self.disagreement_layer.name}'"
        )
