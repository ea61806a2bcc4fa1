"""One fold of the event stream: live events and a run folder's metrics.jsonl fold the same way."""

from __future__ import annotations

import pytest
from helpers import quick_config, run_events

from napari_pgps import train
from napari_pgps.engine import TrainingProgress, describe_event, fold, read_events
from napari_pgps.events import (
    CasesAdded,
    CheckpointSaved,
    PruningStep,
    Replanned,
    RunStarted,
    StageStarted,
    StepDone,
    Validated,
    event_from_dict,
)


@pytest.fixture(scope="module")
def pgps_run(tmp_path_factory, phantom_dataset):
    """A short PGPS run with PDL: (its events, its run folder)."""
    config = quick_config(phantom_dataset, epochs=4, iterations=2)
    config.curriculum.schedule = "pgps-performance"
    config.curriculum.pdl.enabled = True
    config.curriculum.pdl.groups = 2
    config.training.validate_every = 2
    run_dir = tmp_path_factory.mktemp("progress") / "run"
    return run_events(train(config, run_dir)), run_dir


def test_the_log_reads_back_into_the_same_events(pgps_run):
    events, run_dir = pgps_run
    assert list(read_events(run_dir)) == events
    for event in events:
        assert event_from_dict(event.to_dict()) == event


def test_the_fold_holds_what_the_faces_show(pgps_run):
    events, _ = pgps_run
    progress = fold(events)
    steps = [e for e in events if isinstance(e, StepDone)]
    assert progress.started.schedule == "pgps-performance"
    assert progress.total_steps == progress.steps_done == 8 == len(steps) and progress.step == 8
    assert progress.training_seconds == pytest.approx(sum(s.seconds for s in steps))
    assert [v.result.epoch for v in progress.validations] == [2, 4]
    assert [v.step for v in progress.validations] == [4, 8]
    assert progress.validations[0].training_seconds == pytest.approx(sum(s.seconds for s in steps[:4]))
    assert progress.last_dice == progress.validations[-1].result.mean_dice
    assert [s.patch for s in progress.stages_started] == [e.patch for e in events if isinstance(e, StageStarted)]
    assert len(progress.stages_started) >= 2 and len(progress.stages_finished) == len(progress.stages_started)
    assert progress.cases.cases == progress.cases.total  # PDL: every case in by the end
    recent = progress.recent_class_fractions(3)
    assert recent == pytest.approx([sum(f) / 3 for f in zip(*(s.class_fractions for s in steps[-3:]))])
    assert progress.finished is events[-1] and progress.checkpoint.endswith("checkpoint_final.pt")
    assert progress.eta_seconds == 0.0


def test_one_line_per_event_worth_telling(pgps_run):
    events, _ = pgps_run
    progress = TrainingProgress()
    lines = [describe_event(e, progress.update(e)) for e in events]
    told = {type(e).__name__: line for e, line in zip(events, lines) if line is not None}
    assert told["RunStarted"].startswith("training PGPS model (dynunet network) on CPU")
    assert "PDL trains on the" in told["CasesAdded"]
    assert told["Validated"].startswith("epoch 4: validation Dice lesion")
    assert told["Finished"].startswith("finished after 4 epochs, 8 steps")
    # the epoch summary is told once per epoch, at its first checkpoint
    summaries = [line for e, line in zip(events, lines) if isinstance(e, CheckpointSaved) and line]
    assert [line.split(":")[0] for line in summaries] == ["epoch 1", "epoch 2", "epoch 3", "epoch 4"]
    assert all("s/step, ETA" in line for line in summaries)
    quiet = [describe_event(e, fold(events[: i + 1]), quiet=True) for i, e in enumerate(events)]
    assert {type(e) for e, line in zip(events, quiet) if line} == {RunStarted, Validated, type(events[-1])}


def test_pruning_and_resumed_runs_fold_too():
    progress = TrainingProgress()
    progress.update(RunStarted(run_dir=None, device="CPU", training_cases=4, validation_cases=1, parameters=1000,
                               start_epoch=2, epochs=5, iterations_per_epoch=10, final_patch=(8, 8, 8),
                               schedule="constant", label_names=("background", "a"), volume_class_fractions=(0.9, 0.1)))
    assert progress.total_steps == 30 and progress.step == 20 and progress.eta_seconds is None
    progress.update(PruningStep(epoch=2, action="removed", branches=("bottleneck 1x1x1",), parameters=800, prune_step=2))
    progress.update(CasesAdded(epoch=2, cases=3, total=4, names=("a", "b", "c")))
    assert progress.parameters == [(2, 1000), (2, 800)] and progress.cases.cases == 3


def test_a_budgeted_runs_time_left_is_its_plans_not_its_cheap_first_steps_pace():
    """PGPS's first stages are cheap: at their pace, a 2-hour run said 16 minutes were left after 40."""
    progress = TrainingProgress()
    progress.update(RunStarted(run_dir=None, device="CPU", training_cases=4, validation_cases=1, parameters=1000,
                               start_epoch=0, epochs=10, iterations_per_epoch=10, final_patch=(8, 8, 8),
                               schedule="pgps-efficiency", label_names=("background", "a"),
                               volume_class_fractions=(0.9, 0.1), time_budget=7200.0, expected_seconds=7000.0))
    progress.update(StepDone(epoch=0, step=1, loss=1.0, patch=(2, 2, 2), batch=64, class_fractions=(0.9, 0.1),
                             seconds=0.01, learning_rate=1e-3))
    assert 6990 < progress.eta_seconds <= 7000  # the plan's, where the pace of one cheap step says about 1 s
    progress.update(Replanned(epoch=1, slowdown=1.0, epochs=10, expected_seconds=3000.0))
    assert 2990 < progress.eta_seconds <= 3000
