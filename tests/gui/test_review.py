"""The Review widget's comparison with a reference and the Segment widget's "Segment all open images", in a real
napari viewer."""

import numpy as np
import pytest

from helpers import REVIEW_SPACING, SMALL_SHAPE, SMALL_SPACING, shifted_cubes
from napari_pgps._sample_data import PHANTOM_LABELS, make_phantom
from napari_pgps._widgets.layers import world_matrix
from napari_pgps._widgets.review_widget import REVIEW_COLUMNS, ReviewWidget
from napari_pgps._widgets.segment_widget import DERIVED, SegmentWidget

pytestmark = pytest.mark.gui

SPACING = REVIEW_SPACING
ORIGIN = (10.0, -5.0, 3.0)


def _table(widget):
    return [[widget.table.item(r, c).text() for c in range(widget.table.columnCount())]
            for r in range(widget.table.rowCount())]


@pytest.fixture
def errors(monkeypatch):
    """The messages of napari error notifications the widget shows."""
    import napari.utils.notifications as notifications

    shown = []
    monkeypatch.setattr(notifications, "show_error", shown.append)
    return shown


def test_compare_fills_the_table_and_adds_a_disagreement_layer(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    result, reference = shifted_cubes()
    # placed as the widget places its results (one affine) and as a layer opened with scale and translate
    placed = np.eye(4)
    placed[:3, :3] = np.diag(SPACING)
    placed[:3, 3] = ORIGIN
    result_layer = viewer.add_labels(result.copy(), name="result", affine=placed,
                                     metadata={"label_names": {0: "background", 1: "lesion", 2: "vessel"}})
    reference_layer = viewer.add_labels(reference.copy(), name="reference", scale=SPACING, translate=ORIGIN)
    widget = ReviewWidget(viewer)
    assert widget.compare_with.currentText() == "(none)"
    widget.compare_with.setCurrentText("reference")
    widget.compare_result.setCurrentText("result")
    widget.compare()
    qtbot.waitUntil(lambda: widget.review_worker is None and widget.disagreement_layer is not None, timeout=60_000)

    headers = [widget.table.horizontalHeaderItem(c).text() for c in range(widget.table.columnCount())]
    assert headers == REVIEW_COLUMNS
    lesion, vessel = _table(widget)
    # Dice = 2 |A and B| / (|A| + |B|); volumes at 1 mm^3 per voxel; difference = result - reference
    assert lesion == ["lesion", "144", "0.144", f"{2 * 96 / (144 + 192):.3f}", "2.00", "-0.048"]
    assert vessel == ["vessel", "48", "0.048", f"{2 * 24 / (48 + 48):.3f}", "2.00", "+0.000"]

    layer = widget.disagreement_layer
    assert layer.name == "result disagreement"
    np.testing.assert_allclose(world_matrix(layer), world_matrix(result_layer))
    np.testing.assert_allclose(world_matrix(layer), world_matrix(reference_layer))
    assert int((layer.data == 1).sum()) == (144 - 96) + (48 - 24)  # false positives
    assert int((layer.data == 2).sum()) == (192 - 96) + (48 - 24)  # false negatives
    assert layer.data[3, 5, 4] == 1 and layer.data[3, 5, 12] == 2 and layer.data[3, 5, 7] == 0
    names = dict(zip(layer.features["index"], layer.features["name"]))
    assert names[1] == "false positive" and names[2] == "false negative"
    # napari's status bar names the disagreement under the cursor
    world = world_matrix(layer) @ np.array([3, 5, 4, 1.0])
    assert "false positive" in layer.get_status(tuple(world[:3]), world=True)["coordinates"]
    # the compared layers are untouched
    np.testing.assert_array_equal(result_layer.data, result)
    np.testing.assert_array_equal(reference_layer.data, reference)

    # comparing again replaces the disagreement layer instead of piling them up
    widget.compare()
    qtbot.waitUntil(lambda: widget.review_worker is None, timeout=60_000)
    assert [l.name for l in viewer.layers].count("result disagreement") == 1


def test_a_reference_of_another_shape_or_placement_is_refused(make_napari_viewer, qtbot, errors):
    viewer = make_napari_viewer()
    result, reference = shifted_cubes()
    viewer.add_labels(result, name="result", scale=SPACING)
    viewer.add_labels(reference[:, :, :20].copy(), name="cropped", scale=SPACING)
    viewer.add_labels(reference, name="coarser", scale=(2.0, 1.0, 1.0))
    widget = ReviewWidget(viewer)
    layers_before = len(viewer.layers)
    widget.compare_result.setCurrentText("result")
    widget.compare_with.setCurrentText("cropped")
    widget.compare()
    assert len(errors) == 1
    assert "shape (10, 16, 20)" in errors[0] and "(10, 16, 24)" in errors[0] and "Nothing was compared" in errors[0]
    widget.compare_with.setCurrentText("coarser")
    widget.compare()
    assert len(errors) == 2 and "spacing 2 x 1 x 1 mm" in errors[1] and "Nothing was compared" in errors[1]
    assert widget.review_worker is None and widget.review is None and widget.disagreement_layer is None
    assert len(viewer.layers) == layers_before and widget.table.rowCount() == 0


def test_segment_then_review_and_segment_every_open_image(make_napari_viewer, qtbot, trained_phantom_run,
                                                          monkeypatch):
    viewer = make_napari_viewer()
    sources = []
    for seed in range(3):
        image, labels = make_phantom(seed, shape=SMALL_SHAPE, spacing=SMALL_SPACING)
        translate = (0.0, 5.0 * seed, -3.0 * seed)
        sources.append(viewer.add_image(image, name=f"case {seed}", scale=SMALL_SPACING, translate=translate))
        if seed == 0:
            reference = viewer.add_labels(labels, name="case 0 labels", scale=SMALL_SPACING, translate=translate,
                                          metadata={"label_names": PHANTOM_LABELS})
    originals = [np.array(layer.data, copy=True) for layer in sources]
    reference_copy = np.array(reference.data, copy=True)
    widget, reviewer = SegmentWidget(viewer), ReviewWidget(viewer)
    widget.offer_model(trained_phantom_run)
    widget.device.setCurrentText("cpu")

    # one image, with its uncertainty, reviewed against its labels as soon as it is segmented
    widget.image.layer.setCurrentText("case 0")
    widget.uncertainty.setChecked(True)
    reviewer.compare_with.setCurrentText("case 0 labels")
    widget.segment()
    qtbot.waitUntil(lambda: widget.worker is None and reviewer.review_worker is None
                    and reviewer.disagreement_layer is not None, timeout=120_000)
    assert [r[0] for r in _table(reviewer)] == ["lesion", "vessel"]
    assert reviewer.table.columnCount() == len(REVIEW_COLUMNS)
    assert viewer.layers["case 0 uncertainty"].metadata[DERIVED] == "uncertainty"
    disagreement = reviewer.disagreement_layer
    assert disagreement.name == "case 0 disagreement"
    np.testing.assert_allclose(world_matrix(disagreement), world_matrix(sources[0]))
    segmentation = np.asarray(widget.result_layer.data)
    expected = ((segmentation != 0) & (segmentation != reference_copy)).sum()
    assert int((disagreement.data == 1).sum()) == expected

    # every open image in turn (not the uncertainty layer), the model loaded once
    widget.uncertainty.setChecked(False)
    reviewer.compare_with.setCurrentText("(none)")
    assert [layer.name for layer in widget.images_to_segment()] == ["case 0", "case 1", "case 2"]
    statuses = []
    set_text = widget.status.setText
    widget.status.setText = lambda text: (statuses.append(text), set_text(text))
    loads = []
    import napari_pgps.engine as engine

    load_model = engine.load_model
    monkeypatch.setattr(engine, "load_model", lambda *a, **k: (loads.append(a), load_model(*a, **k))[1])
    widget.segment_all()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=180_000)
    assert len(loads) == 1  # the model is loaded once for the three images
    assert len(widget.results) == 3
    assert all(layer.name.startswith(f"case {i} segmentation") for i, layer in enumerate(widget.results))
    for source, result in zip(sources, widget.results):
        assert isinstance(result, type(reference)) and result.data.shape == source.data.shape
        np.testing.assert_allclose(world_matrix(result), world_matrix(source))
    assert any("case 2 of 3" in text for text in statuses)
    assert "3 of 3 images segmented" in widget.status.text()
    assert [r[0] for r in _table(widget)] == [f"case {i}: {name}" for i in range(3) for name in ("lesion", "vessel")]
    for source, original in zip(sources, originals):
        np.testing.assert_array_equal(source.data, original)
    np.testing.assert_array_equal(reference.data, reference_copy)

    # Cancel stops after the case under way; what was produced stays
    count = len(viewer.layers)
    widget.segment_all()
    widget.cancel_segmentation()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert len(widget.results) == 1 and len(viewer.layers) == count + 1
    assert "cancelled after case 1 of 3" in widget.status.text()
    assert widget.run.isEnabled() and widget.run_all.isEnabled() and not widget.cancel.isEnabled()
    for source, original in zip(sources, originals):
        np.testing.assert_array_equal(source.data, original)
