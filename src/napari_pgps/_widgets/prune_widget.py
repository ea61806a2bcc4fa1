"""The Prune widget: make a smaller network and compare it with the one it came from."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Optional

from qtpy.QtWidgets import (
    QAbstractScrollArea,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..config import DEVICES, use_pruning_rule
from ..engine import TrainingControl, TrainingProgress
from ..events import ChannelPruningStep, Finished, PruningReport, PruningStep, RunStarted, StepDone, Validated
from ..tasks.pruning_report import REPORT_ROWS
from .forms import show_notes, spin_box
from .plots import PlotCanvas
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


class PruneWidget(QWidget):
    """Channel-prune a trained model or train a PSP-Seg network; parameters over time and a before/after table."""

    def __init__(self, napari_viewer, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = state_for(napari_viewer)
        self.worker = None
        self.control: Optional[TrainingControl] = None
        self.run_dir: Optional[Path] = None
        self.progressive = False
        self.history = TrainingProgress()
        """The run's events folded; ``history.parameters`` is the plot, ``history.report`` the table."""

        self.mode = QComboBox()
        for key, name in MODE_NAMES.items():
            self.mode.addItem(name, key)
        self.model = QComboBox()
        self.model.setEditable(True)
        self.model.setToolTip("a run folder or a checkpoint (.pt); the model trained last is offered first")
        browse_run, browse_checkpoint = QPushButton("Run folder..."), QPushButton("Checkpoint...")
        self.ratio = QDoubleSpinBox()
        self.ratio.setRange(0.05, 0.95)
        self.ratio.setSingleStep(0.05)
        self.ratio.setValue(0.5)
        self.ratio.setToolTip("share of every layer's channels removed")
        self.steps = spin_box(1, 100, 5)
        self.fine_tune_epochs = spin_box(0, 10000, 0)
        self.fine_tune_epochs.setSpecialValueText("half of the model's")
        self.variant = QComboBox()
        for key, name in PRM_VARIANTS.items():
            self.variant.addItem(name, key)
        self.rule = QComboBox()
        for key, name in RULE_NAMES.items():
            self.rule.addItem(name, key)
        self.rule.setToolTip("the reference rule (PSP-Seg's code) prunes at convergence events, made for 1,000 epochs "
                             "(in 25 it pruned nothing); the short-run rule, our earlier choices, pruned 87% of the S "
                             "network in 25")
        self.progressive_epochs = spin_box(1, 10000, self.state.config.training.epochs or 25)
        self.iterations = spin_box(1, 10000, self.state.config.training.iterations_per_epoch or 50)
        self.baseline = QLineEdit()
        self.baseline.setPlaceholderText("optional: a trained run to compare with")
        self.dataset = QLineEdit()
        self.dataset.setPlaceholderText("training / fine-tuning and validation cases")
        self.run_root = QLineEdit(str(Path.home() / "napari-pgps-runs"))
        self.device = QComboBox()
        self.device.addItems(list(DEVICES))
        self.start, self.stop = QPushButton("Start"), QPushButton("Stop")
        self.progress = QProgressBar()
        self.status = QLabel("idle")
        self.status.setWordWrap(True)
        self.plot = PlotCanvas(self._draw_parameters, height=2.2)
        self.plot.setMinimumHeight(160)
        self.table = QTableWidget(len(REPORT_ROWS), 3)
        self.table.setVerticalHeaderLabels([name for _, name, _ in REPORT_ROWS])
        self.table.setHorizontalHeaderLabels(["before", "pruned", "pruned / before"])
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.setSizeAdjustPolicy(QAbstractScrollArea.SizeAdjustPolicy.AdjustToContents)
        self.table.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)  # all five rows, no scrolling

        model_row = QHBoxLayout()
        model_row.addWidget(browse_run)
        model_row.addWidget(browse_checkpoint)
        self.channel_box = QGroupBox("Channel pruning")
        channel_form = QFormLayout(self.channel_box)
        channel_form.addRow("Model", self.model)
        channel_form.addRow("", model_row)
        channel_form.addRow("Ratio", self.ratio)
        channel_form.addRow("Iterative steps", self.steps)
        channel_form.addRow("Fine-tune epochs", self.fine_tune_epochs)
        self.progressive_box = QGroupBox("Progressive pruning")
        progressive_form = QFormLayout(self.progressive_box)
        progressive_form.addRow("PRM variant", self.variant)
        progressive_form.addRow("Pruning rule", self.rule)
        progressive_form.addRow("Epochs", self.progressive_epochs)
        progressive_form.addRow("Steps per epoch", self.iterations)
        progressive_form.addRow("Baseline", self._with_browse(self.baseline, "Baseline run folder"))
        mode_form = QFormLayout()
        mode_form.addRow("Mode", self.mode)
        form = QFormLayout()
        form.addRow("Dataset folder", self._with_browse(self.dataset, "Dataset folder"))
        form.addRow("Runs folder", self._with_browse(self.run_root, "Runs folder"))
        form.addRow("Device", self.device)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start)
        buttons.addWidget(self.stop)
        layout = QVBoxLayout(self)
        layout.addLayout(mode_form)
        layout.addWidget(self.channel_box)
        layout.addWidget(self.progressive_box)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.plot)
        layout.addWidget(self.table)

        self.mode.currentIndexChanged.connect(self._show_mode)
        browse_run.clicked.connect(lambda: self._browse_model(QFileDialog.getExistingDirectory(self, "Run folder")))
        browse_checkpoint.clicked.connect(
            lambda: self._browse_model(QFileDialog.getOpenFileName(self, "Checkpoint", "", "Models (*.pt *.zip)")[0])
        )
        self.start.clicked.connect(self.start_pruning)
        self.stop.clicked.connect(self.stop_pruning)
        self.state.model_trained.connect(self.offer_model)
        if self.state.last_model is not None:
            self.offer_model(self.state.last_model)
        self._show_mode()
        self._set_running(False)

    def _with_browse(self, line: QLineEdit, title: str) -> QHBoxLayout:
        """``line`` with a "..." button that fills it with a chosen folder."""
        browse = QPushButton("...")
        browse.clicked.connect(lambda: line.setText(QFileDialog.getExistingDirectory(self, title) or line.text()))
        row = QHBoxLayout()
        row.addWidget(line)
        row.addWidget(browse)
        return row

    def _show_mode(self, *_) -> None:
        progressive = self.mode.currentData() == PROGRESSIVE
        self.channel_box.setVisible(not progressive)
        self.progressive_box.setVisible(progressive)

    def offer_model(self, path) -> None:
        """Put ``path`` first in the model list and select it (not this widget's own pruned runs)."""
        if self.run_dir is not None and Path(path) == self.run_dir:
            return
        text = str(path)
        index = self.model.findText(text)
        if index >= 0:
            self.model.removeItem(index)
        self.model.insertItem(0, text)
        self.model.setCurrentIndex(0)

    def _browse_model(self, path: str) -> None:
        if path:
            self.offer_model(path)

    # -- control ----------------------------------------------------------------
    def start_pruning(self) -> None:
        """Prune in a background thread; progressive pruning trains with the Curriculum widget's settings."""
        from napari.qt.threading import thread_worker
        from napari.utils.notifications import show_error

        from ..errors import InputError

        progressive = self.mode.currentData() == PROGRESSIVE
        data, model = self.dataset.text().strip(), self.model.currentText().strip()
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
        self.control = TrainingControl()
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
            kwargs = {"baseline": self.baseline.text().strip() or None, "control": self.control}
            self._show_phase("reading data and planning the network...")
        else:
            args = (model, data, self.run_dir)
            kwargs = {"ratio": self.ratio.value(), "steps": self.steps.value(),
                      "fine_tune_epochs": self.fine_tune_epochs.value() or None, "device": self.device.currentText(),
                      "control": self.control}
            self._show_phase("measuring the model before pruning...")
        self.history = TrainingProgress()
        self.table.clearContents()
        self.plot.mark_stale()
        # handlers given at creation: an "errored" handler connected later would not stop the default re-raise
        handlers = {"yielded": self._on_event, "errored": self._on_error, "finished": self._on_finished}
        self.worker = thread_worker(_pruning_events, connect=handlers, start_thread=False)(progressive, *args, **kwargs)
        self._set_running(True)
        self.status.setText(f"writing to {self.run_dir}")
        self.worker.start()

    def stop_pruning(self) -> None:
        """Ask the training to stop after the current step; its last checkpoint is kept."""
        if self.control is not None:
            self.control.stop()
            self.status.setText("stopping after this step...")

    def _set_running(self, running: bool) -> None:
        self.start.setEnabled(not running)
        self.stop.setEnabled(running)

    def _show_phase(self, text: str, done: int = 0, total: int = 0) -> None:
        """The current phase in the progress bar: ``done`` of ``total``, or busy while ``total`` is 0."""
        self.progress.setRange(0, total)
        self.progress.setValue(done)
        self.progress.setFormat(text)

    # -- events -------------------------------------------------------------------
    def _on_event(self, event) -> None:
        history = self.history.update(event)
        if isinstance(event, (ChannelPruningStep, PruningStep, RunStarted)):
            self.plot.mark_stale()
        if isinstance(event, ChannelPruningStep):
            self._show_phase(f"pruning step {event.step}/{event.steps}", event.step, event.steps)
        elif isinstance(event, RunStarted):
            self._show_phase(self._epoch_phase(0), 0, history.total_steps)
            self.status.setText(f"{'training' if self.progressive else 'fine-tuning'} on {event.device}: "
                                f"{event.training_cases} training / {event.validation_cases} validation case(s), "
                                f"{event.parameters:,} parameters")
            show_notes(event)
        elif isinstance(event, StepDone):
            self._show_phase(self._epoch_phase(event.epoch), history.steps_done, history.total_steps)
        elif isinstance(event, PruningStep):
            self.status.setText(f"epoch {event.epoch}: {event.action} {', '.join(event.branches)}; "
                                f"{event.parameters:,} parameters")
        elif isinstance(event, Validated):
            self.status.setText(f"epoch {event.epoch}: validation Dice {event.mean_dice:.3f}")
        elif isinstance(event, Finished):
            if event.stopped:
                self._show_phase("stopped", 0, 1)
                self.status.setText(f"stopped after {event.steps} steps; checkpoint {event.checkpoint or 'none yet'}")
            else:
                self._show_phase("measuring the pruned model...")
            if event.checkpoint:
                self.state.set_last_model(self.run_dir)
        elif isinstance(event, PruningReport):
            self._show_report(event)

    def _epoch_phase(self, epoch: int) -> str:
        return f"{'training' if self.progressive else 'fine-tune'} epoch {epoch + 1}/{self.history.started.epochs}"

    def _on_error(self, exc: Exception) -> None:
        from napari.utils.notifications import show_error

        show_error(f"Pruning failed: {exc}")
        self._show_phase("failed", 0, 1)
        self.status.setText(f"failed: {exc}")

    def _on_finished(self) -> None:
        self._set_running(False)
        self.worker = None
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
        self._show_phase("done", 1, 1)
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
