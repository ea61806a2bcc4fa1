"""A run folder written before the schedule options were nested in ``curriculum.options`` resumes as it would have."""

import yaml
from helpers import quick_config

from napari_pgps import train
from napari_pgps.config import RunConfig
from napari_pgps.curriculum import schedule_for, stage_at
from napari_pgps.engine import TrainingControl, load_checkpoint
from napari_pgps.engine.checkpoint import save_checkpoint
from napari_pgps.events import CheckpointSaved, StepDone


def _flat(config: dict) -> dict:
    """``config`` (a ``RunConfig.to_dict()``) with its schedule options written flat in ``curriculum``."""
    config["curriculum"].update(config["curriculum"].pop("options"))
    return config


def test_a_run_folder_with_flat_schedule_options_resumes_on_the_same_schedule(tmp_path, phantom_dataset):
    config = quick_config(phantom_dataset, epochs=4, iterations=1)
    config.curriculum.schedule = "pgps-performance"
    config.curriculum.options.growth = "miccai"
    config.curriculum.options.max_batch = 3
    control = TrainingControl()
    for event in train(config, tmp_path / "run", control=control):
        if isinstance(event, CheckpointSaved) and event.epoch == 1:
            control.stop()
    run = tmp_path / "run"
    schedule = schedule_for(RunConfig.load(run / "config.yaml"))
    planned = [schedule.stages[stage_at(schedule.stages, epoch)] for epoch in range(1, 4)]
    assert len({stage.batch for stage in schedule.stages}) > 1  # the options matter: PGPS+ batches capped at 3
    state = load_checkpoint(run / "checkpoint_last.pt")
    state["config"] = _flat(state["config"])
    save_checkpoint(state, run / "checkpoint_last.pt")
    (run / "config.yaml").write_text(yaml.safe_dump(_flat(yaml.safe_load((run / "config.yaml").read_text())),
                                                    sort_keys=False))
    resumed = [(e.patch, e.batch) for e in train(config, run, resume=True) if isinstance(e, StepDone)]
    assert resumed == [(stage.patch, stage.batch) for stage in planned]
