"""Metrics as the field computes them, scoring folders, cross-validation folds, ensembles and post-processing."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from helpers import quick_config
from napari_pgps.cli import main
from napari_pgps.data.dataset import fold_splits
from napari_pgps.engine import load_model, segment_volume
from napari_pgps.engine.metrics import dice_per_label, scores_per_label
from napari_pgps.engine.postprocessing import Postprocessing, choose_postprocessing, largest_component
from napari_pgps.errors import InputError


def _cube(start, size=4, shape=(10, 10, 10)):
    out = np.zeros(shape, np.int64)
    out[tuple(slice(s, s + size) for s in start)] = 1
    return out


def test_dice_follows_nnunets_convention_for_empty_references():
    empty, cube = np.zeros((6, 6, 6), np.int64), _cube((1, 1, 1), 3, (6, 6, 6))
    assert np.isnan(dice_per_label(empty, empty, 2)[0])  # absent from both: not counted
    assert dice_per_label(cube, empty, 2)[0] == 0.0  # predicted where the reference has none: 0 (MONAI's NaN before)
    assert dice_per_label(empty, cube, 2)[0] == 0.0  # missed
    assert dice_per_label(cube, cube, 2)[0] == 1.0


def test_hd95_and_surface_dice_of_two_shifted_cubes_at_a_known_spacing():
    """Two 4-voxel cubes, one shifted by one voxel along Z, where voxels are 2 x 1 x 1 mm.

    HD95: every surface voxel is at most one Z step (2 mm) from the other surface, and the bottom face of one
    (and top face of the other) is exactly 2 mm away, so the 95th percentile is 2 mm. Surface Dice at 1 mm: of
    each cube's 56 surface voxels, the 16 of its outer Z face are 2 mm from the other surface, the other 40
    are within 1 mm; (40 + 40) / (56 + 56) = 0.714.
    """
    scores = scores_per_label(_cube((3, 2, 2)), _cube((2, 2, 2)), 2, (2.0, 1.0, 1.0), tolerance_mm=1.0)
    assert scores["dice"][0] == pytest.approx(0.75)
    assert scores["hd95"][0] == pytest.approx(2.0)
    assert scores["surface_dice"][0] == pytest.approx(80 / 112)
    assert scores["precision"][0] == pytest.approx(0.75) and scores["recall"][0] == pytest.approx(0.75)
    wide = scores_per_label(_cube((3, 2, 2)), _cube((2, 2, 2)), 2, (2.0, 1.0, 1.0), tolerance_mm=2.0)
    assert wide["surface_dice"][0] == pytest.approx(1.0)
    empty = np.zeros((10, 10, 10), np.int64)
    nothing = scores_per_label(empty, _cube((2, 2, 2)), 2, (1, 1, 1))
    # missed: HD95 is the image's diagonal, sqrt(3) * 10 mm, longer than any distance inside the image
    assert nothing["hd95"][0] == pytest.approx(np.sqrt(300)) and nothing["surface_dice"][0] == 0
    assert np.isnan(nothing["precision"][0]) and nothing["recall"][0] == 0
    spurious = scores_per_label(_cube((2, 2, 2)), empty, 2, (2, 1, 1))
    assert spurious["hd95"][0] == pytest.approx(np.sqrt(600)) and spurious["dice"][0] == 0
    neither = scores_per_label(empty, empty, 2, (1, 1, 1))
    assert all(np.isnan(neither[metric][0]) for metric in ("dice", "hd95", "surface_dice", "precision", "recall"))


def test_folds_are_disjoint_and_cover_every_case():
    names = [f"case_{i:03d}" for i in range(23)]
    splits = fold_splits(names, 5, seed=0)
    validation = [n for split in splits for n in split["validation"]]
    assert sorted(validation) == names and len(set(validation)) == 23
    assert [len(s["validation"]) for s in splits] in ([5, 5, 5, 4, 4], [5, 5, 5, 4, 4][::-1])
    for split in splits:
        assert set(split["training"]).isdisjoint(split["validation"])
        assert sorted(split["training"] + split["validation"]) == names
    assert fold_splits(names, 5, seed=0) == splits and fold_splits(names, 5, seed=1) != splits
    with pytest.raises(InputError, match="between 2 and 23 folds"):
        fold_splits(names, 1, 0)


def test_postprocessing_is_chosen_per_label_and_applied_only_to_those_labels():
    reference = np.zeros((12, 12, 12), np.int64)
    reference[2:6, 2:6, 2:6] = 1
    reference[7:11, 7:11, 7:11] = 2
    reference[0, 0, 10:12] = 2  # label 2 has a second, small part: keeping only its largest one would lose it
    prediction = reference.copy()
    prediction[0, 11, 11] = 1  # a stray island of label 1: removing it helps
    chosen, evidence = choose_postprocessing([(prediction, reference)], {0: "bg", 1: "one", 2: "two"})
    # the foreground as one would keep only one of the two cubes; label 2 alone would lose its second part
    assert chosen.labels == [1] and not chosen.foreground
    assert evidence["one"]["one"] > evidence["before"]["one"]
    cleaned = chosen.apply(prediction)
    assert cleaned[0, 11, 11] == 0 and (cleaned[0, 0, 10:12] == 2).all()
    np.testing.assert_array_equal(cleaned[cleaned != prediction], 0)
    assert largest_component(np.zeros((3, 3, 3), bool)).sum() == 0


def test_an_ensemble_of_two_models_is_the_mean_of_their_probabilities(tmp_path, phantom_dataset, trained_phantom_run):
    from napari_pgps import train

    other = tmp_path / "other"
    config = quick_config(phantom_dataset, epochs=1, iterations=2)
    config.training.seed = 3
    list(train(config, other))
    first, second = load_model(trained_phantom_run, "cpu"), load_model(other, "cpu")
    image = load_cases_first(phantom_dataset)
    a = segment_volume(first, image, keep_probabilities=True).probabilities
    b = segment_volume(second, image, keep_probabilities=True).probabilities
    both = segment_volume([first, second], image, keep_probabilities=True)
    np.testing.assert_allclose(both.probabilities, (a + b) / 2, atol=1e-6)
    np.testing.assert_array_equal(both.labels.array, np.array([0, 1, 2])[((a + b) / 2).argmax(0)])
    assert "ensemble of 2 models" in both.notes


def load_cases_first(dataset):
    from napari_pgps.data.dataset import load_cases, read_dataset_info

    return load_cases(read_dataset_info(dataset), max_cases=1)[0].image


def test_evaluate_scores_a_folder_and_refuses_another_grid(tmp_path, phantom_dataset, capsys):
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    for label in (phantom_dataset / "labelsTr").iterdir():
        shutil.copy(label, predictions / label.name)
    out = tmp_path / "scores.json"
    assert main(["evaluate", "--predictions", str(predictions), "--data", str(phantom_dataset), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["mean_dice"] == 1.0 and report["means"]["hd95"] == 0.0 and report["means"]["surface_dice"] == 1.0
    assert set(report["cases"][0]) == {"case", "dice", "hd95", "surface_dice", "precision", "recall", "dice_per_label"}
    moved = nib.load(str(predictions / "case_002.nii.gz"))
    nib.save(nib.Nifti1Image(np.asanyarray(moved.dataobj), moved.affine @ np.diag([2, 1, 1, 1])),
             str(predictions / "case_002.nii.gz"))
    assert main(["evaluate", "--predictions", str(predictions), "--data", str(phantom_dataset)]) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]  # one line
    assert "case_002.nii.gz: shape" in message and "spacing 2.5 x 0.8 x 1.6 mm" in message  # X doubled
    assert message.endswith("write the prediction on its image's own grid (or resample it onto the reference's) and "
                            "evaluate again.")
    (predictions / "case_003.nii.gz").unlink()
    assert main(["evaluate", "--predictions", str(predictions), "--data", str(phantom_dataset)]) == 2
    assert "no prediction for case 'case_003'" in capsys.readouterr().err


def test_cross_validation_folds_train_evaluate_pooled_and_choose_postprocessing(tmp_path, phantom_dataset):
    runs = []
    for fold in (0, 1):
        run = tmp_path / f"fold{fold}"
        assert main(["train", "--data", str(phantom_dataset), "--out", str(run), "--fold", str(fold), "--folds", "3",
                     "--epochs", "1", "--iterations-per-epoch", "2", "--patch-size", "8", "32", "32", "--device", "cpu",
                     "--quiet"]) == 0
        runs.append(run)
    splits = [json.loads((run / "splits.json").read_text()) for run in runs]
    assert splits[0]["all_folds"] == splits[1]["all_folds"] and (splits[0]["fold"], splits[1]["fold"]) == (0, 1)
    assert set(splits[0]["validation"]).isdisjoint(splits[1]["validation"])
    out = tmp_path / "cv.json"
    assert main(["evaluate", "--model", *map(str, runs), "--data", str(phantom_dataset), "--split", "validation",
                 "--json", str(out), "--device", "cpu"]) == 0
    report = json.loads(out.read_text())
    assert [f["fold"] for f in report["folds"]] == [0, 1]
    pooled = [row["case"] for row in report["pooled"]["cases"]]
    assert sorted(pooled) == sorted(splits[0]["validation"] + splits[1]["validation"])
    assert main(["evaluate", "--model", *map(str, runs), "--data", str(phantom_dataset)]) == 2  # folds or ensemble?
    assert main(["postprocess", "--model", *map(str, runs), "--data", str(phantom_dataset), "--device", "cpu"]) == 0
    kept = [json.loads((run / "postprocessing.json").read_text()) for run in runs]
    assert kept[0] == kept[1] and kept[0]["evidence"]["cases"] == len(pooled)
    assert isinstance(load_model(runs[0], "cpu").postprocessing, Postprocessing)
