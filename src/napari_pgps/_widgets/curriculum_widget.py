"""The Curriculum widget: design a patch-size schedule and see it before training."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Optional

from magicgui.widgets import CheckBox, ComboBox, PushButton, SpinBox
from qtpy.QtWidgets import QFileDialog, QLabel, QVBoxLayout, QWidget

from ..config import RunConfig
from ..curriculum import SCHEDULES, Schedule, schedule_for
from ..data.geometry import canonical_grid, reverse_axes
from ..errors import InputError
from ..models.architectures import patch_poolings
from ..models.planning import plan_patch_size, plan_unet
from .forms import form, row
from .layers import world_matrix
from .plots import PlotCanvas
from .state import state_for

MODE_NAMES = {
    "constant": "Constant (baseline)",
    "pgps-efficiency": "PGPS Efficiency",
    "pgps-performance": "PGPS Performance",
    "rpss": "RPSS (random stage per step)",
    "augment": "Patch-size augmentation",
}


class CurriculumWidget(QWidget):
    """Mode, final patch, epochs, steps and batch; a live preview of patch and batch over the epochs."""

    def __init__(self, napari_viewer, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = state_for(napari_viewer)
        self.spacing = (1.0, 1.0, 1.0)
        self.schedule: Optional[Schedule] = None

        mode = ComboBox(label="Mode", choices=[(MODE_NAMES[key], key) for key in SCHEDULES])
        pdl = CheckBox(text="add cases by similarity (PDL)")
        patch = [SpinBox(label=axis, min=8, max=512, value=8) for axis in "ZYX"]
        propose = PushButton(text="Propose from image layer")
        epochs = SpinBox(label="Epochs", min=1, max=10000, value=25)
        iterations = SpinBox(label="Steps per epoch", min=1, max=10000, value=50)
        batch = SpinBox(label="Batch size", min=1, max=256, value=2)
        save, load = PushButton(text="Save YAML..."), PushButton(text="Load YAML...")
        self.form = form(mode, pdl, row(*patch, label="Final patch", labels=True), propose, epochs, iterations, batch)
        self.mode, self.pdl, self.propose = mode.native, pdl.native, propose.native
        self.patch = [spin.native for spin in patch]
        self.epochs, self.iterations, self.batch = epochs.native, iterations.native, batch.native
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.preview = PlotCanvas(self._draw_preview, height=2.6)

        layout = QVBoxLayout(self)
        layout.addWidget(self.form.native)
        layout.addWidget(self.preview)
        layout.addWidget(self.summary)
        layout.addWidget(row(save, load).native)
        layout.addStretch()

        self.set_config(self.state.config)
        for field in (mode, pdl, *patch, epochs, iterations, batch):
            field.changed.connect(self._changed)
        propose.clicked.connect(self.propose_from_layer)
        save.clicked.connect(self._ask_save)
        load.clicked.connect(self._ask_load)
        self._changed()

    # -- config <-> form ------------------------------------------------------
    def set_config(self, config: RunConfig) -> None:
        """Show ``config``'s curriculum settings in the form."""
        self.mode.setCurrentIndex(max(0, self.mode.findData(config.curriculum.schedule)))
        self.pdl.setChecked(config.curriculum.pdl.enabled)
        if config.model.patch_size:
            for spin, value in zip(self.patch, config.model.patch_size):
                spin.setValue(int(value))
        if config.model.spacing:
            self.spacing = tuple(config.model.spacing)
        self.epochs.setValue(config.training.epochs or 25)
        self.iterations.setValue(config.training.iterations_per_epoch or 50)
        self.batch.setValue(config.training.batch_size)

    def config(self) -> RunConfig:
        """The shared config with this form's values."""
        config = copy.deepcopy(self.state.config)
        config.curriculum.schedule = self.mode.currentData()
        config.curriculum.pdl.enabled = self.pdl.isChecked()
        config.model.patch_size = tuple(s.value() for s in self.patch)
        # the network is planned again from the patch when training starts
        config.model.kernel_sizes = config.model.strides = config.model.channels = None
        config.training.epochs = self.epochs.value()
        config.training.iterations_per_epoch = self.iterations.value()
        config.training.batch_size = self.batch.value()
        return config

    def _changed(self, *_) -> None:
        config = self.config()
        self.state.config = config  # no signal: the Train widget reads it when training starts
        final = config.model.patch_size
        try:
            plan = plan_unet(final, self.spacing)  # the network as training will plan it
            model = dataclasses.replace(config.model, kernel_sizes=plan.kernel_sizes, strides=plan.strides)
            self.schedule = schedule_for(dataclasses.replace(config, model=model))
        except InputError as exc:
            self.schedule = None
            self.summary.setText(f"<span style='color:#e06c75'>{exc}</span>")
        else:
            steps = config.training.epochs * config.training.iterations_per_epoch
            poolings = patch_poolings(model)
            self.summary.setText(
                f"{len(self.schedule.stages)} stage(s), {steps} steps; compute relative to constant: "
                f"<b>{self.schedule.relative_voxels():.2f}</b> (poolings {poolings[0]}, {poolings[1]}, {poolings[2]})"
            )
        self.preview.mark_stale()

    def _draw_preview(self, figure) -> None:
        figure.clear()  # redrawn only when the form changes, not while training
        ax = figure.add_subplot(111)
        if self.schedule is None:
            ax.text(0.5, 0.5, "no schedule", ha="center", va="center")
            return
        edges = [0]
        for stage in self.schedule.stages:
            edges.append(edges[-1] + stage.epochs)
        sources = self.schedule.stages
        if self.schedule.draws != "stages":
            ax.set_title("each step draws a random patch; nominal size shown", fontsize=8)
        for axis, name in enumerate("ZYX"):
            ys = [s.patch[axis] for s in sources] + [sources[-1].patch[axis]]
            ax.step(edges, ys, where="post", label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel("patch (voxels)")
        ax.legend(loc="lower right", fontsize=7)
        twin = ax.twinx()
        twin.step(edges, [s.batch for s in sources] + [sources[-1].batch], where="post", color="black", linestyle="--")
        twin.set_ylabel("batch (dashed)")

    # -- actions ----------------------------------------------------------------
    def propose_from_layer(self) -> None:
        """Plan the final patch (nnU-Net style) from the selected image layer's shape and scale."""
        layer = self._image_layer()
        if layer is None:
            from napari.utils.notifications import show_warning

            show_warning("Select an image layer to propose a patch size from.")
            return
        # as training will see it: in the canonical orientation, with its own spacing
        shape, self.spacing = canonical_grid(layer.data.shape[-3:], reverse_axes(world_matrix(layer)),
                                             self.state.config.preprocessing.orientation)
        patch, _ = plan_patch_size(shape, self.spacing, max_voxels=96**3)
        for spin, value in zip(self.patch, patch):
            spin.setValue(int(value))
        self.state.config.model.spacing = None
        self._changed()

    def _image_layer(self):
        from napari.layers import Image

        active = self.viewer.layers.selection.active
        if isinstance(active, Image):
            return active
        return next((layer for layer in self.viewer.layers if isinstance(layer, Image)), None)

    def save(self, path: str | Path) -> None:
        self.config().save(path)

    def load(self, path: str | Path) -> None:
        config = RunConfig.load(path)
        self.state.config = config
        self.set_config(config)
        self._changed()

    def _ask_save(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save curriculum", "curriculum.yaml", "YAML (*.yaml *.yml)")
        if path:
            self.save(path)

    def _ask_load(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load curriculum", "", "YAML (*.yaml *.yml)")
        if path:
            try:
                self.load(path)
            except InputError as exc:
                from napari.utils.notifications import show_error

                show_error(str(exc))
