"""The Review widget beside the Segment widget: the layers it offers, following the newest result, its contribution."""

import numpy as np
import pytest
from helpers import REVIEW_SPACING, shifted_cubes

from napari_pgps._widgets.review_widget import NO_REFERENCE, ReviewWidget
from napari_pgps._widgets.state import DERIVED, state_for

pytestmark = pytest.mark.gui


def _choices(combo) -> list[str]:
    return [combo.itemText(i) for i in range(combo.count())]


@pytest.fixture
def viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    result, reference = shifted_cubes()
    viewer.add_image(reference.astype(np.float32), name="image", scale=REVIEW_SPACING)
    viewer.add_labels(reference, name="reference", scale=REVIEW_SPACING)
    viewer.add_labels(result, name="first result", scale=REVIEW_SPACING)
    return viewer


def test_it_offers_the_open_labels_layers_but_not_its_own(viewer, qtbot):
    widget = ReviewWidget(viewer)
    assert _choices(widget.compare_result) == ["reference", "first result"]
    assert _choices(widget.compare_with) == [NO_REFERENCE, "reference", "first result"]
    assert widget.compare_with.currentText() == NO_REFERENCE
    widget.compare_with.setCurrentText("reference")
    widget.compare_result.setCurrentText("first result")
    widget.compare()
    qtbot.waitUntil(lambda: widget.review_worker is None and widget.disagreement_layer is not None, timeout=60_000)
    assert widget.disagreement_layer.metadata[DERIVED] == "disagreement"
    assert "first result disagreement" not in _choices(widget.compare_result) + _choices(widget.compare_with)
    viewer.add_labels(np.zeros((10, 16, 24), np.uint8), name="drawn by hand", scale=REVIEW_SPACING)
    assert "drawn by hand" in _choices(widget.compare_with) and widget.compare_with.currentText() == "reference"
    viewer.layers.remove("drawn by hand")
    assert "drawn by hand" not in _choices(widget.compare_result)


def test_it_follows_the_segment_widget_and_reviews_a_result_segmented_alone(viewer, qtbot):
    widget = ReviewWidget(viewer)
    state = state_for(viewer)
    batch_result = viewer.add_labels(shifted_cubes()[0], name="batch result", scale=REVIEW_SPACING)
    state.segmented.emit(batch_result, False)  # one of "Segment all open images": chosen, not compared
    assert widget.compare_result.currentText() == "batch result"
    assert widget.review_worker is None and widget.review is None

    alone = viewer.layers["first result"]
    state.segmented.emit(alone, True)  # no reference chosen: chosen, not compared
    assert widget.compare_result.currentText() == "first result" and widget.review_worker is None

    widget.compare_with.setCurrentText("reference")
    state.segmented.emit(alone, True)  # compared at once
    qtbot.waitUntil(lambda: widget.review_worker is None and widget.review is not None, timeout=60_000)
    assert [label.name for label in widget.review.labels] == ["label 1", "label 2"]
    assert widget.table.rowCount() == 2 and "false-positive" in widget.status.text()


def test_a_failed_comparison_is_said_in_one_line_and_the_button_comes_back(viewer, qtbot, monkeypatch):
    import napari.utils.notifications

    import napari_pgps.engine.review as review

    errors = []
    monkeypatch.setattr(napari.utils.notifications, "show_error", errors.append)
    monkeypatch.setattr(review, "review_labels", lambda *args: (_ for _ in ()).throw(MemoryError("no room\nat all")))
    widget = ReviewWidget(viewer)
    widget.compare_layers(viewer.layers["first result"], viewer.layers["reference"])
    assert not widget.compare_button.isEnabled()
    qtbot.waitUntil(lambda: widget.review_worker is None, timeout=60_000)
    assert errors == ["Comparison failed: MemoryError: no room"]
    assert widget.status.text() == "comparison failed: MemoryError: no room" and widget.compare_button.isEnabled()


def test_napari_offers_the_review_widget():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-pgps")
    commands = {command.id: command for command in manifest.contributions.commands}
    widgets = {widget.display_name: commands[widget.command] for widget in manifest.contributions.widgets}
    assert list(widgets) == ["Curriculum", "Train", "Segment", "Review", "Prune"]
    assert widgets["Review"].python_name == "napari_pgps._widgets.review_widget:ReviewWidget"
    assert "reference" in widgets["Review"].title
