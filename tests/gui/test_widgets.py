"""The whole flow in a real napari viewer: sample, schedule, train, watch, stop, segment, inspect."""

import time

import numpy as np
import pytest

from napari_pgps._sample_data import phantom_layers
from napari_pgps._widgets.curriculum_widget import CurriculumWidget
from napari_pgps._widgets.segment_widget import SegmentWidget
from napari_pgps._widgets.state import state_for
from napari_pgps._widgets.layers import world_matrix
from napari_pgps._widgets.train_widget import OVERLAY_NAME, TrainWidget

pytestmark = pytest.mark.gui


@pytest.fixture
def viewer_with_phantom(make_napari_viewer):
    viewer = make_napari_viewer()
    for data, meta, kind in phantom_layers():
        getattr(viewer, f"add_{kind}")(data, **meta)
    return viewer


def test_curriculum_widget_previews_and_round_trips_yaml(viewer_with_phantom, qtbot, tmp_path):
    widget = CurriculumWidget(viewer_with_phantom)
    viewer_with_phantom.window.add_dock_widget(widget)
    widget.mode.setCurrentIndex(widget.mode.findData("pgps-performance"))
    widget.propose_from_layer()
    assert tuple(s.value() for s in widget.patch) == (32, 96, 96)
    for spin, value in zip(widget.patch, (16, 64, 64)):
        spin.setValue(value)
    widget.epochs.setValue(30)
    assert widget.schedule is not None and len(widget.schedule.stages) > 3
    assert widget.schedule.stages[0].batch > widget.schedule.stages[-1].batch == 2
    assert "compute relative to constant" in widget.summary.text()
    qtbot.waitUntil(lambda: widget.preview.redraws >= 1, timeout=3000)
    widget.save(tmp_path / "c.yaml")
    widget.mode.setCurrentIndex(widget.mode.findData("constant"))
    widget.load(tmp_path / "c.yaml")
    assert widget.mode.currentData() == "pgps-performance" and widget.epochs.value() == 30
    assert state_for(viewer_with_phantom).config.curriculum.schedule == "pgps-performance"
    widget.patch[0].setValue(18)
    assert widget.schedule is None and "cannot be taken" in widget.summary.text()


def test_train_watch_stop_then_segment(viewer_with_phantom, qtbot, tmp_path):
    viewer = viewer_with_phantom
    image = viewer.layers["phantom"]
    before = image.data.copy()
    curriculum, trainer, segmenter = CurriculumWidget(viewer), TrainWidget(viewer), SegmentWidget(viewer)
    for widget in (curriculum, trainer, segmenter):
        viewer.window.add_dock_widget(widget)
    curriculum.mode.setCurrentIndex(curriculum.mode.findData("pgps-efficiency"))
    for spin, value in zip(curriculum.patch, (16, 64, 64)):
        spin.setValue(value)
    curriculum.epochs.setValue(20)
    curriculum.iterations.setValue(3)
    state_for(viewer).config.model.base_channels = 8
    trainer.run_root.setText(str(tmp_path))
    trainer.device.setCurrentText("cpu")
    assert [([c.name for c in a], b.name) for a, b in trainer.layer_pairs()] == [(["phantom"], "phantom labels")]

    trainer.start_training()
    assert not trainer.start.isEnabled() and trainer.stop.isEnabled()
    qtbot.waitUntil(lambda: len(trainer.history.steps) >= 7, timeout=120_000)
    assert "CPU" in trainer.device_label.text()
    assert trainer.progress.value() >= 6 and "ETA" in trainer.progress.format()
    overlay = viewer.layers[OVERLAY_NAME]
    assert overlay.data.shape == image.data.shape and overlay.data.any()
    np.testing.assert_allclose(world_matrix(overlay), world_matrix(image))
    qtbot.waitUntil(lambda: trainer.curves.redraws >= 2 and trainer.balance.redraws >= 2, timeout=5000)
    assert len({s.patch for s in trainer.history.steps}) >= 2  # the patch grew

    stop_asked = time.perf_counter()
    trainer.stop_training()
    qtbot.waitUntil(lambda: trainer.worker is None, timeout=20_000)
    assert time.perf_counter() - stop_asked < 10
    assert trainer.status.text().startswith("stopped") and trainer.start.isEnabled()
    assert (trainer.run_dir / "checkpoint_last.pt").is_file()
    assert not (trainer.run_dir / "checkpoint_final.pt").exists()

    assert segmenter.model.currentText() == str(trainer.run_dir)
    segmenter.image.layer.setCurrentText("phantom")
    segmenter.uncertainty.setChecked(True)
    segmenter.device.setCurrentText("cpu")
    segmenter.segment()
    qtbot.waitUntil(lambda: segmenter.result_layer is not None and segmenter.worker is None, timeout=60_000)
    result = segmenter.result_layer
    assert result.data.shape == image.data.shape
    np.testing.assert_allclose(world_matrix(result), world_matrix(image))
    assert list(result.features["name"]) == ["background", "lesion", "vessel"]
    assert segmenter.table.rowCount() == 2
    assert [segmenter.table.item(r, 0).text() for r in range(2)] == ["lesion", "vessel"]
    voxels = int(segmenter.table.item(0, 1).text())
    assert voxels == int((result.data == 1).sum())
    assert float(segmenter.table.item(0, 2).text()) == pytest.approx(voxels * 2.5 * 0.8 * 0.8 / 1000, abs=1e-3)
    assert "phantom uncertainty" in [layer.name for layer in viewer.layers]
    np.testing.assert_array_equal(image.data, before)


