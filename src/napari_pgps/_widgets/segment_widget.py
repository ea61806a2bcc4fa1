"""The Segment widget: segment open volumes in the background and measure the result (the Review widget compares
it with a reference)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from magicgui.widgets import CheckBox, ComboBox, PushButton, SpinBox
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QComboBox, QLabel, QProgressBar, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

from ..config import DEVICES
from .forms import ChannelPicker, ModelChoice, form, qt_field, row
from .jobs import Job
from .layers import find_layer, image_from_layers, placement, source_grid
from .state import DERIVED, state_for

VOLUME_COLUMNS = ["label", "voxels", "volume (mL)"]


class _Progress(QObject):
    """Carries progress from the worker thread to the GUI thread (queued signal)."""

    advanced = Signal(int, int)


def _segment(model_paths: list[str], image, patch, mirror: bool, uncertainty: bool, postprocess: bool, device: str,
             report, control):
    """Segment one image with the models loaded; a stop request cancels it before its next window batch."""
    from ..engine import load_model, segment_volume

    models = [load_model(path, device) for path in model_paths]
    result = segment_volume(models, image, patch_size=patch, mirror=mirror, keep_probabilities=uncertainty,
                            postprocess=postprocess, progress=report, cancel=lambda: control.stop_requested)
    return models[0], result


def _segment_each(model_paths: list[str], images: list, patch, mirror: bool, uncertainty: bool, postprocess: bool,
                  device: str, report, control):
    """Segment each image in turn with models loaded once; yields ``("case", i, None, None)`` as case i starts and
    ``("done", i, model, result)`` when it is done. A stop request is honoured between cases: the case under way is
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
        if index and control.stop_requested:
            return index

        def advanced(done: int, total: int, index: int = index) -> None:
            report(index * total + done, len(images) * total)

        yield "case", index, None, None
        result = segment_volume(models, image, patch_size=patch, mirror=mirror, keep_probabilities=uncertainty,
                                postprocess=postprocess, progress=advanced)
        yield "done", index, models[0], result
    return len(images)


def _estimate(model_path: str, device: str):
    """Yield the memory estimate of each candidate patch size of a model (run folder, checkpoint or package), smallest
    first."""
    from ..engine import model_config, pick_device
    from ..engine.memory import candidate_patches, estimate_memory

    config = model_config(model_path)
    chosen = pick_device(device)
    for patch in candidate_patches(config.model):
        yield estimate_memory(config.model, patch, chosen, batch=config.training.batch_size,
                              mixed_precision=config.training.mixed_precision)


