"""The Train widget: train in the background and watch the patch grow and the class balance change."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Optional

import numpy as np
from magicgui.widgets import ComboBox, LineEdit, PushButton, RadioButton
from qtpy.QtWidgets import QLabel, QListWidget, QProgressBar, QVBoxLayout, QWidget

from ..config import DEVICES, RunConfig
from ..engine.progress import TrainingProgress, duration_text
from ..engine.resolve import PROFILES
from ..engine.run_folder import STOPPED_RUN, RunFolder
from ..errors import InputError
from ..events import Event, RunStarted, StepDone, Validated
from .forms import CHANNEL_SEPARATOR, MODEL_FILES, ChannelPicker, PathField, count_box, form, qt_field, row
from .jobs import Job
from .layers import box_outlines, find_layer, placement, training_set_from_layers
from .plots import PlotCanvas
from .presenter import RunPresenter, recipe_label
from .state import state_for

OVERLAY_NAME = "training patches"
OVERLAY_INTERVAL_S = 0.5


def _train(config: RunConfig, run_dir: Path, dataset, control, resume: bool = False):
    """The training generator (every method plugged in), imported and run by napari's thread worker off the GUI
    thread."""
    from ..tasks.training import train

    yield from train(config, run_dir, dataset=dataset, control=control, resume=resume)


def with_run_settings(config: RunConfig, device: str, time_budget: Optional[float]) -> RunConfig:
    """A copy of ``config`` as the Train widget starts it: on ``device``, planned to ``time_budget`` seconds in place
    of its epochs (``None``: its epochs, or the device's default budget where it has none)."""
    config = copy.deepcopy(config)
    config.training.device = device
    if time_budget:
        config.training.time_budget, config.training.epochs = time_budget, None
    else:
        config.training.time_budget = None
    return config


def stopped_run(path: Optional[Path]) -> Optional[RunFolder]:
    """The run folder ``path`` if it holds a run that can be continued (:attr:`RunFolder.resumable`), else ``None``."""
    try:
        return RunFolder.to_resume(path)
    except InputError:
        return None


def _until(steps: list, dice: list, started: RunStarted) -> tuple[list, list]:
    """Steps and (step, mean Dice) points up to the epoch ``started`` resumes at (later ones are taken again)."""
    last = started.start_epoch * started.iterations_per_epoch
    return [s for s in steps if s.step <= last], [(step, d) for step, d in dice if step <= last]


def logged_curves(events: list[Event]) -> tuple[list[StepDone], list[tuple[int, float]]]:
    """The steps and the (step, mean Dice) validations a run logged (:meth:`RunFolder.events`), for the curves of a
    run resumed from it; steps that a later resume took again are left out."""
    steps: list[StepDone] = []
    dice: list[tuple[int, float]] = []
    for event in events:
        if isinstance(event, RunStarted):
            steps, dice = _until(steps, dice, event)
        elif isinstance(event, StepDone):
            steps.append(event)
        elif isinstance(event, Validated):
            dice.append((steps[-1].step if steps else 0, event.mean_dice))
    return steps, dice


class TrainWidget(QWidget):
    """Data from the open layers or a dataset folder; start, pause, stop; live plots and a patch overlay."""

    def __init__(self, napari_viewer, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = state_for(napari_viewer)
        self.run_dir: Optional[Path] = None

        from_layers = RadioButton(text="open layers", value=True)
        from_folder = RadioButton(text="dataset folder")
        self.image_choice = ChannelPicker(napari_viewer, exclude=(OVERLAY_NAME,))
        labels_choice = ComboBox(choices=self._labels_layers)
        add_pair, remove_pair = PushButton(text="Add pair"), PushButton(text="Remove")
        self.pairs = QListWidget()
        self.pairs.setMaximumHeight(70)
        channel_names = LineEdit(label="Channels", tooltip=(
            "The modality of each image channel, comma-separated in channel order (e.g. \"CT\" or \"T1, FLAIR\"): a "
            "channel named CT is clipped to its foreground intensity percentiles, as nnU-Net does; any other is "
            "z-scored."))
        channel_names.native.setPlaceholderText("channel 0, channel 1, ...")
        self.folder = PathField("Decathlon or nnU-Net v2 dataset folder", caption="Dataset folder")
        self.run_root = PathField(caption="Runs folder")
        self.run_root.setText(str(Path.home() / "napari-pgps-runs"))
        device = ComboBox(label="Device", choices=list(DEVICES))
        self.time_budget = count_box(0, 24 * 60, 0, "the Curriculum's epochs", " min")
        self.time_budget.setToolTip(
            "Plan the run to end within this many minutes (its step cost is measured first); 0 trains the epochs set "
            "in the Curriculum widget, or, where they are automatic, fills the device's default budget "
            f"({PROFILES['cpu'].time_budget / 60:.0f} min on a CPU).")
        self.init_from = PathField("empty: fresh weights", MODEL_FILES, "Model to start from")
        self.init_from.setToolTip("A trained model (run folder, checkpoint .pt or model package .zip) whose network "
                                  "and weights the new run starts from; its labels and channels must be the data's.")
        self.resume_from = PathField("run folder of a stopped run", caption="Run folder to resume")
        self.resume_from.setToolTip(f"The folder of a stopped run ({STOPPED_RUN}): Resume run continues it there "
                                    "with its own settings.")
        start, pause, stop = PushButton(text="Start"), PushButton(text="Pause"), PushButton(text="Stop")
        resume = PushButton(text="Resume run", tooltip="Continue the stopped run chosen above from its last "
                                                       "checkpoint, in its own folder.")
        self.form = form(
            row(from_layers, from_folder, label="Training data"),
            row(qt_field(self.image_choice), labels_choice, add_pair, remove_pair, label="Image / labels"),
            qt_field(self.pairs),
            channel_names,
            qt_field(self.folder, "Folder"),
            qt_field(self.run_root, "Runs folder"),
            device,
            qt_field(self.time_budget, "Time budget"),
            qt_field(self.init_from, "Start from model"),
            qt_field(self.resume_from, "Stopped run"),
        )
        self.from_layers, self.from_folder = from_layers.native, from_folder.native
        self.labels_choice, self.add_pair, self.remove_pair = labels_choice.native, add_pair.native, remove_pair.native
        self.channel_names, self.device = channel_names.native, device.native
        self.start, self.resume, self.pause, self.stop = start.native, resume.native, pause.native, stop.native
        self.progress = QProgressBar()
        self.device_label = QLabel("device: not started")
        self.status = QLabel("idle")
        self.status.setWordWrap(True)
        self.recipe = recipe_label()
        self.curves = PlotCanvas(self._draw_curves, height=3.2)
        self.balance = PlotCanvas(self._draw_balance, height=2.0)

        layout = QVBoxLayout(self)
        layout.addWidget(self.form.native)
        layout.addWidget(row(start, resume, pause, stop).native)
        for widget in (self.progress, self.device_label, self.status, self.recipe, self.curves, self.balance):
            layout.addWidget(widget)

        self.job = Job("Training", self.status, self.progress, buttons=[self.start, self.resume],
                       stop_buttons=[self.pause, self.stop])
        self.presenter = RunPresenter(self.status, self.recipe)
        self._reset_history()
        add_pair.clicked.connect(self._add_pair)
        remove_pair.clicked.connect(lambda: self.pairs.takeItem(self.pairs.currentRow()))
        self.folder.chosen.connect(lambda _: self.from_folder.setChecked(True))
        start.clicked.connect(self.start_training)
        resume.clicked.connect(self.resume_training)
        self.resume_from.edited.connect(self._update_resume_button)
        pause.clicked.connect(self.toggle_pause)
        stop.clicked.connect(self.stop_training)
        device.changed.connect(self._share_run_settings)
        self.time_budget.valueChanged.connect(self._share_run_settings)
        self.viewer.layers.events.inserted.connect(labels_choice.reset_choices)
        self.viewer.layers.events.removed.connect(labels_choice.reset_choices)
        self._update_resume_button()
        self._share_run_settings()

    def _budget_seconds(self) -> Optional[float]:
        """The time budget in seconds; ``None`` for none."""
        return 60.0 * self.time_budget.value() if self.time_budget.value() else None

    def _share_run_settings(self, *_) -> None:
        """Tell the other widgets the device and budget, on which the run's recipe depends."""
        self.state.set_run_settings(self.device.currentText(), self._budget_seconds())

    @property
    def worker(self):
        """napari's worker while a run is under way, ``None`` when idle."""
        return self.job.worker

    @property
    def history(self) -> TrainingProgress:
        """The run's events so far, folded."""
        return self.presenter.history

    # -- data -----------------------------------------------------------------
    def _labels_layers(self, *_) -> list[str]:
        """The names of the open Labels layers the widget offers (not the training patches)."""
        from napari.layers import Labels

        return [layer.name for layer in self.viewer.layers if isinstance(layer, Labels) and layer.name != OVERLAY_NAME]

    def _add_pair(self) -> None:
        if self.image_choice.text() and self.labels_choice.currentText():
            self.pairs.addItem(f"{self.image_choice.text()} | {self.labels_choice.currentText()}")
            self.image_choice.reset()

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

        config = with_run_settings(self.state.config, self.device.currentText(), self._budget_seconds())
        config.training.init_from = str(Path(self.init_from.text()).expanduser()) if self.init_from.text() else None
        dataset = None
        try:
            if self.from_folder.isChecked():
                if not self.folder.text():
                    raise InputError("choose a dataset folder, or train from the open layers.")
                config.data.path = self.folder.text()
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

        dataset, data_text = None, ""
        try:
            folder = RunFolder.to_resume(Path(self.resume_from.text()).expanduser() if self.resume_from.text() else None)
            trained = folder.config()
            if trained.data.path:
                data_text = f"its dataset folder {trained.data.path}"
            else:  # trained on napari layers: they are not in the run folder, the same layers must be chosen again
                pairs = self.layer_pairs()
                needed = self._case_names(folder)
                missing = [name for name in needed if name not in {channels[0].name for channels, _ in pairs}]
                if missing:
                    raise InputError(f"{folder.path.name} was trained on the layers {', '.join(missing)}, which are "
                                     "not chosen under Image / labels; choose the same image and labels layers to "
                                     "resume it.")
                dataset = training_set_from_layers(pairs, trained.channels)  # the run's own channel names
                data_text = "the layers chosen above"
        except InputError as exc:
            show_error(f"Cannot resume: {exc}")
            return
        config = copy.deepcopy(self.state.config)  # the run's stored settings are used; only the device is ours
        config.training.device = self.device.currentText()
        self._reset_history()
        try:
            self._earlier_steps, self._earlier_dice = logged_curves(folder.events())
        except InputError:  # a damaged log: the curves start at the resume
            pass
        self._launch(config, folder.path, dataset, resume=True)
        self.status.setText(f"resuming {folder.path.name} from its last checkpoint (its own settings) on {data_text}...")

    @staticmethod
    def _case_names(folder: RunFolder) -> list[str]:
        """The training and validation case names of a run (none when its split cannot be read)."""
        try:
            split = folder.split()
        except InputError:
            split = None
        return list(dict.fromkeys([*split["training"], *split["validation"]])) if split else []

    def _launch(self, config: RunConfig, run_dir: Path, dataset, resume: bool = False) -> None:
        """Train in napari's thread worker (a new run, or ``resume`` the one in ``run_dir``)."""
        self.run_dir = run_dir
        self.job.start(_train, config, run_dir, dataset, self.job.control, resume, yielded=self._on_event,
                       finished=self._on_finished)
        self._update_resume_button()

    def toggle_pause(self) -> None:
        if not self.job.running:
            return
        if self.job.control.paused:
            self.job.control.resume()
        else:
            self.job.control.pause()

    def stop_training(self) -> None:
        """Ask the run to stop after the current step; its last checkpoint is kept."""
        if self.job.running:
            self.job.stop()
            self.status.setText("stopping after this step...")

    def _update_resume_button(self, *_) -> None:
        """Resume run is offered, while idle, for a run folder with a last checkpoint and no final one."""
        run_dir = Path(self.resume_from.text()).expanduser() if self.resume_from.text() else None
        self.resume.setEnabled(not self.job.running and stopped_run(run_dir) is not None)

    # -- events -------------------------------------------------------------------
    def _reset_history(self) -> None:
        self.presenter.reset()
        self._last_overlay = 0.0
        self._earlier_steps: list[StepDone] = []  # a resumed run's steps and validations before it stopped
        self._earlier_dice: list[tuple[int, float]] = []

    def _on_event(self, event: Event) -> None:
        history = self.presenter.show(event)
        if history.started is event:
            self.device_label.setText(f"device: {event.device}")
            # the whole run's steps: a resumed run's bar and curves go on from the step it stopped at
            self._earlier_steps, self._earlier_dice = _until(self._earlier_steps, self._earlier_dice, event)
        self._show_progress(history)
        self.pause.setText("Resume" if history.paused else "Pause")
        self.curves.mark_stale()
        self.balance.mark_stale()
        if isinstance(event, StepDone) and time.perf_counter() - self._last_overlay >= OVERLAY_INTERVAL_S:
            self._show_patches(event)
        if history.finished is event:
            run = stopped_run(self.run_dir)
            if event.stopped and run is not None:
                self.status.setText(self.status.text() + "; Resume run continues it")
                self.resume_from.setText(str(run.path))
            if event.checkpoint:
                self.state.set_last_model(self.run_dir)

    def _show_progress(self, history: TrainingProgress) -> None:
        """The data preparation's cases, then the whole run's steps (a resumed run's from its start) and the time
        left."""
        started, preparing = history.started, history.preparing
        if started is None and preparing is not None:
            what = {"fingerprint": "reading the cases", "timing": "timing a step to choose the spacing"}.get(
                preparing.task, "preprocessing the cases")
            self.job.show_progress(f"{what}: %v / %m", preparing.done, preparing.total)
        elif started is not None:
            eta = history.eta_seconds
            self.job.show_progress("%v / %m steps" + (f", ETA {duration_text(eta)}" if eta is not None else ""),
                                   history.step, max(started.epochs * started.iterations_per_epoch, 1))

    def _on_finished(self) -> None:
        self.pause.setText("Pause")
        self._update_resume_button()
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
