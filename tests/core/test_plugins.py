"""The training loop's plug-in points, and the rules the engine keeps for every face (run folder, split)."""

from __future__ import annotations

import json

import pytest
from helpers import quick_config

from napari_pgps.data import load_training_set
from napari_pgps.engine import TrainingControl, load_model
from napari_pgps.engine import train as engine_train
from napari_pgps.errors import InputError
from napari_pgps.events import Event, Finished, StepDone
from napari_pgps.plugins import TrainingPlugin


class Recorder(TrainingPlugin):
    """A plug-in that records every hook call, adds a (zero) loss term and counts steps in its state."""

    name = "recorder"

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.steps = 0

    def start(self, run):
        self.calls.append(("start", run.config.training.epochs))

    def epoch_start(self, run, epoch):
        self.calls.append(("epoch_start", epoch))
        return ()

    def forward(self, run, images):
        self.calls.append(("forward", tuple(images.shape)))
        return None

    def loss_terms(self, run, images, labels):
        self.steps += 1
        self.calls.append(("loss_terms",))
        return {"nothing": 0.0 * images.sum()}

    def epoch_end(self, run, epoch, losses):
        self.calls.append(("epoch_end", epoch, sorted(losses)))

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.calls.append(("load_state_dict", state["steps"]))
        self.steps = state["steps"]


def test_a_plugin_receives_the_hooks_in_order(phantom_dataset):
    plugin = Recorder()
    list(engine_train(quick_config(phantom_dataset, epochs=2, iterations=2), plugins=[plugin]))
    per_step = [("forward", (2, 1, 8, 32, 32)), ("loss_terms",)]
    epoch = lambda e: [("epoch_start", e), *per_step, *per_step, ("epoch_end", e, ["segmentation"])]  # noqa: E731
    assert plugin.calls == [("start", 2), *epoch(0), *epoch(1)]


def test_a_plugin_state_is_saved_and_restored_on_resume(tmp_path, phantom_dataset):
    run_dir = tmp_path / "run"
    control = TrainingControl()
    first = Recorder()
    for event in engine_train(quick_config(phantom_dataset, epochs=3, iterations=2), run_dir, control=control,
                              plugins=[first]):
        if isinstance(event, StepDone) and event.step == 3:
            control.stop()
    # the last checkpoint is after epoch 1 (2 steps); step 3 ran but its epoch never finished
    resumed = Recorder()
    events = list(engine_train(quick_config(phantom_dataset), run_dir, resume=True, plugins=[resumed]))
    assert resumed.calls[:3] == [("start", 3), ("load_state_dict", 2), ("epoch_start", 1)]
    assert resumed.steps == 2 + 4 and events[-1].epochs_completed == 3


def test_the_loop_refuses_a_configuration_whose_method_it_was_not_given(phantom_dataset):
    config = quick_config(phantom_dataset)
    config.curriculum.pdl.enabled = True
    with pytest.raises(InputError, match="asks for pdl"):
        next(iter(engine_train(config)))


def test_a_method_plugin_can_yield_events(phantom_dataset):
    class Announcer(TrainingPlugin):
        name = "announcer"

        def epoch_start(self, run, epoch):
            yield Finished(stopped=False, epochs_completed=epoch, steps=0, training_seconds=0.0, final_mean_dice=None,
                           checkpoint=None)

    events = list(engine_train(quick_config(phantom_dataset, epochs=2, iterations=1), plugins=[Announcer()]))
    announced = [e for e in events if isinstance(e, Finished)][:-1]
    assert [e.epochs_completed for e in announced] == [0, 1] and all(isinstance(e, Event) for e in events)


def test_train_refuses_a_run_folder_that_holds_a_run(tmp_path, phantom_dataset):
    from napari_pgps import train

    run_dir = tmp_path / "run"
    list(train(quick_config(phantom_dataset, epochs=1, iterations=1), run_dir))
    before = (run_dir / "metrics.jsonl").read_text()
    with pytest.raises(InputError, match="already holds a run"):
        next(iter(train(quick_config(phantom_dataset, epochs=1, iterations=1), run_dir)))
    assert (run_dir / "metrics.jsonl").read_text() == before  # nothing appended
    with pytest.raises(InputError, match="no checkpoint_last.pt to resume from"):
        next(iter(train(quick_config(phantom_dataset), tmp_path / "empty", resume=True)))


def test_the_split_is_saved_with_the_run_and_evaluation_uses_it(tmp_path, phantom_dataset):
    """A run trained on cases given in memory (as from napari layers): its split cannot be recomputed from the
    dataset folder, so evaluation must read the saved one."""
    from napari_pgps import train
    from napari_pgps.tasks.evaluation import evaluate_model

    everything = load_training_set(phantom_dataset)
    everything.cases = [case for case in everything.cases if case.name in ("case_001", "case_003", "case_004")]
    run_dir = tmp_path / "run"
    list(train(quick_config(phantom_dataset, epochs=1, iterations=1), run_dir, dataset=everything))
    split = json.loads((run_dir / "splits.json").read_text())
    assert sorted(split["training"] + split["validation"]) == ["case_001", "case_003", "case_004"]
    assert len(split["validation"]) == 1

    model = load_model(run_dir, "cpu")
    assert model.split == split
    report = evaluate_model(model, phantom_dataset, split="validation")
    assert [row["case"] for row in report["cases"]] == split["validation"]
    report = evaluate_model(model, phantom_dataset, split="training")
    assert [row["case"] for row in report["cases"]] == split["training"]


def test_resume_keeps_the_saved_split(tmp_path, phantom_dataset):
    from napari_pgps import train

    run_dir = tmp_path / "run"
    control = TrainingControl()
    for event in train(quick_config(phantom_dataset, epochs=2, iterations=1), run_dir, control=control):
        if isinstance(event, StepDone):
            control.stop()
    first = json.loads((run_dir / "splits.json").read_text())
    config = quick_config(phantom_dataset)
    config.training.seed = 7  # ignored on resume: the stored configuration and split are used
    list(train(config, run_dir, resume=True))
    assert load_model(run_dir, "cpu").split == first
