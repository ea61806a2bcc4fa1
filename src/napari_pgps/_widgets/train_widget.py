"""The Train widget: train in the background and watch the patch grow and the class balance change."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Optional

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from ..config import CONFIG_FILE, DEVICES, RunConfig
from ..engine import TrainingControl, TrainingProgress
from ..engine.checkpoint import FINAL, LAST, SPLITS_FILE
from ..engine.progress import duration_text, read_events, size_text
from ..errors import InputError
from ..events import (
    CasesAdded,
    Finished,
    Paused,
    Preparing,
    Replanned,
    Resumed,
    RunStarted,
    StageStarted,
    StepDone,
    Validated,
)
from .forms import CHANNEL_SEPARATOR, ChannelPicker, PathField, show_notes, spin_box
from .layers import box_outlines, find_layer, placement, training_set_from_layers
from .plots import PlotCanvas
from .state import state_for

OVERLAY_NAME = "training patches"
OVERLAY_INTERVAL_S = 0.5
MODEL_FILES = "Models (*.pt *.zip)"


def _train_events(config: RunConfig, run_dir: Path, dataset, control: TrainingControl, resume: bool = False):
    """The training generator (every method plugged in), run by napari's thread worker off the GUI thread."""
    from ..tasks.training import train

    yield from train(config, run_dir, dataset=dataset, control=control, resume=resume)


def resumable(run_dir: Optional[Path]) -> bool:
    """Whether ``run_dir`` holds a run that can be continued: a last checkpoint and no final one."""
    return run_dir is not None and (run_dir / LAST).is_file() and not (run_dir / FINAL).exists()


def stored_config(run_dir: Path) -> RunConfig:
    """The configuration a run folder was trained with: its ``config.yaml``, else its last checkpoint's."""
    try:
        return RunConfig.load(run_dir / CONFIG_FILE)
    except InputError:
        from ..engine.checkpoint import load_checkpoint

        return RunConfig.from_dict(load_checkpoint(run_dir / LAST)["config"], source=str(run_dir / LAST))


