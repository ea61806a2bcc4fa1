"""The Curriculum widget previews the schedule that trains: the registry's patch grid, not a U-Net of its own."""

import pytest

from napari_pgps._widgets.curriculum_widget import CurriculumWidget
from napari_pgps._widgets.state import state_for
from napari_pgps.curriculum import schedule_for

pytestmark = pytest.mark.gui


@pytest.mark.parametrize("architecture, schedule, first_patch, poolings", [
    ("unetr", "pgps-efficiency", (32, 16, 16), 4),  # its divisor is 16, where a planned U-Net pools 5 times (32)
    ("swinunetr", "pgps-performance", (64, 64, 64), 5),  # no stage below its minimum of 64 voxels per axis
])
def test_the_preview_is_the_schedule_that_trains(make_napari_viewer, architecture, schedule, first_patch, poolings):
    viewer = make_napari_viewer()
    config = state_for(viewer).config
    config.model.architecture = architecture
    config.model.patch_size = (128, 128, 128)
    config.curriculum.schedule = schedule
    config.training.epochs = 100
    widget = CurriculumWidget(viewer)
    assert widget.schedule is not None and widget.schedule == schedule_for(widget.config())
    assert widget.schedule.stages[0].patch == first_patch
    assert f"(poolings {poolings}, {poolings}, {poolings})" in widget.summary.text()
