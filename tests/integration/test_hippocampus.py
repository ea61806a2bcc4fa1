"""End to end on real MRI: Medical Segmentation Decathlon Task04 (hippocampus), from ../shared/data.

A short CPU training on 40 cases (the ``hippocampus_run`` fixture) must make the loss fall and beat a trivial
baseline; its segmentation must keep the NIfTI geometry; a stopped run must
resume. The full-size figures (default run, 15 minutes) are in docs/benchmarks.md.
"""

import json

import nibabel as nib
import numpy as np
import pytest
from helpers import real_data_config

from napari_pgps import train
from napari_pgps.cli import main
from napari_pgps.engine import TrainingControl
from napari_pgps.engine.metrics import dice_per_label
from napari_pgps.events import Finished, StepDone

pytestmark = pytest.mark.integration


def test_loss_falls_and_dice_beats_a_trivial_baseline(hippocampus_run, hippocampus, tmp_path):
    run_dir, events = hippocampus_run
    losses = [e.loss for e in events if isinstance(e, StepDone)]
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10])
    assert events[-1].stopped is False

    report_path = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(run_dir), "--data", str(hippocampus), "--split", "validation", "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert len(report["cases"]) == 8  # 20% of 40 cases, held out from training
    # Trivial baseline: label every voxel as the structure, Dice = 2|T| / (|T| + N), about 0.05 here.
    labels = np.asanyarray(nib.load(str(hippocampus / "labelsTr" / f"{report['cases'][0]['case']}.nii.gz")).dataobj)
    baseline = np.mean([dice_per_label(np.full_like(labels, k), labels, 3)[k - 1] for k in (1, 2)])
    assert baseline < 0.15
    assert report["mean_dice"] > max(0.5, baseline + 0.3)


def test_segmentation_keeps_the_nifti_geometry(hippocampus_run, hippocampus, tmp_path):
    run_dir, _ = hippocampus_run
    source = hippocampus / "imagesTr" / "hippocampus_004.nii.gz"
    out = tmp_path / "seg.nii.gz"
    assert main(["segment", "--model", str(run_dir), "--input", str(source), "--output", str(out)]) == 0
    written, original = nib.load(str(out)), nib.load(str(source))
    assert written.shape == original.shape
    np.testing.assert_allclose(written.affine, original.affine)
    np.testing.assert_allclose(written.header.get_zooms(), original.header.get_zooms())
    assert int(written.header["qform_code"]) == int(original.header["qform_code"])
    assert int(written.header["sform_code"]) == int(original.header["sform_code"])
    values = np.unique(np.asanyarray(written.dataobj))
    assert set(values.tolist()) <= {0, 1, 2} and len(values) > 1


def test_stop_and_resume_on_real_data(tmp_path, hippocampus):
    config = real_data_config(hippocampus, cases=6, epochs=2, iterations=2)
    control = TrainingControl()
    for event in train(config, tmp_path / "run", control=control):
        if isinstance(event, StepDone) and event.step == 3:
            control.stop()
    assert event.stopped and event.epochs_completed == 1
    resumed = list(train(config, tmp_path / "run", resume=True))
    assert [e.step for e in resumed if isinstance(e, StepDone)] == [3, 4]
    assert isinstance(resumed[-1], Finished) and not resumed[-1].stopped


def test_the_recipe_keeps_the_hippocampus_at_its_own_spacing_without_timing_a_step(hippocampus):
    """The recipe's spacing rule leaves a dataset whose final patch covers the median case alone: the default run
    (its budget) on the hippocampus trains at its 1 mm, times no step for it and says why."""
    from napari_pgps.engine.preparation import prepare_run
    from napari_pgps.events import Preparing

    config = real_data_config(hippocampus, cases=40, epochs=None, iterations=20)
    stage, events = prepare_run(config, None), []
    while True:
        try:
            events.append(next(stage))
        except StopIteration as done:
            prepared = done.value
            break
    try:
        assert prepared.config.training.time_budget is not None  # the default budget: the rule applies
        assert prepared.config.model.spacing == pytest.approx((1.0, 1.0, 1.0))
        assert not [e for e in events if isinstance(e, Preparing) and e.task == "timing"]
        assert next(c.line() for c in prepared.recipe if c.part == "spacing") == (
            "spacing: 1 x 1 x 1 mm (the data's (nnU-Net's rule): the final patch covers the median case)")
    finally:
        prepared.close()
