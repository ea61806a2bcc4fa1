"""The Train widget continues a stopped run (Resume run) and starts a new run from a trained model's weights."""

import shutil

import napari.utils.notifications
import pytest
import torch

from napari_pgps._sample_data import phantom_layers
from napari_pgps._widgets.state import state_for
from napari_pgps._widgets.train_widget import TrainWidget
from napari_pgps.config import RunConfig
from napari_pgps.engine import load_checkpoint, read_events
from napari_pgps.events import CheckpointSaved, Finished, RunStarted, StepDone

pytestmark = pytest.mark.gui

LAST, FINAL = "checkpoint_last.pt", "checkpoint_final.pt"


@pytest.fixture
def viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    for data, meta, kind in phantom_layers():
        getattr(viewer, f"add_{kind}")(data, **meta)
    return viewer


@pytest.fixture
def errors(monkeypatch):
    """The texts of the error notifications shown (the widget imports show_error when it needs it)."""
    shown = []
    monkeypatch.setattr(napari.utils.notifications, "show_error", lambda message: shown.append(str(message)))
    return shown


def trainer_for(viewer, runs, epochs: int, iterations: int) -> TrainWidget:
    """A Train widget set up for a tiny CPU run: constant 16x64x64 patches, 8 base channels, one validation."""
    trainer = TrainWidget(viewer)
    viewer.window.add_dock_widget(trainer)
    config = state_for(viewer).config
    config.curriculum.schedule = "constant"
    config.model.base_channels = 8
    config.model.patch_size = (16, 64, 64)
    config.training.epochs, config.training.iterations_per_epoch = epochs, iterations
    config.training.validate_every = epochs
    trainer.run_root.setText(str(runs))
    trainer.device.setCurrentText("cpu")
    return trainer


def test_a_stopped_run_resumes_where_it_stopped(viewer, qtbot, tmp_path, errors):
    epochs, iterations = 5, 2
    trainer = trainer_for(viewer, tmp_path, epochs, iterations)
    assert not trainer.resume.isEnabled()
    trainer.start_training()
    run_dir = trainer.run_dir
    qtbot.waitUntil(lambda: (run_dir / LAST).is_file(), timeout=300_000)  # an epoch's checkpoint exists
    trainer.stop_training()
    qtbot.waitUntil(lambda: trainer.worker is None, timeout=60_000)
    stopped = trainer.history.finished
    assert stopped is not None and stopped.stopped and stopped.steps < epochs * iterations, "stopped too late"
    assert not (run_dir / FINAL).exists()
    assert trainer.resume_from.text() == str(run_dir) and trainer.resume.isEnabled()
    assert "Resume run" in trainer.status.text()

    # the run was trained on layers: resuming it needs the same layers chosen
    viewer.layers["phantom"].name = "phantom moved"
    trainer.resume_training()
    assert trainer.worker is None and len(errors) == 1 and "phantom" in errors[0] and "resume" in errors[0]
    viewer.layers["phantom moved"].name = "phantom"

    trainer.resume.click()
    assert not trainer.resume.isEnabled() and not trainer.start.isEnabled() and trainer.stop.isEnabled()
    qtbot.waitUntil(lambda: trainer.worker is None, timeout=600_000)
    assert len(errors) == 1, errors

    events = list(read_events(run_dir))
    starts = [i for i, e in enumerate(events) if isinstance(e, RunStarted)]
    assert len(starts) == 2
    saved = [e.epoch for e in events[:starts[1]] if isinstance(e, CheckpointSaved)]  # the log ends at its checkpoint
    resumed = events[starts[1]]
    assert resumed.start_epoch == saved[-1] >= 1  # the stopped run's last checkpoint, not epoch 0
    steps = [e.step for e in events[starts[1]:] if isinstance(e, StepDone)]
    assert steps == list(range(resumed.start_epoch * iterations + 1, epochs * iterations + 1))
    end = events[-1]
    assert isinstance(end, Finished) and not end.stopped
    assert (end.epochs_completed, end.steps) == (epochs, epochs * iterations)
    assert (run_dir / FINAL).is_file() and not trainer.resume.isEnabled()

    # the widget went on from the resumed epoch: the bar counts the whole run, the curves hold every step once
    assert trainer.history.started.start_epoch == resumed.start_epoch
    assert trainer.history.steps[0].step == resumed.start_epoch * iterations + 1
    assert (trainer.progress.value(), trainer.progress.maximum()) == (epochs * iterations, epochs * iterations)
    assert list(trainer._curve_lines["loss"].get_xdata()) == list(range(1, epochs * iterations + 1))
    assert trainer.status.text().startswith("finished")


