"""The widgets' one background-job helper and one event presenter, on bare Qt controls (no model, no viewer)."""

import time

import napari.utils.notifications
import pytest
from qtpy.QtWidgets import QLabel, QProgressBar, QPushButton

from napari_pgps._widgets.jobs import Job, error_line
from napari_pgps._widgets.presenter import RunPresenter, status_line
from napari_pgps.engine import Cancelled, TrainingProgress, describe_event
from napari_pgps.errors import InputError
from napari_pgps.events import Finished, PruningReport, RunStarted, StepDone

pytestmark = pytest.mark.gui


@pytest.fixture
def shown(monkeypatch):
    """The napari error and warning notifications shown, as ("error" | "warning", text)."""
    said = []
    monkeypatch.setattr(napari.utils.notifications, "show_error", lambda text: said.append(("error", str(text))))
    monkeypatch.setattr(napari.utils.notifications, "show_warning", lambda text: said.append(("warning", str(text))))
    return said


@pytest.fixture
def job(qtbot):
    status, progress, start, stop = QLabel("idle"), QProgressBar(), QPushButton("Start"), QPushButton("Stop")
    for widget in (status, progress, start, stop):
        qtbot.addWidget(widget)
    return Job("Counting", status, progress, buttons=[start], stop_buttons=[stop], cancelled="cancelled; nothing kept")


def _buttons(job: Job) -> tuple[bool, bool]:
    return job.buttons[0].isEnabled(), job.stop_buttons[0].isEnabled()


def count_until_stopped(control, pause: float = 0.01):
    """Yields 0, 1, 2, ... until asked to stop; returns how many it yielded."""
    for number in range(100_000):
        if control.stop_requested:
            return number
        yield number
        time.sleep(pause)
    return -1


def test_a_job_runs_in_the_background_and_stops_when_asked(job, qtbot, shown):
    assert _buttons(job) == (True, False) and not job.running
    first_control = job.control
    seen, returned, finished = [], [], []
    job.start(count_until_stopped, control=job.control, yielded=seen.append, returned=returned.append,
              finished=lambda: finished.append(_buttons(job)))
    assert job.running and _buttons(job) == (False, True)
    assert job.progress.maximum() == 0  # busy until the job says more
    qtbot.waitUntil(lambda: len(seen) >= 3, timeout=10_000)
    job.stop()
    qtbot.waitUntil(lambda: not job.running, timeout=10_000)
    assert returned and 3 <= returned[0] < 100_000 and seen == list(range(len(seen)))
    assert finished == [(True, False)] and _buttons(job) == (True, False)  # the buttons were back before `finished`
    assert first_control.stop_requested and not job.control.stop_requested  # the next job starts afresh
    assert job.status.text() == "idle" and not shown  # a stop is no failure
    assert job.progress.maximum() == 1  # no longer busy


def test_stop_while_idle_does_not_stop_the_next_job(job, qtbot):
    job.stop()
    seen = []
    job.start(count_until_stopped, control=job.control, yielded=seen.append)
    qtbot.waitUntil(lambda: len(seen) >= 3, timeout=10_000)
    job.stop()
    qtbot.waitUntil(lambda: not job.running, timeout=10_000)


def _fails(exception: BaseException):
    raise exception


@pytest.mark.parametrize(("exception", "line"), [
    (InputError("dataset folder not found.\nGive the folder of a dataset."),
     "dataset folder not found.\nGive the folder of a dataset."),  # the user's problem, said as the engine says it
    (RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB"), "RuntimeError: CUDA out of memory."),
    (KeyError(), "KeyError"),
])
def test_a_failure_is_said_in_one_line_and_the_widget_returns_to_idle(job, qtbot, shown, exception, line):
    failed = []
    job.start(_fails, exception, failed=failed.append)
    qtbot.waitUntil(lambda: not job.running, timeout=10_000)
    assert error_line(exception) == line
    assert shown == [("error", f"Counting failed: {line}")]
    assert job.status.text() == f"failed: {line}" and job.progress.format() == "failed"
    assert failed == [exception] and _buttons(job) == (True, False)


def test_a_cancelled_segmentation_says_so_without_an_error(job, qtbot, shown):
    job.start(_fails, Cancelled())
    qtbot.waitUntil(lambda: not job.running, timeout=10_000)
    assert job.status.text() == "cancelled; nothing kept" and not shown and _buttons(job) == (True, False)


def test_a_job_runs_one_at_a_time(job, qtbot):
    job.start(count_until_stopped, control=job.control)
    with pytest.raises(RuntimeError, match="already running"):
        job.start(count_until_stopped, control=job.control)
    job.stop()
    qtbot.waitUntil(lambda: not job.running, timeout=10_000)


def _started(**fields) -> RunStarted:
    values = dict(run_dir=None, device="CPU", training_cases=4, validation_cases=1, parameters=12_345, start_epoch=0,
                  epochs=2, iterations_per_epoch=3, final_patch=(16, 64, 64), schedule="constant",
                  label_names=("background", "lesion"), volume_class_fractions=(0.9, 0.1))
    return RunStarted(**{**values, **fields})


def _step(step: int) -> StepDone:
    return StepDone(epoch=0, step=step, loss=0.5, patch=(16, 64, 64), batch=2, class_fractions=(0.9, 0.1),
                    seconds=0.1, learning_rate=0.01)


def test_the_presenter_says_what_the_command_line_says(qtbot, shown):
    status = QLabel("idle")
    qtbot.addWidget(status)
    presenter = RunPresenter(status)
    reference = TrainingProgress()
    started = _started(notes=("the pruning window is too short", "another note"))
    history = presenter.show(started)
    assert history is presenter.history and history.started is started
    described = describe_event(started, reference.update(started))
    assert status.text() == described.splitlines()[0] and "\n" not in status.text()
    assert status.text().startswith("training FP model (dynunet network) on CPU: 4 training / 1 validation")
    assert shown == [("warning", "the pruning window is too short"), ("warning", "another note")]

    presenter.show(_step(1))  # nothing to tell: the line stays
    assert status.text() == described.splitlines()[0] and presenter.history.steps_done == 1
    end = Finished(stopped=True, epochs_completed=0, steps=1, training_seconds=0.1, final_mean_dice=None,
                   checkpoint=None)
    presenter.show(end)
    assert status.text() == describe_event(end, reference.update(end)) and status.text().startswith("stopped")
    assert len(shown) == 2  # the notes are shown once

    presenter.reset()
    assert presenter.history.started is None and presenter.history.steps == []


def test_the_presenter_shows_the_recipe_of_the_run_until_the_next_starts(qtbot, shown):
    status, recipe = QLabel("idle"), QLabel()
    qtbot.addWidget(status)
    qtbot.addWidget(recipe)
    presenter = RunPresenter(status, recipe)
    lines = ("schedule: pgps-efficiency (it won at equal time)", "length: as many epochs as fit 15 min (the budget)")
    presenter.show(_started(recipe=lines))
    assert recipe.text().splitlines() == list(lines)
    assert "recipe" not in status.text()  # the status keeps the run's first line
    presenter.show(_step(1))
    assert recipe.text().splitlines() == list(lines)
    presenter.reset()
    assert recipe.text() == ""


def test_a_line_of_several_is_shown_by_its_first():
    report = PruningReport(before_name="trained model", before={}, after={}, table="| a | b |\n|---|---|",
                           path="/runs/pruned/pruning_report.json")
    assert status_line(report, TrainingProgress()) == "| a | b |"
    assert status_line(_step(1), TrainingProgress()) is None
