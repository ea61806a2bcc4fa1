"""The Curriculum widget: design a patch-size schedule and see it before training.

Its mode and its epochs may be left automatic: the run's recipe (:mod:`napari_pgps.engine.recipe`) then chooses the
schedule when training starts, from the Train widget's device and time budget, and the preview shows that choice and
why.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Optional

from magicgui.widgets import CheckBox, ComboBox, PushButton, SpinBox
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFileDialog, QLabel, QVBoxLayout, QWidget

from ..config import RunConfig
from ..curriculum import SCHEDULES, Schedule, schedule_for
from ..data.geometry import canonical_grid, reverse_axes
from ..engine.device import pick_device
from ..engine.progress import duration_text
from ..engine.recipe import is_budgeted, recipe_schedule, schedule_choice
from ..engine.resolve import PROFILES
from ..errors import InputError
from ..models.architectures import default_architecture, patch_poolings
from ..models.planning import plan_patch_size, plan_unet
from .forms import count_box, form, qt_field, row
from .layers import world_matrix
from .plots import PlotCanvas
from .state import state_for
from .train_widget import with_run_settings

AUTOMATIC = "automatic"
"""The mode the run's recipe chooses when training starts (the configuration's ``curriculum.schedule: null``)."""

BUDGET_PREVIEW_EPOCHS = 100
"""A run planned to a time budget gets its epochs when it starts, from steps timed on the machine: its preview lays
the schedule out over this many and draws them as shares of the run."""

MODE_NAMES = {
    AUTOMATIC: "Automatic (the recipe's)",
    "constant": "Constant (baseline)",
    "pgps-efficiency": "PGPS Efficiency",
    "pgps-performance": "PGPS Performance",
    "rpss": "RPSS (random stage per step)",
    "augment": "Patch-size augmentation",
}


class CurriculumWidget(QWidget):
    """Mode, final patch, epochs, steps and batch; a live preview of patch and batch over the epochs, and the
    recipe's schedule and why under it."""

    def __init__(self, napari_viewer, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = state_for(napari_viewer)
        self.spacing = (1.0, 1.0, 1.0)
        self.schedule: Optional[Schedule] = None
        self.budgeted = False
        """Whether the run is planned to a time budget (its epochs are then planned when it starts)."""

        mode = ComboBox(label="Mode", choices=[(MODE_NAMES[key], key) for key in (AUTOMATIC, *SCHEDULES)], tooltip=(
            "Automatic: the run's recipe chooses (PGPS Efficiency for a run planned to a time budget, the network's "
            "own schedule otherwise); the line under the plot says which and why."))
        pdl = CheckBox(text="add cases by similarity (PDL)")
        patch = [SpinBox(label=axis, min=8, max=512, value=8) for axis in "ZYX"]
        propose = PushButton(text="Propose from image layer")
        self.epochs = count_box(0, 10000, 0, AUTOMATIC)
        self.epochs.setToolTip("automatic (0): planned to the Train widget's time budget, else to the device's "
                               f"default budget ({duration_text(PROFILES['cpu'].time_budget)} on a CPU), or the "
                               "device's epochs where it has none")
        iterations = SpinBox(label="Steps per epoch", min=1, max=10000, value=50)
        batch = SpinBox(label="Batch size", min=1, max=256, value=2)
        save, load = PushButton(text="Save YAML..."), PushButton(text="Load YAML...")
        self.form = form(mode, pdl, row(*patch, label="Final patch", labels=True), propose,
                         qt_field(self.epochs, "Epochs"), iterations, batch)
        self.mode, self.pdl, self.propose = mode.native, pdl.native, propose.native
        self.patch = [spin.native for spin in patch]
        self.iterations, self.batch = iterations.native, batch.native
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.recipe = QLabel()
        self.recipe.setWordWrap(True)
        self.recipe.setTextFormat(Qt.TextFormat.PlainText)
        self.preview = PlotCanvas(self._draw_preview, height=2.6)

        layout = QVBoxLayout(self)
        layout.addWidget(self.form.native)
        layout.addWidget(self.preview)
        layout.addWidget(self.recipe)
        layout.addWidget(self.summary)
        layout.addWidget(row(save, load).native)
        layout.addStretch()

        self.set_config(self.state.config)
        for field in (mode, pdl, *patch, iterations, batch):
            field.changed.connect(self._changed)
        self.epochs.valueChanged.connect(self._changed)
        propose.clicked.connect(self.propose_from_layer)
        save.clicked.connect(self._ask_save)
        load.clicked.connect(self._ask_load)
        self.state.run_settings_changed.connect(self._changed)
        self._changed()

    # -- config <-> form ------------------------------------------------------
    def set_config(self, config: RunConfig) -> None:
        """Show ``config``'s curriculum settings in the form."""
        self.mode.setCurrentIndex(max(0, self.mode.findData(config.curriculum.schedule or AUTOMATIC)))
        self.pdl.setChecked(config.curriculum.pdl.enabled)
        if config.model.patch_size:
            for spin, value in zip(self.patch, config.model.patch_size):
                spin.setValue(int(value))
        if config.model.spacing:
            self.spacing = tuple(config.model.spacing)
        self.epochs.setValue(config.training.epochs or 0)
        self.iterations.setValue(config.training.iterations_per_epoch or 50)
        self.batch.setValue(config.training.batch_size)

    def config(self) -> RunConfig:
        """The shared config with this form's values."""
        config = copy.deepcopy(self.state.config)
        config.curriculum.schedule = None if self.mode.currentData() == AUTOMATIC else self.mode.currentData()
        config.curriculum.pdl.enabled = self.pdl.isChecked()
        config.model.patch_size = tuple(s.value() for s in self.patch)
        # the network is planned again from the patch when training starts
        config.model.kernel_sizes = config.model.strides = config.model.channels = None
        config.training.epochs = self.epochs.value() or None
        config.training.iterations_per_epoch = self.iterations.value()
        config.training.batch_size = self.batch.value()
        return config

    def _device_type(self) -> str:
        """The type of the Train widget's device ("auto": this machine's choice), whose profile the recipe follows;
        "cpu" when it has none."""
        try:
            kind = pick_device(self.state.device).type
        except InputError:  # a device this machine lacks: its profile all the same
            kind = self.state.device
        return kind if kind in PROFILES else "cpu"

    def _changed(self, *_) -> None:
        config = self.config()
        self.state.config = config  # no signal: the Train widget reads it when training starts
        run = with_run_settings(config, self.state.device, self.state.time_budget)  # as the Train widget starts it
        profile = PROFILES[self._device_type()]
        self.budgeted = is_budgeted(run, profile.time_budget)
        try:
            plan = plan_unet(config.model.patch_size, self.spacing)  # the network as training will plan it
            model = dataclasses.replace(config.model, kernel_sizes=plan.kernel_sizes, strides=plan.strides,
                                        architecture=config.model.architecture or default_architecture(config))
            curriculum = dataclasses.replace(config.curriculum, schedule=recipe_schedule(run, self.budgeted))
            planned = dataclasses.replace(config, model=model, curriculum=curriculum)
            epochs = BUDGET_PREVIEW_EPOCHS if self.budgeted else run.training.epochs or profile.epochs
            self.schedule = schedule_for(planned, epochs)
        except InputError as exc:
            self.schedule = None
            self.recipe.setText("")
            self.summary.setText(f"<span style='color:#e06c75'>{exc}</span>")
        else:
            self.recipe.setText(schedule_choice(run, planned, self.budgeted).line())
            if self.budgeted:
                budget = duration_text(run.training.time_budget or profile.time_budget)
                steps = f"epochs and steps planned to fill {budget}"
            else:
                steps = f"{epochs * run.training.iterations_per_epoch} steps"
            poolings = patch_poolings(model)
            self.summary.setText(
                f"{len(self.schedule.stages)} stage(s), {steps}; compute relative to constant: "
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
        if self.budgeted:  # its epochs are planned when it starts: shares of the run
            edges = [edge / max(edges[-1], 1) for edge in edges]
        sources = self.schedule.stages
        if self.schedule.draws != "stages":
            ax.set_title("each step draws a random patch; nominal size shown", fontsize=8)
        for axis, name in enumerate("ZYX"):
            ys = [s.patch[axis] for s in sources] + [sources[-1].patch[axis]]
            ax.step(edges, ys, where="post", label=name)
        ax.set_xlabel("share of the run (epochs planned from the time budget)" if self.budgeted else "epoch")
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
