"""The run's recipe in napari: the Curriculum widget previews the schedule it will choose and why, the Train widget
shows the recipe a run started with."""

import pytest

from napari_pgps._sample_data import phantom_layers
from napari_pgps._widgets.curriculum_widget import AUTOMATIC, CurriculumWidget
from napari_pgps._widgets.state import state_for
from napari_pgps._widgets.train_widget import TrainWidget
from napari_pgps.config import RunConfig
from napari_pgps.curriculum import schedule_for
from napari_pgps.engine.recipe import BUDGET_SCHEDULE

pytestmark = pytest.mark.gui


@pytest.fixture
def widgets(make_napari_viewer):
    """A viewer with the Curriculum and Train widgets, training on the CPU."""
    viewer = make_napari_viewer()
    curriculum, trainer = CurriculumWidget(viewer), TrainWidget(viewer)
    trainer.device.setCurrentText("cpu")
    return viewer, curriculum, trainer


def test_automatic_previews_the_recipes_schedule_and_a_named_one_is_the_users(widgets):
    viewer, curriculum, trainer = widgets
    config = state_for(viewer).config
    assert config.curriculum.schedule is None and config.training.epochs is None  # as RunConfig() has them
    assert curriculum.mode.currentData() == AUTOMATIC and curriculum.epochs.lineEdit().text() == "automatic"
    # the default run on a CPU fills its default budget: the recipe trains PGPS Efficiency
    assert curriculum.schedule.name == BUDGET_SCHEDULE == "pgps-efficiency"
    assert len(curriculum.schedule.stages) > 1
    assert curriculum.recipe.text().startswith("schedule: pgps-efficiency (PGPS Efficiency beat the constant patch")
    assert "planned to fill 15m00s" in curriculum.summary.text()

    curriculum.epochs.setValue(20)  # a run of set epochs keeps the network's own schedule
    assert curriculum.schedule.name == "constant" and curriculum.schedule.epochs == 20
    assert curriculum.recipe.text().startswith("schedule: constant (a run of set epochs")
    trainer.time_budget.setValue(3)  # the Train widget's budget replaces the epochs: PGPS again
    assert curriculum.schedule.name == "pgps-efficiency" and "planned to fill 3m00s" in curriculum.summary.text()
    trainer.time_budget.setValue(0)
    trainer.device.setCurrentText("cuda")  # the GPU profile has no default budget: its 50 epochs, constant
    curriculum.epochs.setValue(0)
    assert curriculum.schedule.name == "constant" and curriculum.schedule.epochs == 50
    assert state_for(viewer).config.curriculum.schedule is None  # still the recipe's to choose

    curriculum.mode.setCurrentIndex(curriculum.mode.findData("constant"))
    assert state_for(viewer).config.curriculum.schedule == "constant"
    assert curriculum.recipe.text() == "schedule: constant (your configuration)"
    trainer.device.setCurrentText("cpu")
    assert curriculum.schedule.name == "constant"  # the user's, even on a budget


def test_a_loaded_configuration_without_a_schedule_is_automatic(widgets, tmp_path):
    _, curriculum, _ = widgets
    RunConfig().save(tmp_path / "default.yaml")
    curriculum.mode.setCurrentIndex(curriculum.mode.findData("pgps-performance"))
    curriculum.epochs.setValue(30)
    curriculum.load(tmp_path / "default.yaml")
    assert curriculum.mode.currentData() == AUTOMATIC and curriculum.config().training.epochs is None
    assert curriculum.schedule == schedule_for(_with_schedule(curriculum, "pgps-efficiency"), 100)


def _with_schedule(curriculum, name):
    """The widget's configuration with ``name`` and the network planned as its preview plans it."""
    config = curriculum.config()
    config.curriculum.schedule = name
    config.model.architecture = "dynunet"
    from napari_pgps.models.planning import plan_unet

    plan = plan_unet(config.model.patch_size, curriculum.spacing)
    config.model.kernel_sizes, config.model.strides = plan.kernel_sizes, plan.strides
    return config


def test_the_train_widget_shows_the_recipe_a_run_started_with(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    for data, meta, kind in phantom_layers():
        getattr(viewer, f"add_{kind}")(data, **meta)
    trainer = TrainWidget(viewer)
    viewer.window.add_dock_widget(trainer)
    config = state_for(viewer).config
    config.model.base_channels, config.model.patch_size = 8, (16, 64, 64)
    config.training.epochs, config.training.iterations_per_epoch = 1, 2  # set epochs: no budget to time
    trainer.run_root.setText(str(tmp_path))
    trainer.device.setCurrentText("cpu")
    assert trainer.recipe.text() == ""
    trainer.start_training()
    qtbot.waitUntil(lambda: trainer.worker is None, timeout=120_000)
    assert trainer.history.finished is not None, trainer.status.text()
    lines = trainer.recipe.text().splitlines()
    assert lines == list(trainer.history.started.recipe) and len(lines) >= 2
    assert lines[0].startswith("schedule: constant (a run of set epochs keeps the network's own schedule")
    assert any(line.startswith("length: 1 epochs x 2 steps") for line in lines)

    trainer.start_training()
    assert trainer.recipe.text() == ""  # a new run clears the last one's recipe
    trainer.stop_training()
    qtbot.waitUntil(lambda: trainer.worker is None, timeout=60_000)