class SegmentWidget(QWidget):
    """Model, image layer, patch size, test-time augmentation; a Labels layer and a table of volumes.

    "Segment all open images" segments every open image layer in turn with the model loaded once. Each result is
    offered to the Review widget (``state.segmented``).
    """

    def __init__(self, napari_viewer, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = state_for(napari_viewer)
        self.results: list = []
        """The Labels layers of the last run (one, or one per image of "Segment all open images")."""
        self.result_layer = None
        self._batch = False
        self._progress = _Progress()
        self._estimates: dict[tuple[str, str], list] = {}
        self.ensemble: list[str] = []

        self.model = ModelChoice("a run folder, a checkpoint (.pt) or a model package (.zip, napari-pgps export); the "
                                 "model trained last is offered first")
        add_model, clear_models = PushButton(text="Add to ensemble"), PushButton(text="Clear")
        self.ensemble_label = QLabel("")
        self.ensemble_label.setWordWrap(True)
        self._ensemble_row = qt_field(self.ensemble_label)
        self._ensemble_row.visible = False  # shown once an ensemble is put together
        self.image = ChannelPicker(napari_viewer)
        training_patch = CheckBox(text="training patch size", value=True)
        patch = [SpinBox(label=axis, min=1, max=1024, step=8, value=64, enabled=False) for axis in "ZYX"]
        self.sizes = QComboBox()
        self.sizes.setToolTip(
            "patch sizes with the memory one sliding-window batch takes on the chosen device, in MB (10^6 bytes): the "
            "weights plus the peak of the tensors a forward pass creates, measured by the allocator on a CUDA GPU, "
            "computed without running the network elsewhere (allocator overhead not included). AP and HN models "
            "segment well at other sizes than the training one; a hypernetwork (HN) is baked for the chosen size."
        )
        estimate = PushButton(text="Estimate memory")
        tta = CheckBox(text="test-time augmentation (mirrored passes, if trained with mirroring)")
        uncertainty = CheckBox(text="uncertainty (entropy) layer")
        postprocess = CheckBox(text="post-processing (as chosen on the validation cases)", value=True,
                               tooltip="largest-connected-component steps chosen by napari-pgps postprocess; a model "
                                       "it was not run for has none")
        device = ComboBox(label="Device", choices=list(DEVICES))
        run, run_all, cancel = PushButton(text="Segment"), PushButton(text="Segment all open images"), PushButton(
            text="Cancel")
        export = PushButton(text="Export table...", enabled=False,
                            tooltip="save the volumes of every result shown as CSV, a row per case and label (the "
                                    "table of napari-pgps segment --report)")
        run_all.tooltip = ("load the model once and segment every open image layer in turn (not the uncertainty "
                           "layers), each as one image; Cancel stops after the case under way")
        self.form = form(
            qt_field(self.model, "Model"),
            row(qt_field(self.model.browse_folder), qt_field(self.model.browse_file), add_model, clear_models),
            self._ensemble_row,
            qt_field(self.image, "Image layer(s)"),
            row(training_patch, *patch, label="Patch", labels=True),
            row(qt_field(self.sizes), estimate, label="Memory"),
            tta, uncertainty, postprocess, device,
        )
        self.training_patch, self.patch = training_patch.native, [spin.native for spin in patch]
        self.estimate, self.tta, self.uncertainty = estimate.native, tta.native, uncertainty.native
        self.postprocess, self.device = postprocess.native, device.native
        self.run, self.run_all, self.cancel, self.export = run.native, run_all.native, cancel.native, export.native
        self.progress = QProgressBar()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.table = QTableWidget(0, len(VOLUME_COLUMNS))
        self.table.setHorizontalHeaderLabels(VOLUME_COLUMNS)
        layout = QVBoxLayout(self)
        self._report: list[tuple[str, object, dict]] = []  # (case, its labels Volume, the model's label names)
        for widget in (self.form.native, row(run, run_all, cancel).native, self.progress, self.status, self.table,
                       export.native):
            layout.addWidget(widget)

        self.job = Job("Segmentation", self.status, self.progress, buttons=[self.run, self.run_all],
                       stop_buttons=[self.cancel], cancelled="cancelled; nothing was added")
        self.estimate_job = Job("Memory estimate", self.status, buttons=[self.estimate])
        self.model.chosen.connect(self.offer_model)
        self.model.activated.connect(lambda _: self._show_training_patch(Path(self.model.path())))
        add_model.clicked.connect(self.add_to_ensemble)
        clear_models.clicked.connect(self.clear_ensemble)
        self.training_patch.toggled.connect(lambda on: [s.setEnabled(not on) for s in self.patch])
        estimate.clicked.connect(self.estimate_memory)
        self.sizes.activated.connect(self._choose_size)
        run.clicked.connect(self.segment)
        run_all.clicked.connect(self.segment_all)
        cancel.clicked.connect(self.cancel_segmentation)
        export.clicked.connect(self.choose_report_file)
        self._progress.advanced.connect(self._advance)
        self.state.model_trained.connect(self.offer_model)
        if self.state.last_model is not None:
            self.offer_model(self.state.last_model)

    @property
    def worker(self):
        """napari's worker while segmenting, ``None`` when idle."""
        return self.job.worker

    @property
    def estimate_worker(self):
        """napari's worker while estimating memory, ``None`` when idle."""
        return self.estimate_job.worker

    # -- the model ------------------------------------------------------------------
    def offer_model(self, path) -> None:
        """Put ``path`` first in the model list, select it and show its training patch."""
        self.model.offer(path)
        self._show_training_patch(Path(path))

    def _show_training_patch(self, model: Path) -> None:
        """Show the training patch of a run folder, checkpoint or model package in the (disabled) patch boxes."""
        from ..engine import model_config
        from ..errors import InputError

        try:
            patch = model_config(model).model.patch_size
        except InputError:  # not (yet) a model: the boxes keep their values
            patch = None
        for spin, value in zip(self.patch, patch or ()):
            spin.setValue(int(value))

    def models(self) -> list[str]:
        """The models to segment with: the ensemble when one was put together, else the model shown."""
        return list(self.ensemble) or ([self.model.path()] if self.model.path() else [])

    def add_to_ensemble(self) -> None:
        """Add the model shown to the ensemble (their probabilities are averaged)."""
        text = self.model.path()
        if text and text not in self.ensemble:
            self.ensemble.append(text)
            self.ensemble_label.setText(f"ensemble of {len(self.ensemble)}: " + ", ".join(Path(p).name for p in self.ensemble))
            self._ensemble_row.visible = True

    def clear_ensemble(self) -> None:
        self.ensemble = []
        self.ensemble_label.setText("")
        self._ensemble_row.visible = False

    # -- the patch size ---------------------------------------------------------------
    def estimate_memory(self) -> None:
        """Fill the patch-size chooser with each candidate size's memory (cached per model and device; background thread)."""
        from napari.utils.notifications import show_error

        key = (self.model.path(), self.device.currentText())
        if not key[0]:
            show_error("choose a model: a run folder or a checkpoint.")
            return
        self.sizes.clear()
        if key in self._estimates:
            for estimate in self._estimates[key]:
                self._add_size(estimate)
            return
        found: list = []

        def add(estimate) -> None:
            found.append(estimate)
            self._add_size(estimate)

        def finished(_) -> None:
            self._estimates[key] = found
            self.status.setText(f"{len(found)} patch sizes estimated ({found[0].method})" if found else "")

        self.status.setText("estimating memory per patch size...")
        self.estimate_job.start(_estimate, *key, yielded=add, returned=finished)

    def _add_size(self, estimate) -> None:
        size = " x ".join(map(str, estimate.patch))
        self.sizes.addItem(f"{size}: {estimate.megabytes:,.0f} MB ({estimate.method})", estimate.patch)

    def _choose_size(self, index: int) -> None:
        """Segment with the chosen size: its values go to the patch boxes."""
        patch = self.sizes.itemData(index)
        self.training_patch.setChecked(False)
        for spin, value in zip(self.patch, patch):
            spin.setValue(int(value))

    def _patch(self):
        return None if self.training_patch.isChecked() else tuple(s.value() for s in self.patch)

    # -- segmenting -------------------------------------------------------------------
    def _settings(self) -> tuple:
        """What every segmentation takes after its images: patch, mirroring, uncertainty, post-processing, device,
        the progress report and the stop requests."""
        return (self._patch(), self.tta.isChecked(), self.uncertainty.isChecked(), self.postprocess.isChecked(),
                self.device.currentText(), self._progress.advanced.emit, self.job.control)

    def segment(self) -> None:
        """Segment the chosen image layer (or layers, as channels) in a background thread."""
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
        self._batch = False
        self.status.setText(f"segmenting '{layer.name}'...")
        self.job.start(_segment, self.models(), image, *self._settings(),
                       returned=lambda out: self._show(layer, image, patch, *out))

    def images_to_segment(self) -> list:
        """The open image layers "Segment all open images" takes: 3D (or channels x 3D), not derived from a result."""
        from napari.layers import Image

        return [layer for layer in self.viewer.layers
                if isinstance(layer, Image) and layer.ndim in (3, 4) and not getattr(layer, "rgb", False)
                and not (layer.metadata or {}).get(DERIVED)]

    def segment_all(self) -> None:
        """Segment every open image layer in turn (model loaded once) in a background thread; a Labels layer each."""
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
        self.results = []
        self._clear_table()
        self._batch = True
        self.status.setText(f"segmenting {len(images)} image(s): loading the model...")
        self.job.start(_segment_each, self.models(), images, *self._settings(),
                       yielded=lambda item: self._case(layers, images, *item),
                       returned=lambda count: self._all_done(count, len(images)), failed=self._say_kept)

    def _case(self, layers, images, kind: str, index: int, model, result) -> None:
        name, total = images[index][0], len(images)
        if kind == "case":
            self.progress.setFormat(f"case {index + 1} of {total}: %p%")
            stopping = "; stopping after this case" if self.job.control.stop_requested else ""
            self.status.setText(f"case {index + 1} of {total}: segmenting '{name}'...{stopping}")
            return
        layer = self._add_result(layers[index], images[index][1], model, result)
        self.result_layer = layer
        self.results.append(layer)
        self._add_volume_rows(name, model, result, prefix=f"{name}: ")
        self.state.segmented.emit(layer, False)

    def _all_done(self, count: int, total: int) -> None:
        self.progress.setFormat("%p%")
        names = ", ".join(f"'{layer.name}'" for layer in self.results)
        if count < total:
            self.status.setText(f"cancelled after case {count} of {total}; kept {names}")
        else:
            self.status.setText(f"{count} of {total} images segmented: {names}")

    def _say_kept(self, _) -> None:
        """After a failed batch: the results made before it stay."""
        if self.results:
            self.status.setText(self.status.text() + "; kept " + ", ".join(f"'{layer.name}'" for layer in self.results))

    def cancel_segmentation(self) -> None:
        """Cancel the segmentation under way (a batch after the case under way)."""
        if self.job.running:
            self.job.stop()
            if self._batch:
                self.status.setText(self.status.text() + "; stopping after this case")

    def _advance(self, done: int, total: int) -> None:
        self.job.show_progress(self.progress.format(), done, total)

    # -- results ----------------------------------------------------------------------
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
        return added

    def _clear_table(self) -> None:
        self.table.setRowCount(0)
        self._report = []
        self.export.setEnabled(False)

    def _add_volume_rows(self, case: str, model, result, prefix: str = "") -> None:
        self._report.append((case, result.labels, model.config.labels))
        self.export.setEnabled(True)
        for name, volume in result.volumes.items():
            row = self.table.rowCount()
            self.table.insertRow(row)
            for column, text in enumerate((prefix + name, f"{volume['voxels']}", f"{volume['ml']:.3f}")):
                self.table.setItem(row, column, QTableWidgetItem(text))

    def _show(self, layer, image, patch, model, result) -> None:
        """Add the Labels layer (placed as the image) and fill the volumes table; offer it to the Review widget."""
        from ..models import architecture

        self.result_layer = self._add_result(layer, image, model, result)
        self.results = [self.result_layer]
        self._clear_table()
        self._add_volume_rows(layer.name, model, result)
        size = " x ".join(str(s) for s in (patch or model.patch_size))
        baked = ", hypernetwork baked for it" if architecture(model.config.model).bakes_to else ""
        notes = "".join(f"; {note}" for note in result.notes)
        self.status.setText(f"'{self.result_layer.name}' added (patch {size}{baked}{notes})")
        self.state.segmented.emit(self.result_layer, True)

    # -- the volumes table as a report ------------------------------------------------------
    def choose_report_file(self) -> None:
        """Ask where to save the volumes table (the file dialog asks before replacing a file), then save it."""
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getSaveFileName(self, "Save the volumes table", "volumes.csv", "CSV (*.csv)")
        if path:
            self.export_report(path)

    def export_report(self, path: str | Path) -> Optional[Path]:
        """Write the volumes of every result in the table as CSV (:func:`napari_pgps.tasks.report.volume_report`'s
        rows: case, label, value, voxels, volume in mL; Dice and HD95 stay empty: the Review widget scores against a
        reference). Returns the file written, or ``None`` with the reason in the status line."""
        from napari.utils.notifications import show_error

        from ..errors import InputError
        from ..tasks.report import volume_report, write_volume_report

        if not self._report:
            self.status.setText("nothing to export: segment an image first")
            return None
        rows = [row for case, labels, names in self._report for row in volume_report([(case, labels, None)], names)]
        try:
            written = write_volume_report(rows, path)
        except (InputError, OSError) as exc:
            show_error(f"{path}: the table could not be saved ({exc})")
            return None
        self.status.setText(f"volumes of {len(self._report)} case(s) saved to {written}")
        return written