def trained_case_names(run_dir: Path) -> Optional[list[str]]:
    """The training and validation case names of a run (its ``splits.json``); ``None`` when unreadable."""
    import json

    try:
        split = json.loads((run_dir / SPLITS_FILE).read_text())
        return list(dict.fromkeys([*split["training"], *split["validation"]]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _until(steps: list, dice: list, started: RunStarted) -> tuple[list, list]:
    """Steps and (step, mean Dice) points up to the epoch ``started`` resumes at (later ones are taken again)."""
    last = started.start_epoch * started.iterations_per_epoch
    return [s for s in steps if s.step <= last], [(step, d) for step, d in dice if step <= last]


def logged_curves(run_dir: Path) -> tuple[list[StepDone], list[tuple[int, float]]]:
    """The steps and the (step, mean Dice) validations a run folder's ``metrics.jsonl`` holds, for the curves of
    a run resumed from it; steps that a later resume took again are left out. Empty when there is no log."""
    steps: list[StepDone] = []
    dice: list[tuple[int, float]] = []
    try:
        for event in read_events(run_dir):
            if isinstance(event, RunStarted):
                steps, dice = _until(steps, dice, event)
            elif isinstance(event, StepDone):
                steps.append(event)
            elif isinstance(event, Validated):
                dice.append((steps[-1].step if steps else 0, event.mean_dice))
    except (OSError, ValueError, KeyError, TypeError):
        return [], []
    return steps, dice


class TrainWidget(QWidget):
    """Data from the open layers or a dataset folder; start, pause, stop; live plots and a patch overlay."""

    def __init__(self, napari_viewer, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = state_for(napari_viewer)
        self.worker = None
        self.control: Optional[TrainingControl] = None
        self.run_dir: Optional[Path] = None
        self._reset_history()

        self.from_layers = QRadioButton("open layers")
        self.from_folder = QRadioButton("dataset folder")
        self.from_layers.setChecked(True)
        self.image_choice, self.labels_choice = ChannelPicker(napari_viewer, exclude=(OVERLAY_NAME,)), QComboBox()
        self.add_pair, self.remove_pair = QPushButton("Add pair"), QPushButton("Remove")
        self.pairs = QListWidget()
        self.pairs.setMaximumHeight(70)
        self.channel_names = QLineEdit()
        self.channel_names.setPlaceholderText("channel 0, channel 1, ...")
        self.channel_names.setToolTip("The modality of each image channel, comma-separated in channel order (e.g. "
                                      "\"CT\" or \"T1, FLAIR\"): a channel named CT is clipped to its foreground "
                                      "intensity percentiles, as nnU-Net does; any other is z-scored.")
        self.folder = QLineEdit()
        self.folder.setPlaceholderText("Decathlon or nnU-Net v2 dataset folder")
        browse = QPushButton("...")
        self.run_root = QLineEdit(str(Path.home() / "napari-pgps-runs"))
        self.device = QComboBox()
        self.device.addItems(list(DEVICES))
        self.time_budget = spin_box(0, 24 * 60, 0)
        self.time_budget.setSuffix(" min")
        self.time_budget.setSpecialValueText("the schedule's epochs")
        self.time_budget.setToolTip("Plan the run to end within this many minutes (its step cost is measured first); "
                                    "0 trains the epochs set in the Curriculum widget.")
        self.init_from = PathField("empty: fresh weights", MODEL_FILES, "Model to start from")
        self.init_from.setToolTip("A trained model (run folder, checkpoint .pt or model package .zip) whose network "
                                  "and weights the new run starts from; its labels and channels must be the data's.")
        self.resume_from = PathField("run folder of a stopped run", caption="Run folder to resume")
        self.resume_from.setToolTip("A run folder with a checkpoint_last.pt and no checkpoint_final.pt: Resume run "
                                    "continues it there with its own settings.")
        self.device_label = QLabel("device: not started")
        self.start, self.pause, self.stop = QPushButton("Start"), QPushButton("Pause"), QPushButton("Stop")
        self.resume = QPushButton("Resume run")
        self.resume.setToolTip("Continue the stopped run chosen above from its last checkpoint, in its own folder.")
        self.progress = QProgressBar()
        self.status = QLabel("idle")
        self.status.setWordWrap(True)
        self.curves = PlotCanvas(self._draw_curves, height=3.2)
        self.balance = PlotCanvas(self._draw_balance, height=2.0)

        source = QHBoxLayout()
        source.addWidget(self.from_layers)
        source.addWidget(self.from_folder)
        pair_row = QHBoxLayout()
        for w in (self.image_choice, self.labels_choice, self.add_pair, self.remove_pair):
            pair_row.addWidget(w)
        folder_row = QHBoxLayout()
        folder_row.addWidget(self.folder)
        folder_row.addWidget(browse)
        form = QFormLayout()
        form.addRow("Training data", source)
        form.addRow("Image / labels", pair_row)
        form.addRow("", self.pairs)
        form.addRow("Channels", self.channel_names)
        form.addRow("Folder", folder_row)
        form.addRow("Runs folder", self.run_root)
        form.addRow("Device", self.device)
        form.addRow("Time budget", self.time_budget)
        form.addRow("Start from model", self.init_from)
        form.addRow("Stopped run", self.resume_from)
        buttons = QHBoxLayout()
        for b in (self.start, self.resume, self.pause, self.stop):
            buttons.addWidget(b)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.device_label)
        layout.addWidget(self.status)
        layout.addWidget(self.curves)
        layout.addWidget(self.balance)

        self.add_pair.clicked.connect(self._add_pair)
        self.remove_pair.clicked.connect(lambda: self.pairs.takeItem(self.pairs.currentRow()))
        browse.clicked.connect(self._browse)
        self.start.clicked.connect(self.start_training)
        self.resume.clicked.connect(self.resume_training)
        self.resume_from.edited.connect(self._update_resume_button)
        self.pause.clicked.connect(self.toggle_pause)
        self.stop.clicked.connect(self.stop_training)
        self.viewer.layers.events.inserted.connect(self._refresh_layer_choices)
        self.viewer.layers.events.removed.connect(self._refresh_layer_choices)
        self._refresh_layer_choices()
        self._set_running(False)

    # -- data -----------------------------------------------------------------
    def _refresh_layer_choices(self, *_) -> None:
        from napari.layers import Labels

        current = self.labels_choice.currentText()
        self.labels_choice.clear()
        self.labels_choice.addItems([layer.name for layer in self.viewer.layers
                                     if isinstance(layer, Labels) and layer.name != OVERLAY_NAME])
        if current:
            self.labels_choice.setCurrentText(current)

    def _add_pair(self) -> None:
        if self.image_choice.text() and self.labels_choice.currentText():
            self.pairs.addItem(f"{self.image_choice.text()} | {self.labels_choice.currentText()}")
            self.image_choice.reset()

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Dataset folder")
        if folder:
            self.folder.setText(folder)
            self.from_folder.setChecked(True)

    def layer_pairs(self) -> list[tuple[list, object]]:
        """The (image channel layers, labels layer) pairs to train on: the list, else the layers chosen above."""
        names = [self.pairs.item(i).text().split(" | ") for i in range(self.pairs.count())]
        if not names and self.image_choice.text() and self.labels_choice.currentText():
            names = [[self.image_choice.text(), self.labels_choice.currentText()]]
        pairs = []
        for images, labels in names:
            channels = [find_layer(self.viewer, name) for name in images.split(CHANNEL_SEPARATOR)]
            if all(channels) and find_layer(self.viewer, labels):
                pairs.append((channels, find_layer(self.viewer, labels)))
        return pairs

    def channel_list(self) -> Optional[list[str]]:
        """The channel names typed under "Channels" (``None`` when empty: "channel 0", "channel 1", ...)."""
        names = [name.strip() for name in self.channel_names.text().split(",") if name.strip()]
        return names or None

    # -- control ----------------------------------------------------------------
    def start_training(self) -> None:
        """Start a run in a background thread with the Curriculum widget's settings."""
        from napari.utils.notifications import show_error

        config = copy.deepcopy(self.state.config)
        config.training.device = self.device.currentText()
        config.training.init_from = str(Path(self.init_from.text()).expanduser()) if self.init_from.text() else None
        if self.time_budget.value():
            config.training.time_budget, config.training.epochs = 60.0 * self.time_budget.value(), None
        else:
            config.training.time_budget = None
        dataset = None
        try:
            if self.from_folder.isChecked():
                if not self.folder.text().strip():
                    raise InputError("choose a dataset folder, or train from the open layers.")
                config.data.path = self.folder.text().strip()
            else:
                dataset = training_set_from_layers(self.layer_pairs(), self.channel_list())
        except InputError as exc:
            show_error(str(exc))
            return
        self._reset_history()
        self._launch(config, Path(self.run_root.text()).expanduser() / time.strftime("run-%Y%m%d-%H%M%S"), dataset)
        self.status.setText("reading data and planning the network"
                            + (f" (starting from {Path(config.training.init_from).name})..."
                               if config.training.init_from else "..."))

    def resume_training(self) -> None:
        """Continue the stopped run chosen under "Stopped run" from its last checkpoint, in its own folder.

        The run keeps its stored settings (schedule, epochs, time budget; only the device is this widget's) and
        its data: its dataset folder, or, for a run trained on layers, the layers chosen above, which must hold
        the cases it was trained on.
        """
        from napari.utils.notifications import show_error

        run_dir = Path(self.resume_from.text()).expanduser() if self.resume_from.text() else None
        dataset, data_text = None, ""
        try:
            if run_dir is None or not resumable(run_dir):
                raise InputError(f"{run_dir or 'no run folder'}: nothing to resume; choose the folder of a stopped run "
                                 f"(one with {LAST} and without {FINAL}).")
            trained = stored_config(run_dir)
            if trained.data.path:
                data_text = f"its dataset folder {trained.data.path}"
            else:  # trained on napari layers: they are not in the run folder, the same layers must be chosen again
                pairs = self.layer_pairs()
                needed = trained_case_names(run_dir) or []
                missing = [name for name in needed if name not in {channels[0].name for channels, _ in pairs}]
                if missing:
                    raise InputError(f"{run_dir.name} was trained on the layers {', '.join(missing)}, which are not "
                                     "chosen under Image / labels; choose the same image and labels layers to resume "
                                     "it.")
                dataset = training_set_from_layers(pairs, trained.channels)  # the run's own channel names
                data_text = "the layers chosen above"
        except InputError as exc:
            show_error(f"Cannot resume: {exc}")
            return
        config = copy.deepcopy(self.state.config)  # the run's stored settings are used; only the device is ours
        config.training.device = self.device.currentText()
        self._reset_history()
        self._earlier_steps, self._earlier_dice = logged_curves(run_dir)
        self._launch(config, run_dir, dataset, resume=True)
        self.status.setText(f"resuming {run_dir.name} from its last checkpoint (its own settings) on {data_text}...")

    def _launch(self, config: RunConfig, run_dir: Path, dataset, resume: bool = False) -> None:
        """Train in napari's thread worker (a new run, or ``resume`` the one in ``run_dir``)."""
        from napari.qt.threading import thread_worker

        self.run_dir = run_dir
        self.control = TrainingControl()
        # handlers given at creation: an "errored" handler connected later would not stop the default re-raise
        handlers = {"yielded": self._on_event, "errored": self._on_error, "finished": self._on_finished}
        self.worker = thread_worker(_train_events, connect=handlers, start_thread=False)(
            config, run_dir, dataset, self.control, resume
        )
        self._set_running(True)
        self.worker.start()

    def toggle_pause(self) -> None:
        if self.control is None:
            return
        if self.control.paused:
            self.control.resume()
        else:
            self.control.pause()

    def stop_training(self) -> None:
        """Ask the run to stop after the current step; its last checkpoint is kept."""
        if self.control is not None:
            self.control.stop()
            self.status.setText("stopping after this step...")

    def _set_running(self, running: bool) -> None:
        self.start.setEnabled(not running)
        self.pause.setEnabled(running)
        self.stop.setEnabled(running)
        self.pause.setText("Pause")
        self._update_resume_button()

    def _update_resume_button(self, *_) -> None:
        """Resume run is offered, while idle, for a run folder with a last checkpoint and no final one."""
        run_dir = Path(self.resume_from.text()).expanduser() if self.resume_from.text() else None
        self.resume.setEnabled(self.worker is None and resumable(run_dir))

    # -- events -------------------------------------------------------------------
    def _reset_history(self) -> None:
        self.history = TrainingProgress()
        self._last_overlay = 0.0
        self._earlier_steps: list[StepDone] = []  # a resumed run's steps and validations before it stopped
        self._earlier_dice: list[tuple[int, float]] = []

    def _on_event(self, event) -> None:
        history = self.history.update(event)
        if isinstance(event, Preparing):
            self.progress.setRange(0, event.total)
            self.progress.setValue(event.done)
            what = "reading the cases" if event.task == "fingerprint" else "preprocessing the cases"
            self.progress.setFormat(f"{what}: %v / %m")
        elif isinstance(event, RunStarted):
            self.device_label.setText(f"device: {event.device}")
            # the whole run's steps: a resumed run's bar and curves go on from the step it stopped at
            self._earlier_steps, self._earlier_dice = _until(self._earlier_steps, self._earlier_dice, event)
            self.progress.setRange(0, max(event.epochs * event.iterations_per_epoch, 1))
            self.progress.setValue(history.step)
            self.progress.setFormat("%v / %m steps")
            resumed = f"resumed at epoch {event.start_epoch} of {event.epochs}; " if event.start_epoch else ""
            planned = (f"; planned to {duration_text(event.expected_seconds)} of the "
                       f"{duration_text(event.time_budget)} budget" if event.time_budget else "")
            self.status.setText(f"{resumed}{event.training_cases} training / {event.validation_cases} validation "
                                f"case(s), {event.parameters:,} parameters, final patch {size_text(event.final_patch)}"
                                f"{planned}")
            show_notes(event)
        elif isinstance(event, Replanned):
            self.progress.setRange(0, max(event.epochs * history.started.iterations_per_epoch, 1))
            self.status.setText(f"re-planned after epoch {event.epoch}: {event.epochs} epochs, expected "
                                f"{duration_text(event.expected_seconds)} (steps took {event.slowdown:.2f}x the "
                                "planned time)")
        elif isinstance(event, StepDone):
            self.progress.setValue(history.step)
            self.progress.setFormat(f"%v / %m steps, ETA {duration_text(history.eta_seconds)}")
            self.curves.mark_stale()
            self.balance.mark_stale()
            if time.perf_counter() - self._last_overlay >= OVERLAY_INTERVAL_S:
                self._show_patches(event)
        elif isinstance(event, StageStarted):
            self.status.setText(f"stage {event.stage + 1}: patch {size_text(event.patch)}, batch {event.batch}")
        elif isinstance(event, Validated):
            self.curves.mark_stale()
            if event.on_training_cases:
                self.status.setText(f"Dice {event.mean_dice:.3f} on the training case(s): no case left to hold out")
        elif isinstance(event, CasesAdded):
            self.status.setText(f"PDL: training on the {event.cases} most similar of {event.total} cases")
        elif isinstance(event, Paused):
            self.pause.setText("Resume")
            self.status.setText("paused")
        elif isinstance(event, Resumed):
            self.pause.setText("Pause")
        elif isinstance(event, Finished):
            state = "stopped" if event.stopped else "finished"
            dice = f", mean Dice {event.final_mean_dice:.3f}" if event.final_mean_dice is not None else ""
            resume = "; Resume run continues it" if event.stopped and resumable(self.run_dir) else ""
            self.status.setText(f"{state} after {event.steps} steps{dice}; checkpoint {event.checkpoint}{resume}")
            if resume:
                self.resume_from.setText(str(self.run_dir))
            if event.checkpoint:
                self.state.set_last_model(self.run_dir)

    def _on_error(self, exc: Exception) -> None:
        from napari.utils.notifications import show_error

        show_error(f"Training failed: {exc}")
        self.status.setText(f"failed: {exc}")

    def _on_finished(self) -> None:
        self.worker = None
        self._set_running(False)
        self.curves.redraw_now()
        self.balance.redraw_now()

    # -- overlay and plots ------------------------------------------------------------
    def _show_patches(self, step: StepDone) -> None:
        """Outline this step's crops over the image layer they were cut from (training from layers only)."""
        self._last_overlay = time.perf_counter()
        image = find_layer(self.viewer, step.crop_cases[0]) if step.crop_cases else None
        if image is None:
            return
        boxes = [(origin, size) for case, origin, size in zip(step.crop_cases, step.crop_origins, step.crop_sizes)
                 if case == image.name][:8]
        data = box_outlines(image.data.shape[-3:], boxes)
        overlay = find_layer(self.viewer, OVERLAY_NAME)
        if overlay is None or overlay.data.shape != data.shape:
            if overlay is not None:
                self.viewer.layers.remove(overlay)
            self.viewer.add_labels(data, name=OVERLAY_NAME, opacity=0.9, **placement(image))
        else:
            overlay.data = data

    def _draw_curves(self, figure) -> None:
        """Update (create on first call) loss, Dice, patch and batch lines; no figure rebuild while training."""
        if not hasattr(self, "_curve_lines"):
            loss_ax, size_ax = figure.subplots(2, 1, sharex=True)
            dice_ax, batch_ax = loss_ax.twinx(), size_ax.twinx()
            lines = {"loss": loss_ax.plot([], [], lw=0.8)[0], "dice": dice_ax.plot([], [], "o-", color="tab:green")[0]}
            for axis, name in enumerate("ZYX"):
                lines[name] = size_ax.plot([], [], drawstyle="steps-post", label=f"patch {name}")[0]
            lines["batch"] = batch_ax.plot([], [], drawstyle="steps-post", color="black", ls="--", lw=0.8)[0]
            dice_ax.set_ylim(0, 1)
            dice_ax.set_ylabel("val Dice", color="tab:green")
            loss_ax.set_ylabel("loss")
            size_ax.set_ylabel("patch")
            batch_ax.set_ylabel("batch (dashed)")
            size_ax.set_xlabel("step")
            size_ax.legend(fontsize=6, loc="lower right")
            self._curve_axes = (loss_ax, size_ax, batch_ax)
            self._curve_lines = lines
        lines, history = self._curve_lines, self.history
        done = self._earlier_steps + history.steps
        steps = [s.step for s in done]
        dice = self._earlier_dice + [(v.step, v.result.mean_dice) for v in history.validations]
        lines["loss"].set_data(steps, [s.loss for s in done])
        lines["dice"].set_data([step for step, _ in dice], [value for _, value in dice])
        for axis, name in enumerate("ZYX"):
            lines[name].set_data(steps, [s.patch[axis] for s in done])
        lines["batch"].set_data(steps, [s.batch for s in done])
        for ax in self._curve_axes:
            ax.relim()
            ax.autoscale_view()

    def _draw_balance(self, figure) -> None:
        """Bars of each label's share in the last 10 steps' crops beside its share in the whole volumes."""
        run = self.history.started
        names = run.label_names[1:] if run is not None else ()
        if getattr(self, "_balance_names", None) != names:
            figure.clear()
            ax = figure.add_subplot(111)
            x = np.arange(len(names))
            self._balance_bars = ax.bar(x - 0.2, np.zeros(len(names)), 0.4, label="in patches (last 10 steps)")
            self._volume_bars = ax.bar(x + 0.2, np.zeros(len(names)), 0.4, label="in whole volumes")
            ax.set_xticks(x)
            ax.set_xticklabels(names, fontsize=7)
            ax.set_ylabel("voxel fraction")
            ax.legend(fontsize=6)
            self._balance_ax, self._balance_names = ax, names
        recent = self.history.recent_class_fractions()
        if recent is None or not names:
            return
        volumes = run.volume_class_fractions[1:]
        for bar, value in zip(self._balance_bars, recent[1:]):
            bar.set_height(value)
        for bar, value in zip(self._volume_bars, volumes):
            bar.set_height(value)
        self._balance_ax.set_ylim(0, 1.15 * max(max(recent[1:]), max(volumes), 1e-3))
