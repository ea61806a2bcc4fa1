"""Scores that are right and memory that is bounded, as issue 31's probe tried them: a missed structure, label values
the dataset does not declare, nnU-Net v2's ignore label, per-label scores against the one-hot computation they
replace, and the memory of scoring many labels (all generated here, tiny).

(Named test_scoring.py: tests/core/test_evaluation.py holds the module's other tests, and test folders are not
packages, so two test files may not share a name.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

from napari_pgps.cli import main
from napari_pgps.data.volume import Volume, affine_from_spacing, write_volume
from napari_pgps.engine.metrics import image_diagonal_mm, scores_per_label
from napari_pgps.engine.postprocessing import choose_postprocessing
from napari_pgps.tasks.evaluation import evaluate_folder, score_cases

SPACING = (2.0, 1.0, 0.5)


def _box(shape, corner, size, value=1, out=None):
    out = np.zeros(shape, np.uint8) if out is None else out
    out[tuple(slice(c, c + s) for c, s in zip(corner, size))] = value
    return out


def _volume(array, name):
    return Volume(np.asarray(array, np.uint8), affine_from_spacing(SPACING), path=f"/generated/{name}.nii.gz")


def _dataset(folder, labels: dict, references: dict, nnunet=False):
    """A dataset folder of label maps (name -> (Z, Y, X) array), Decathlon layout (or nnU-Net v2's)."""
    affine = affine_from_spacing(SPACING)
    for name, reference in references.items():
        image = f"{name}_0000.nii.gz" if nnunet else f"{name}.nii.gz"
        write_volume(Volume(np.zeros(reference.shape, np.float32), affine), folder / "imagesTr" / image)
        write_volume(Volume(reference.astype(np.uint8), affine), folder / "labelsTr" / f"{name}.nii.gz")
    if nnunet:
        meta = {"channel_names": {"0": "CT"}, "labels": {n: v for v, n in labels.items()}, "file_ending": ".nii.gz",
                "numTraining": len(references)}
    else:
        meta = {"labels": {str(v): n for v, n in labels.items()}, "modality": {"0": "CT"},
                "training": [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"}
                             for n in references]}
    (folder / "dataset.json").write_text(json.dumps(meta))
    return folder


def _predictions(folder, predictions: dict):
    for name, array in predictions.items():
        write_volume(Volume(array.astype(np.uint8), affine_from_spacing(SPACING)), folder / f"{name}.nii.gz")
    return folder


def test_a_missed_structure_makes_the_mean_hd95_worse_not_better():
    shape = (8, 12, 16)
    reference = _box(shape, (2, 2, 2), (4, 4, 6))
    hit = _volume(reference, "hit"), _volume(_box(shape, (2, 3, 2), (4, 4, 6)), "hit")  # 1 voxel (1 mm) along Y
    missed = _volume(reference, "missed"), _volume(np.zeros(shape), "missed")
    labels = {0: "background", 1: "organ"}
    alone = score_cases([hit], labels, references_given=True)
    both = score_cases([hit, missed], labels, references_given=True)
    assert alone["means"]["hd95"] == pytest.approx(1.0)
    diagonal = image_diagonal_mm(shape, SPACING)
    assert both["cases"][1]["hd95"]["organ"] == pytest.approx(diagonal)  # the longest distance in the image
    assert both["means"]["hd95"] == pytest.approx((1.0 + diagonal) / 2)
    assert both["means"]["hd95"] > alone["means"]["hd95"]
    assert both["mean_dice"] < alone["mean_dice"]  # as the Dice of the miss (0) already did


@pytest.mark.parametrize(("labels", "stray", "where"), [
    ({0: "background", 1: "a", 2: "b"}, 255, "prediction"),  # another tool's "255 = foreground"
    ({0: "background", 1: "a", 3: "b"}, 2, "prediction"),  # in a gap between the declared values
    ({0: "background", 1: "a", 2: "b"}, 7, "reference"),
])
def test_a_label_value_the_dataset_does_not_declare_is_refused_with_exit_2(tmp_path, capsys, labels, stray, where):
    shape = (6, 8, 8)
    reference = _box(shape, (1, 1, 1), (3, 3, 3), value=1)
    reference = _box(shape, (1, 5, 5), (2, 2, 2), value=max(labels), out=reference)
    faulty = reference.copy()
    faulty[4, 6, 1] = stray
    references = {"case_000": reference, "case_001": faulty if where == "reference" else reference}
    data = _dataset(tmp_path / "data", labels, references)
    predictions = _predictions(tmp_path / "predictions", {
        "case_000": reference, "case_001": faulty if where == "prediction" else reference})
    out = tmp_path / "scores.json"
    assert main(["evaluate", "--predictions", str(predictions), "--data", str(data), "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    named = predictions / "case_001.nii.gz" if where == "prediction" else data / "labelsTr" / "case_001.nii.gz"
    assert f"{named}: holds label value(s) {stray}, not declared in dataset.json for a {where}" in err
    assert f"(the dataset declares labels {', '.join(map(str, labels))}); map or remove value(s) {stray} " in err
    assert not out.exists()


@pytest.mark.parametrize("fault", ["cropped", "moved"])
def test_a_prediction_on_another_grid_is_refused_in_one_line(tmp_path, capsys, fault):
    reference = _box((6, 8, 8), (1, 1, 1), (3, 3, 3))
    data = _dataset(tmp_path / "data", {0: "background", 1: "a"}, {"case_000": reference})
    affine = affine_from_spacing(SPACING)
    if fault == "moved":
        affine[:3, 3] = (0, 5, 0)
    else:
        reference = reference[:, :, :6]
    write_volume(Volume(reference, affine), tmp_path / "predictions" / "case_000.nii.gz")
    assert main(["evaluate", "--predictions", str(tmp_path / "predictions"), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    shown = "6 x 8 x 6" if fault == "cropped" else "6 x 8 x 8"
    assert (f"case_000.nii.gz: shape {shown} (Z, Y, X), spacing 2 x 1 x 0.5 mm, but its reference "
            f"{data / 'labelsTr' / 'case_000.nii.gz'} has shape 6 x 8 x 8 (Z, Y, X), spacing 2 x 1 x 0.5 mm") in err
    assert ("(origin differs by 5 mm); " in err) == (fault == "moved")
    assert err.rstrip().endswith("write the prediction on its image's own grid (or resample it onto the reference's) "
                                 "and evaluate again.")


def _one_hot_scores(prediction, truth, num_labels, spacing, tolerance_mm):
    """The scores as napari-pgps computed them before issue 31: MONAI's metrics on dense one-hot maps of all labels
    (kept here, inlined, to check the per-label computation against)."""
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice
    from monai.networks.utils import one_hot

    pred, true = (one_hot(torch.as_tensor(np.asarray(m, np.int64))[None, None], num_labels)
                  for m in (prediction, truth))
    predicted = pred[0, 1:].flatten(1).sum(1).numpy().astype(np.float64)
    reference = true[0, 1:].flatten(1).sum(1).numpy().astype(np.float64)
    overlap = (pred[0, 1:] * true[0, 1:]).flatten(1).sum(1).numpy().astype(np.float64)
    spacing = [float(s) for s in spacing]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dice = compute_dice(pred, true, include_background=False, ignore_empty=False)[0].numpy().astype(np.float64)
        hd95 = compute_hausdorff_distance(pred, true, include_background=False, percentile=95,
                                          spacing=spacing)[0].numpy().astype(np.float64)
        surface = compute_surface_dice(pred, true, [tolerance_mm] * (num_labels - 1), include_background=False,
                                       spacing=spacing)[0].numpy().astype(np.float64)
    dice[(predicted == 0) & (reference == 0)] = np.nan
    hd95[(predicted == 0) | (reference == 0)] = np.nan
    surface[(predicted == 0) ^ (reference == 0)] = 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"dice": dice, "hd95": hd95, "surface_dice": surface,
                "precision": np.where(predicted > 0, overlap / predicted, np.nan),
                "recall": np.where(reference > 0, overlap / reference, np.nan)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_label_scores_equal_the_one_hot_computation_they_replace(seed):
    """Smooth random multi-label maps (every voxel labelled, so surfaces are long and ragged), one label missing from
    the prediction and one from the reference, at an anisotropic spacing."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    labels, shape, spacing = 6, (14, 22, 26), (2.5, 0.7, 0.9)
    truth, prediction = (gaussian_filter(rng.normal(size=(labels, *shape)), (0, 2, 2, 2)).argmax(0) for _ in "ab")
    prediction[prediction == 2] = 0
    truth[truth == 4] = 0
    for tolerance in (1.0, 2.1):
        new, old = scores_per_label(prediction, truth, labels, spacing, tolerance), _one_hot_scores(
            prediction, truth, labels, spacing, tolerance)
        for metric in ("dice", "surface_dice", "precision", "recall"):
            np.testing.assert_allclose(new[metric], old[metric], atol=1e-6, err_msg=metric)
        measured = np.isfinite(old["hd95"])
        assert measured.sum() == labels - 3  # both labels 2 and 4 are missing from one of the maps
        np.testing.assert_allclose(new["hd95"][measured], old["hd95"][measured], atol=1e-4)
        assert (new["hd95"][~measured] == image_diagonal_mm(shape, spacing)).all()  # was NaN: left out of means


def test_scoring_memory_grows_with_the_voxels_not_the_labels():
    """The peak resident memory that scoring 14 labels of a 96 x 128 x 128 volume adds (a fresh process): a few bytes
    a voxel (boolean masks of one label at a time), not the 2 x 14 x 4 bytes of two float32 one-hot maps (measured
    367 bytes a voxel before issue 31)."""
    code = """
import resource, numpy as np
from napari_pgps.engine.metrics import scores_per_label
rng = np.random.default_rng(0)
shape, labels = (96, 128, 128), 14
truth, prediction = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
for value in range(1, labels):
    size = rng.integers(8, 40, 3)
    corner = [int(rng.integers(2, s - z)) for s, z in zip(shape, size)]
    truth[tuple(slice(c, c + z) for c, z in zip(corner, size))] = value
    prediction[tuple(slice(c - 1, c - 1 + z) for c, z in zip(corner, size))] = value
scores_per_label(prediction[:8, :8, :8], truth[:8, :8, :8], labels, (1, 1, 1))  # libraries loaded
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
scores = scores_per_label(prediction, truth, labels, (2.0, 0.8, 0.8))
assert np.isfinite(scores["hd95"]).all()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024 / truth.size)
"""
    added = float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                 text=True).stdout.split()[-1])
    assert added < 24, f"scoring added {added:.1f} bytes a voxel"


def test_the_ignore_label_is_left_out_of_every_score_and_not_scored_as_a_class(tmp_path, capsys):
    """nnU-Net v2's ``ignore``: the prediction's voxels where the reference is ``ignore`` count for nothing."""
    shape = (8, 8, 12)
    reference = _box(shape, (2, 2, 2), (4, 4, 4))
    reference[:, :, 8:] = 2  # unannotated
    prediction = _box(shape, (2, 2, 2), (4, 4, 4))
    prediction[3:5, 3:5, 9:11] = 1  # inside the unannotated part: neither right nor wrong
    labels = {0: "background", 1: "organ", 2: "ignore"}
    data = _dataset(tmp_path / "data", labels, {"case_000": reference}, nnunet=True)
    predictions = _predictions(tmp_path / "predictions", {"case_000": prediction})
    report = evaluate_folder(predictions, data)
    assert list(report["dice_per_label"]) == ["organ"] and list(report["metrics"]["hd95"]) == ["organ"]
    case = report["cases"][0]
    assert case["dice"]["organ"] == 1.0 and case["precision"]["organ"] == 1.0 and case["hd95"]["organ"] == 0.0
    assert case["surface_dice"]["organ"] == 1.0

    prediction[0, 0, 0] = 2  # a prediction cannot hold the ignore label
    _predictions(predictions, {"case_000": prediction})
    assert main(["evaluate", "--predictions", str(predictions), "--data", str(data)]) == 2
    assert ("case_000.nii.gz: holds label value(s) 2, not declared in dataset.json for a prediction (the dataset "
            "declares labels 0, 1, and 2, the ignore label of references)") in capsys.readouterr().err


def test_postprocessing_is_chosen_without_the_ignored_voxels():
    """A second part of the prediction lies where the reference is unannotated: keeping only the largest part would
    change nothing that is scored, so it is not chosen (without the ignore label it would seem to help)."""
    reference = _box((8, 8, 12), (2, 2, 2), (4, 4, 4))
    reference[:, :, 8:] = 2
    prediction = _box((8, 8, 12), (2, 2, 2), (4, 4, 4))
    prediction[3:5, 3:5, 9:11] = 1
    labels = {0: "background", 1: "organ"}
    chosen, evidence = choose_postprocessing([(prediction, reference)], labels, ignore_label=2)
    assert not chosen.foreground and chosen.labels == [] and evidence["before"]["organ"] == 1.0
    seen_as_a_class = np.where(reference == 2, 0, reference)
    assert choose_postprocessing([(prediction, seen_as_a_class)], labels)[0].foreground
