"""The trainer follows the schedules and the PDL data curriculum."""

import numpy as np
import pytest
from helpers import first_run_event, quick_config

from napari_pgps import train
from napari_pgps.config import RunConfig
from napari_pgps.errors import InputError
from napari_pgps.events import CasesAdded, RunStarted, StageFinished, StageStarted, StepDone
from napari_pgps.models import plan_unet


def _run(dataset, schedule, epochs=4, iterations=2, **curriculum):
    config = quick_config(dataset, epochs=epochs, iterations=iterations)
    config.model.patch_size = (8, 16, 16)
    config.curriculum.schedule = schedule
    for key, value in curriculum.items():
        setattr(config.curriculum, key, value)
    return list(train(config))


def test_pgps_performance_stages_in_order_with_their_batches(phantom_dataset):
    events = _run(phantom_dataset, "pgps-performance", epochs=4, iterations=2)
    started = [e for e in events if isinstance(e, StageStarted)]
    finished = [e for e in events if isinstance(e, StageFinished)]
    steps = [e for e in events if isinstance(e, StepDone)]
    assert [s.patch for s in started][-1] == (8, 16, 16)
    assert [s.stage for s in started] == [s.stage for s in finished] == list(range(len(started)))
    for stage in started:
        in_stage = [s for s in steps if s.patch == stage.patch]
        assert in_stage and all(s.batch == stage.batch for s in in_stage)
        assert stage.batch == max(2, 2 * (8 * 16 * 16) // int(np.prod(stage.patch)))
    assert all(sum(f.class_fractions) == pytest.approx(1) and f.steps > 0 for f in finished)
    run = first_run_event(events)
    assert isinstance(run, RunStarted) and run.schedule == "pgps-performance"
    assert run.label_names == ("background", "lesion", "vessel")
    assert sum(run.volume_class_fractions) == pytest.approx(1)


def test_small_patches_raise_the_foreground_share(phantom_dataset):
    events = _run(phantom_dataset, "pgps-efficiency", epochs=4, iterations=6)
    finished = [e for e in events if isinstance(e, StageFinished)]
    volume = first_run_event(events).volume_class_fractions
    first_foreground = 1 - finished[0].class_fractions[0]
    assert first_foreground > 1 - volume[0]


def test_validation_stays_at_the_final_patch(phantom_dataset, monkeypatch):
    from napari_pgps.engine import trainer

    seen = []
    original = trainer.predict_probabilities
    monkeypatch.setattr(trainer, "predict_probabilities", lambda net, image, patch, *a, **k: seen.append(tuple(patch)) or original(net, image, patch, *a, **k))
    _run(phantom_dataset, "pgps-efficiency", epochs=2, iterations=1)
    assert seen and set(seen) == {(8, 16, 16)}


@pytest.mark.parametrize("schedule", ["rpss", "augment"])
def test_random_schedules_draw_several_patch_sizes(phantom_dataset, schedule):
    steps = [e for e in _run(phantom_dataset, schedule, epochs=2, iterations=6) if isinstance(e, StepDone)]
    divisor = plan_unet((8, 16, 16), (2.5, 0.8, 0.8)).divisor
    assert len({s.patch for s in steps}) >= 3
    assert all(all(p % d == 0 for p, d in zip(s.patch, divisor)) for s in steps)


def test_pdl_adds_ranked_groups(phantom_dataset):
    config = quick_config(phantom_dataset, epochs=4, iterations=1)
    config.curriculum.pdl.enabled = True
    config.curriculum.pdl.groups = 2
    config.curriculum.pdl.every_epochs = 2
    config.curriculum.pdl.metric = "mse"
    added = [e for e in train(config) if isinstance(e, CasesAdded)]
    assert [(a.epoch, a.cases, a.total) for a in added] == [(0, 3, 5), (2, 5, 5)]
    assert added[1].names[:3] == added[0].names


def test_pdl_with_unknown_reference_is_refused(phantom_dataset):
    config = quick_config(phantom_dataset)
    config.curriculum.pdl.enabled = True
    config.curriculum.pdl.reference = "nobody"
    with pytest.raises(InputError, match="reference case 'nobody'"):
        list(train(config))


def test_schedules_round_trip_through_yaml(tmp_path):
    config = RunConfig()
    config.curriculum.schedule = "pgps-performance"
    config.curriculum.options.growth = "miccai"
    config.curriculum.options.max_batch = 16
    config.curriculum.options.augment_range = (0.25, 2.0)
    config.curriculum.pdl.enabled = True
    config.curriculum.pdl.metric = "psnr"
    config.save(tmp_path / "c.yaml")
    assert RunConfig.load(tmp_path / "c.yaml") == config
