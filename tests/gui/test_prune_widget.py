"""The Prune widget in a real napari viewer: channel pruning, progressive pruning, stop and errors."""

import json

import pytest

from napari_pgps._widgets.prune_widget import PROGRESSIVE, PruneWidget
from napari_pgps._widgets.segment_widget import SegmentWidget
from napari_pgps._widgets.state import state_for
from napari_pgps.config import RunConfig

pytestmark = pytest.mark.gui


@pytest.fixture
def pruner(make_napari_viewer, tmp_path, phantom_dataset):
    viewer = make_napari_viewer()
    widget = PruneWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.dataset.setText(str(phantom_dataset))
    widget.run_root.setText(str(tmp_path))
    widget.device.setCurrentText("cpu")
    return widget


def _progressive(widget: PruneWidget, epochs: int) -> None:
    """Progressive pruning of a PRM network on 8x32x32 patches, 2 steps per epoch."""
    config = state_for(widget.viewer).config  # what the Curriculum widget designs
    config.model.patch_size = (8, 32, 32)
    config.pruning.calibration_batches = 2
    config.pruning.patience = 0  # a convergence event at every epoch start: pruning within a few epochs
    widget.mode.setCurrentIndex(widget.mode.findData(PROGRESSIVE))
    widget.progressive_epochs.setValue(epochs)
    widget.iterations.setValue(2)


def _table(widget: PruneWidget) -> dict[str, list[str]]:
    """Row name -> [before, pruned, pruned / before] as shown."""
    table = widget.table
    return {table.verticalHeaderItem(r).text(): [table.item(r, c).text() for c in range(3)] for r in range(table.rowCount())}


def _count(text: str) -> int:
    return int(text.replace(",", ""))


def test_channel_pruning_fills_the_table_and_offers_the_pruned_model(pruner, qtbot, monkeypatch, trained_phantom_run):
    segmenter = SegmentWidget(pruner.viewer)
    state_for(pruner.viewer).set_last_model(trained_phantom_run)  # as the Train widget does when a run ends
    assert pruner.model.currentText() == str(trained_phantom_run)
    pruner.ratio.setValue(0.5)
    pruner.steps.setValue(2)
    pruner.fine_tune_epochs.setValue(1)
    phases = []
    show_phase = pruner._show_phase
    monkeypatch.setattr(pruner, "_show_phase", lambda text, *counts: (phases.append(text), show_phase(text, *counts)))

    pruner.start_pruning()
    assert not pruner.start.isEnabled() and pruner.stop.isEnabled()
    qtbot.waitUntil(lambda: pruner.worker is None, timeout=60_000)
    assert pruner.status.text().startswith("done"), pruner.status.text()
    assert pruner.start.isEnabled() and not pruner.stop.isEnabled()
    assert list(dict.fromkeys(phases)) == ["measuring the model before pruning...", "pruning step 1/2", "pruning step 2/2",
                      "fine-tune epoch 1/1", "measuring the pruned model...", "done"]

    rows = _table(pruner)
    assert pruner.table.horizontalHeaderItem(0).text() == "trained model"
    before, after, ratio = rows["parameters"]
    assert _count(after) < _count(before) and float(ratio) < 0.6
    assert all("-" not in cells for cells in rows.values()), rows  # every figure measured before and after
    assert 0 <= float(rows["mean Dice (validation)"][1]) <= 1

    assert [step for step, _ in pruner.history.parameters] == [1, 2]
    assert pruner.history.parameters[0][1] > pruner.history.parameters[1][1] == _count(after)
    qtbot.waitUntil(lambda: len(pruner._parameter_line.get_xdata()) == 2, timeout=3000)

    run = pruner.run_dir
    assert (run / "checkpoint_final.pt").is_file()
    report = json.loads((run / "pruning_report.json").read_text())
    assert report["after"]["parameters"] == _count(after) and report["before"]["parameters"] == _count(before)
    assert segmenter.model.currentText() == str(run)  # offered to the Segment widget
    assert pruner.model.currentText() == str(trained_phantom_run)  # the next pruning starts from the same model


