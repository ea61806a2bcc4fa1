"""The Prune widget: make a smaller network and compare it with the one it came from."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Optional

from magicgui.widgets import ComboBox, FloatSpinBox, PushButton, SpinBox
from qtpy.QtWidgets import (
    QAbstractScrollArea,
    QGroupBox,
    QHeaderView,
    QLabel,
    QProgressBar,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..config import DEVICES, use_pruning_rule
from ..engine.progress import TrainingProgress
from ..events import Event, PruningReport
from ..tasks.pruning_report import REPORT_ROWS
from .forms import ModelChoice, PathField, count_box, form, qt_field, row
from .jobs import Job
from .plots import PlotCanvas
from .presenter import RunPresenter, recipe_label
from .state import state_for

CHANNEL, PROGRESSIVE = "channel", "progressive"
RULE_NAMES = {None: "as configured (PSP-Seg's reference rule by default)", "short-run": "short run (tens of epochs)"}
"""The pruning rule's choices: the Curriculum widget's configuration as it is, or :data:`PRUNING_RULES` "short-run"."""
MODE_NAMES = {CHANNEL: "Channel pruning of a trained model", PROGRESSIVE: "Progressive pruning (PSP-Seg)"}
PRM_VARIANTS = {
    "S": "S: light (16..256 channels, 4 branches per module)",
    "B": "B: 7 branches, twice as wide",
    "L": "L: 7 branches, wider stages (up to 320 channels)",
}


def _pruning_events(progressive: bool, *args, **kwargs):
    """The pruning task's generator, imported and run by napari's thread worker off the GUI thread."""
    from ..tasks.pruning import prune_trained_model, train_progressively_pruned

    yield from (train_progressively_pruned if progressive else prune_trained_model)(*args, **kwargs)


def _group(title: str, fields) -> QGroupBox:
    """A titled box around a magicgui form."""
    box = QGroupBox(title)
    QVBoxLayout(box).addWidget(fields.native)
    return box


class PruneWidget(QWidget):
    """Channel-prune a trained model or train a PSP-Seg network; parameters over time and a before/after table."""

    def __init__(self, napari_viewer, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = state_for(napari_viewer)
        self.run_dir: Optional[Path] = None
        self.progressive = False

        mode = ComboBox(label="Mode", choices=[(name, key) for key, name in MODE_NAMES.items()])
        self.model = ModelChoice("a run folder or a checkpoint (.pt); the model trained last is offered first")
        ratio = FloatSpinBox(label="Ratio", min=0.05, max=0.95, step=0.05, value=0.5,
                             tooltip="share of every layer's channels removed")
        steps = SpinBox(label="Iterative steps", min=1, max=100, value=5)
        self.fine_tune_epochs = count_box(0, 10000, 0, "half of the model's")
        variant = ComboBox(label="PRM variant", choices=[(name, key) for key, name in PRM_VARIANTS.items()])
        rule = ComboBox(label="Pruning rule", choices=[(name, key) for key, name in RULE_NAMES.items()], tooltip=(
            "the reference rule (PSP-Seg's code) prunes at convergence events, made for 1,000 epochs (in 25 it "
            "pruned nothing); the short-run rule, our earlier choices, pruned 87% of the S network in 25"))
        config = self.state.config.training
        progressive_epochs = SpinBox(label="Epochs", min=1, max=10000, value=config.epochs or 25)
        iterations = SpinBox(label="Steps per epoch", min=1, max=10000, value=config.iterations_per_epoch or 50)
        self.baseline = PathField("optional: a trained run to compare with", caption="Baseline run folder")
        self.dataset = PathField("training / fine-tuning and validation cases", caption="Dataset folder")
        self.run_root = PathField(caption="Runs folder")
        self.run_root.setText(str(Path.home() / "napari-pgps-runs"))
        device = ComboBox(label="Device", choices=list(DEVICES))
        start, stop = PushButton(text="Start"), PushButton(text="Stop")
        self.channel_box = _group("Channel pruning", form(
            qt_field(self.model, "Model"), row(qt_field(self.model.browse_folder), qt_field(self.model.browse_file)),
            ratio, steps, qt_field(self.fine_tune_epochs, "Fine-tune epochs")))
        self.progressive_box = _group("Progressive pruning", form(
            variant, rule, progressive_epochs, iterations, qt_field(self.baseline, "Baseline")))
        self.mode, self.ratio, self.steps, self.variant, self.rule = (
            mode.native, ratio.native, steps.native, variant.native, rule.native)
        self.progressive_epochs, self.iterations, self.device = progressive_epochs.native, iterations.native, device.native
        self.start, self.stop = start.native, stop.native
        self.progress = QProgressBar()
        self.status = QLabel("idle")
        self.status.setWordWrap(True)
        self.recipe = recipe_label()
        self.plot = PlotCanvas(self._draw_parameters, height=2.2)
        self.plot.setMinimumHeight(160)
        self.table = QTableWidget(len(REPORT_ROWS), 3)
        self.table.setVerticalHeaderLabels([name for _, name, _ in REPORT_ROWS])
        self.table.setHorizontalHeaderLabels(["before", "pruned", "pruned / before"])
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.setSizeAdjustPolicy(QAbstractScrollArea.SizeAdjustPolicy.AdjustToContents)
        self.table.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)  # all five rows, no scrolling

        layout = QVBoxLayout(self)
        layout.addWidget(form(mode).native)
        layout.addWidget(self.channel_box)
        layout.addWidget(self.progressive_box)
        layout.addWidget(form(qt_field(self.dataset, "Dataset folder"), qt_field(self.run_root, "Runs folder"),
                              device).native)
        layout.addWidget(row(start, stop).native)
        for widget in (self.progress, self.status, self.recipe, self.plot, self.table):
            layout.addWidget(widget)

        self.job = Job("Pruning", self.status, self.progress, buttons=[self.start], stop_buttons=[self.stop])
        self.presenter = RunPresenter(self.status, self.recipe)
        """The run's events folded (``history``): ``history.parameters`` is the plot, ``history.report`` the table."""
        mode.changed.connect(self._show_mode)
        self.model.chosen.connect(self.offer_model)
        start.clicked.connect(self.start_pruning)
        stop.clicked.connect(self.stop_pruning)
        self.state.model_trained.connect(self.offer_model)
        if self.state.last_model is not None:
            self.offer_model(self.state.last_model)
        self._show_mode()

    @property
    def worker(self):
        """napari's worker while pruning, ``None`` when idle."""
        return self.job.worker

    @property
    def history(self) -> TrainingProgress:
        """The run's events so far, folded."""
        return self.presenter.history

    def _show_mode(self, *_) -> None:
        progressive = self.mode.currentData() == PROGRESSIVE
        self.channel_box.setVisible(not progressive)
        self.progressive_box.setVisible(progressive)

    def offer_model(self, path) -> None:
        """Put ``path`` first in the model list and select it (not this widget's own pruned runs)."""
        if self.run_dir is not None and Path(path) == self.run_dir:
            return
        self.model.offer(path)

    # -- control ----------------------------------------------------------------
    def start_pruning(self) -> None:
        """Prune in a background thread; progressive pruning trains with the Curriculum widget's settings."""
        from napari.utils.notifications import show_error

        from ..errors import InputError

        progressive = self.mode.currentData() == PROGRESSIVE
        data, model = self.dataset.text(), self.model.path()
        try:
            if not data:
                raise InputError("choose a dataset folder: its training cases fine-tune or train the network, "
                                 "its validation cases measure Dice.")
            if not progressive and not model:
                raise InputError("choose a trained model to prune: a run folder or a checkpoint.")
        except InputError as exc:
            show_error(str(exc))
            self.status.setText(str(exc))
            return
        self.progressive = progressive
        self.run_dir = Path(self.run_root.text()).expanduser() / time.strftime("pruned-%Y%m%d-%H%M%S")
        if progressive:
            config = copy.deepcopy(self.state.config)
            config.data.path = data
            config.model.prm_variant = self.variant.currentData()
            if self.rule.currentData() is not None:
                use_pruning_rule(config, self.rule.currentData())
            config.training.epochs = self.progressive_epochs.value()
            config.training.iterations_per_epoch = self.iterations.value()
            config.training.device = self.device.currentText()
            args = (config, self.run_dir)
            kwargs = {"baseline": self.baseline.text() or None}
        else:
            args = (model, data, self.run_dir)
            kwargs = {"ratio": self.ratio.value(), "steps": self.steps.value(),
                      "fine_tune_epochs": self.fine_tune_epochs.value() or None, "device": self.device.currentText()}
        self.presenter.reset()
        self.table.clearContents()
        self.plot.mark_stale()
        self.job.start(_pruning_events, progressive, *args, control=self.job.control, **kwargs,
                       yielded=self._on_event, finished=self._on_finished)
        self._show_phase("reading data and planning the network..." if progressive
                         else "measuring the model before pruning...")
        self.status.setText(f"writing to {self.run_dir}")

    def stop_pruning(self) -> None:
        """Ask the training to stop after the current step; its last checkpoint is kept."""
        if self.job.running:
            self.job.stop()
            self.status.setText("stopping after this step...")

    def _show_phase(self, text: str, done: int = 0, total: int = 0) -> None:
        """The current phase in the progress bar: ``done`` of ``total``, or busy while ``total`` is 0."""
        self.job.show_progress(text, done, total)

    # -- events -------------------------------------------------------------------
    def _on_event(self, event: Event) -> None:
        history = self.presenter.show(event)
        self.plot.mark_stale()
        phase = self._phase(history)
        if phase is not None:
            self._show_phase(*phase)
        if history.finished is event and event.checkpoint:
            self.state.set_last_model(self.run_dir)
        if history.report is event:
            self._show_report(event)

    def _phase(self, history: TrainingProgress) -> Optional[tuple[str, int, int]]:
        """Where the work is, for the progress bar: (text, done, total); ``None`` before anything happened."""
        if history.report is not None:
            return "done", 1, 1
        if history.finished is not None:
            return ("stopped", 0, 1) if history.finished.stopped else ("measuring the pruned model...", 0, 0)
        if history.started is not None:
            epoch = history.steps[-1].epoch if history.steps else 0
            return (f"{'training' if self.progressive else 'fine-tune'} epoch {epoch + 1}/{history.started.epochs}",
                    history.steps_done, history.total_steps)
        if history.parameters:  # channel pruning: (step, parameters) after each step
            step = history.parameters[-1][0]
            return f"pruning step {step}/{self.steps.value()}", step, self.steps.value()
        return None

    def _on_finished(self) -> None:
        self.plot.redraw_now()

    def _show_report(self, report: PruningReport) -> None:
        """Fill the before/after table; the ratio is pruned / before."""
        self.table.setHorizontalHeaderLabels([report.before_name, "pruned", "pruned / before"])
        for row, (field, _, fmt) in enumerate(REPORT_ROWS):
            before, after = report.before[field], report.after[field]
            ratio = after / before if before and after is not None else None
            for column, value in enumerate((before, after)):
                self.table.setItem(row, column, QTableWidgetItem("-" if value is None else fmt.format(value)))
            self.table.setItem(row, 2, QTableWidgetItem("-" if ratio is None else f"{ratio:.2f}"))
        before, after = report.before["parameters"], report.after["parameters"]
        self.status.setText(f"done: {before:,} -> {after:,} parameters ({after / before:.0%}); "
                            f"report in {Path(report.path).parent}")

    # -- plot -----------------------------------------------------------------------
    def _draw_parameters(self, figure) -> None:
        """Update (create on first call) the parameters line; no figure rebuild while pruning."""
        if not hasattr(self, "_parameter_line"):
            from matplotlib.ticker import EngFormatter, MaxNLocator

            figure.subplots_adjust(bottom=0.25, right=0.95)
            self._parameter_axes = figure.add_subplot(111)
            self._parameter_line = self._parameter_axes.plot([], [], "o-", drawstyle="steps-post")[0]
            self._parameter_axes.set_ylabel("parameters")
            self._parameter_axes.yaxis.set_major_formatter(EngFormatter())
            self._parameter_axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        self._parameter_axes.set_xlabel("epoch" if self.progressive else "pruning step")
        points = self.history.parameters
        self._parameter_line.set_data([p[0] for p in points], [p[1] for p in points])
        self._parameter_axes.relim()
        self._parameter_axes.autoscale_view()