def test_a_time_budget_plans_the_run_and_the_eta_counts_down_to_it(viewer_with_phantom, qtbot, tmp_path):
    viewer = viewer_with_phantom
    trainer = TrainWidget(viewer)
    viewer.window.add_dock_widget(trainer)
    state_for(viewer).config.model.base_channels = 8
    state_for(viewer).config.model.patch_size = (16, 64, 64)
    trainer.run_root.setText(str(tmp_path))
    trainer.device.setCurrentText("cpu")
    trainer.time_budget.setValue(1)
    trainer.start_training()
    qtbot.waitUntil(lambda: len(trainer.history.steps) >= 2, timeout=120_000)
    started = trainer.history.started
    assert started.time_budget == 60.0 and started.expected_seconds <= 60.0
    assert trainer.history.eta_seconds <= 60.0 and "ETA" in trainer.progress.format()
    trainer.stop_training()
    qtbot.waitUntil(lambda: trainer.worker is None, timeout=20_000)


def test_segmentation_can_be_cancelled(viewer_with_phantom, qtbot, tmp_path, trained_phantom_run):
    segmenter = SegmentWidget(viewer_with_phantom)
    segmenter.offer_model(trained_phantom_run)
    segmenter.image.layer.setCurrentText("phantom")
    segmenter.training_patch.setChecked(False)
    for spin, value in zip(segmenter.patch, (8, 32, 32)):
        spin.setValue(value)
    segmenter.tta.setChecked(True)
    segmenter.segment()
    segmenter.cancel_segmentation()
    qtbot.waitUntil(lambda: segmenter.worker is None, timeout=60_000)
    assert segmenter.result_layer is None and "cancelled" in segmenter.status.text()
    assert segmenter.run.isEnabled()


def test_training_errors_return_the_widget_to_idle(viewer_with_phantom, qtbot, tmp_path):
    trainer = TrainWidget(viewer_with_phantom)
    trainer.from_folder.setChecked(True)
    trainer.folder.setText(str(tmp_path / "no-such-dataset"))
    trainer.run_root.setText(str(tmp_path / "runs"))
    trainer.start_training()
    qtbot.waitUntil(lambda: trainer.worker is None, timeout=30_000)
    assert trainer.status.text().startswith("failed") and "dataset folder not found" in trainer.status.text()
    assert trainer.start.isEnabled() and not trainer.stop.isEnabled()