def test_progressive_pruning_plots_parameters_over_the_epochs(pruner, qtbot):
    _progressive(pruner, epochs=5)  # masks may be placed at the start of epoch 1 (< 0.4 x 5)
    pruner.rule.setCurrentIndex(pruner.rule.findData("short-run"))
    pruner.start_pruning()
    qtbot.waitUntil(lambda: pruner.worker is None, timeout=60_000)
    assert pruner.status.text().startswith("done"), pruner.status.text()
    config = RunConfig.load(pruner.run_dir / "config.yaml")
    assert (config.pruning.judge, config.pruning.selection, config.model.prm_downsampling) == (
        "next-epoch", "global", "strided-conv")
    assert state_for(pruner.viewer).config.pruning.judge == "convergence"  # the designed configuration is kept
    recipe = pruner.recipe.text().splitlines()  # the run's recipe, as the Train widget shows it
    assert recipe == list(pruner.history.started.recipe) and recipe[0].startswith("schedule: ")

    epochs = [epoch for epoch, _ in pruner.history.parameters]
    assert epochs[0] == 0 and 1 in epochs and epochs == sorted(epochs)
    rows = _table(pruner)
    assert pruner.table.horizontalHeaderItem(0).text() == "unpruned start"
    before, after, _ = rows["parameters"]
    assert _count(before) == pruner.history.parameters[0][1] and _count(after) == pruner.history.parameters[-1][1] <= _count(before)
    assert rows["mean Dice (validation)"][0] == "-" and 0 <= float(rows["mean Dice (validation)"][1]) <= 1
    qtbot.waitUntil(lambda: list(pruner._parameter_line.get_xdata()) == epochs, timeout=3000)
    assert pruner._parameter_axes.get_xlabel() == "epoch"
    assert (pruner.run_dir / "checkpoint_final.pt").is_file() and (pruner.run_dir / "pruning_report.json").is_file()


def test_stop_returns_to_idle_and_keeps_the_last_checkpoint(pruner, qtbot, monkeypatch):
    import napari.utils.notifications

    warnings = []
    monkeypatch.setattr(napari.utils.notifications, "show_warning", warnings.append)
    _progressive(pruner, epochs=30)
    state_for(pruner.viewer).config.pruning.patience = 5  # 12 epochs to prune in: too few for convergence events
    pruner.start_pruning()
    qtbot.waitUntil(lambda: bool(warnings), timeout=30_000)
    assert "short-run" in warnings[0]
    qtbot.waitUntil(lambda: pruner.run_dir is not None and (pruner.run_dir / "checkpoint_last.pt").is_file(), timeout=30_000)
    pruner.stop_pruning()
    qtbot.waitUntil(lambda: pruner.worker is None, timeout=20_000)
    assert pruner.status.text().startswith("stopped"), pruner.status.text()
    assert pruner.start.isEnabled() and not pruner.stop.isEnabled()
    assert (pruner.run_dir / "checkpoint_last.pt").is_file()
    assert not (pruner.run_dir / "checkpoint_final.pt").exists() and not (pruner.run_dir / "pruning_report.json").exists()
    assert pruner.history.report is None and pruner.table.item(0, 0) is None
    assert pruner.progress.format() == "stopped"


def test_invalid_input_shows_an_error_and_returns_to_idle(pruner, qtbot, tmp_path):
    pruner.model.setCurrentText(str(tmp_path / "no-such-run"))
    pruner.start_pruning()
    qtbot.waitUntil(lambda: pruner.worker is None, timeout=30_000)
    assert pruner.status.text().startswith("failed") and "model not found" in pruner.status.text()
    assert pruner.start.isEnabled() and not pruner.stop.isEnabled()
    assert pruner.progress.format() == "failed"

    pruner.dataset.setText("")
    pruner.start_pruning()  # checked before anything starts
    assert pruner.worker is None and "choose a dataset folder" in pruner.status.text()