def test_a_run_trained_from_a_dataset_folder_resumes_on_that_folder(viewer, qtbot, tmp_path, errors,
                                                                     trained_phantom_run):
    run_dir = tmp_path / "stopped"
    shutil.copytree(trained_phantom_run, run_dir)
    (run_dir / FINAL).unlink()
    trainer = trainer_for(viewer, tmp_path / "runs", 1, 1)  # the layers are chosen; the run's folder is used
    trainer.resume_from.setText(str(trained_phantom_run))
    assert not trainer.resume.isEnabled()  # a finished run
    trainer.resume_from.setText(str(run_dir))
    assert trainer.resume.isEnabled()
    trainer.resume.click()
    qtbot.waitUntil(lambda: trainer.worker is None, timeout=300_000)
    assert not errors
    started = trainer.history.started
    assert started.start_epoch == started.epochs == 2 and started.training_cases + started.validation_cases == 6
    assert (run_dir / FINAL).is_file() and not (tmp_path / "runs").exists()


def test_a_new_run_starts_from_the_model_chosen(viewer, qtbot, tmp_path, errors, phantom_dataset,
                                                trained_phantom_run):
    trainer = trainer_for(viewer, tmp_path, 1, 1)
    config = state_for(viewer).config
    config.model.base_channels = config.model.patch_size = None  # the network is the model's
    config.training.learning_rate = 0.0  # the one step leaves the weights as they started
    trainer.from_folder.setChecked(True)
    trainer.folder.setText(str(phantom_dataset))  # the model's labels and channels
    trainer.init_from.setText(str(trained_phantom_run))
    trainer.start_training()
    qtbot.waitUntil(lambda: trainer.worker is None, timeout=300_000)
    assert not errors and trainer.status.text().startswith("finished")

    model = load_checkpoint(trained_phantom_run / FINAL)
    saved = RunConfig.load(trainer.run_dir / "config.yaml")
    assert saved.training.init_from == str((trained_phantom_run / FINAL).resolve())
    assert trainer.history.started.start_epoch == 0 and saved.model.patch_size == (8, 32, 32)
    weights = load_checkpoint(trainer.run_dir / FINAL)["model"]
    assert weights.keys() == model["model"].keys()
    for name, value in model["model"].items():
        torch.testing.assert_close(weights[name], value, rtol=0, atol=0, msg=name)


def test_a_model_with_other_labels_is_refused(viewer, qtbot, tmp_path, errors, trained_phantom_run):
    labels = viewer.layers["phantom labels"]
    viewer.add_labels(labels.data.copy(), name="other labels", scale=labels.scale,
                      metadata={"label_names": {0: "background", 1: "tumour", 2: "oedema"}})
    trainer = trainer_for(viewer, tmp_path, 1, 1)
    trainer.labels_choice.setCurrentText("other labels")
    trainer.init_from.setText(str(trained_phantom_run))
    trainer.start_training()
    qtbot.waitUntil(lambda: trainer.worker is None, timeout=120_000)
    assert len(errors) == 1 and "labels differ" in errors[0] and "tumour" in errors[0], errors
    assert trainer.status.text().startswith("failed")
    assert trainer.start.isEnabled() and not trainer.stop.isEnabled() and not trainer.pause.isEnabled()
    assert not trainer.resume.isEnabled() and not list(tmp_path.rglob("checkpoint_*.pt"))


def test_the_model_field_browses_model_files_or_a_folder(viewer, monkeypatch, tmp_path):
    from napari_pgps._widgets import forms

    asked = {}

    def open_file(parent, caption, start, file_filter):
        asked["filter"] = file_filter
        return str(tmp_path / "model.zip"), file_filter

    monkeypatch.setattr(forms.QFileDialog, "getOpenFileName", open_file)
    monkeypatch.setattr(forms.QFileDialog, "getExistingDirectory", lambda parent, caption, start: str(tmp_path))
    trainer = TrainWidget(viewer)
    file_action, folder_action = trainer.init_from.browse.menu().actions()
    file_action.trigger()
    assert asked["filter"] == "Models (*.pt *.zip)" and trainer.init_from.text() == str(tmp_path / "model.zip")
    folder_action.trigger()
    assert trainer.init_from.text() == str(tmp_path)