def test_reader_and_writer_round_trip_keep_the_affine(make_napari_viewer, tmp_path, hippocampus):
    import nibabel as nib

    viewer = make_napari_viewer()
    source = hippocampus / "imagesTr" / "hippocampus_004.nii.gz"
    labels_file = hippocampus / "labelsTr" / "hippocampus_004.nii.gz"
    [image] = viewer.open(str(source), plugin="napari-pgps")
    [labels] = viewer.open(str(labels_file), plugin="napari-pgps")
    assert type(labels).__name__ == "Labels" and type(image).__name__ == "Image"
    original = nib.load(str(source))
    np.testing.assert_allclose(image.metadata["affine"], original.affine)
    np.testing.assert_allclose(np.diag(world_matrix(image))[:3], original.header.get_zooms()[::-1])
    out = tmp_path / "saved.nii.gz"
    import napari

    assert napari.save_layers(str(out), [labels], plugin="napari-pgps") == [str(out)]
    saved = nib.load(str(out))
    np.testing.assert_allclose(saved.affine, original.affine)
    np.testing.assert_array_equal(np.asanyarray(saved.dataobj), np.asanyarray(nib.load(str(labels_file)).dataobj))


def test_the_patch_boxes_follow_the_chosen_model_of_any_form(viewer_with_phantom, tmp_path, trained_phantom_run):
    """A run folder, a checkpoint (.pt) and a model package (.zip) each show their own training patch."""
    from napari_pgps.engine import load_checkpoint, save_checkpoint
    from napari_pgps.tasks.export import export_model

    payload = load_checkpoint(trained_phantom_run / "checkpoint_final.pt")
    payload["config"]["model"]["patch_size"] = [16, 32, 32]
    checkpoint = save_checkpoint(payload, tmp_path / "other.pt")
    package = export_model(trained_phantom_run, tmp_path / "phantom.zip")
    segmenter = SegmentWidget(viewer_with_phantom)
    shown = lambda: tuple(spin.value() for spin in segmenter.patch)  # noqa: E731
    segmenter.offer_model(trained_phantom_run)
    assert shown() == (8, 32, 32)
    segmenter.offer_model(checkpoint)
    assert shown() == (16, 32, 32)
    segmenter.offer_model(package)
    assert shown() == (8, 32, 32)
    segmenter.model.setCurrentText(str(checkpoint))  # chosen again from the list
    segmenter.model.activated.emit(segmenter.model.currentIndex())
    assert shown() == (16, 32, 32)


def test_the_segment_widget_averages_an_ensemble_and_can_leave_out_postprocessing(viewer_with_phantom, qtbot,
                                                                                   trained_phantom_run, tmp_path):
    from napari_pgps.engine import load_model, segment_volume
    from napari_pgps.engine.postprocessing import Postprocessing

    segmenter = SegmentWidget(viewer_with_phantom)
    segmenter.offer_model(trained_phantom_run)
    segmenter.add_to_ensemble()
    segmenter.add_to_ensemble()  # the same model twice is added once
    assert segmenter.models() == [str(trained_phantom_run)] and "ensemble of 1" in segmenter.ensemble_label.text()
    segmenter.image.layer.setCurrentText("phantom")
    segmenter.device.setCurrentText("cpu")
    Postprocessing(foreground=True).save(trained_phantom_run, {"test": True})
    try:
        segmenter.postprocess.setChecked(False)
        segmenter.segment()
        qtbot.waitUntil(lambda: segmenter.result_layer is not None and segmenter.worker is None, timeout=60_000)
        assert "post-processed" not in segmenter.status.text()
        image = viewer_with_phantom.layers["phantom"]
        from napari_pgps._widgets.layers import volume_from_layer

        plain = segment_volume(load_model(trained_phantom_run, "cpu"), volume_from_layer(image), postprocess=False)
        np.testing.assert_array_equal(segmenter.result_layer.data, plain.labels.array)
        # the volumes table exported as the report of `segment --report`: the table's voxels and mL, a row per label
        assert segmenter.export.isEnabled()
        written = segmenter.export_report(tmp_path / "volumes.csv")
        import csv

        rows = list(csv.DictReader(open(written)))
        table = {segmenter.table.item(r, 0).text(): (segmenter.table.item(r, 1).text(), segmenter.table.item(r, 2).text())
                 for r in range(segmenter.table.rowCount())}
        assert [row["label"] for row in rows] == list(table) and all(row["case"] == "phantom" for row in rows)
        for row in rows:
            voxels, ml = table[row["label"]]
            assert int(row["voxels"]) == int(voxels) and abs(float(row["volume_ml"]) - float(ml)) < 5e-4
    finally:
        (trained_phantom_run / "postprocessing.json").unlink()
