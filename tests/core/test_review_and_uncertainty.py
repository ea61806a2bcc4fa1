"""Reviewing a result against a reference (no viewer), the entropy map and `segment --uncertainty`."""

import nibabel as nib
import numpy as np
import pytest

from helpers import REVIEW_SPACING, shifted_cubes
from napari_pgps.cli import main
from napari_pgps.engine.metrics import entropy_map
from napari_pgps.engine.review import FALSE_NEGATIVE, FALSE_POSITIVE, disagreement_map, review_labels

SPACING = REVIEW_SPACING
NAMES = {0: "background", 1: "lesion", 2: "vessel"}


def test_review_of_shifted_cubes_matches_the_hand_count():
    result, reference = shifted_cubes()
    kept = result.copy(), reference.copy()
    review = review_labels(result, reference, SPACING, NAMES)
    lesion, vessel = review.labels
    assert (lesion.name, vessel.name) == ("lesion", "vessel")
    assert (lesion.voxels, vessel.voxels) == (144, 48)
    assert lesion.ml == pytest.approx(0.144) and vessel.ml == pytest.approx(0.048)
    assert lesion.dice == pytest.approx(2 * 96 / (144 + 192), abs=1e-6)
    assert vessel.dice == pytest.approx(2 * 24 / (48 + 48), abs=1e-6)
    # the vessel moved 2 voxels along Y (1 mm each); the lesion's far X faces are 4 voxels (0.5 mm each) apart
    assert vessel.hd95 == pytest.approx(2.0) and lesion.hd95 == pytest.approx(2.0)
    assert lesion.ml_difference == pytest.approx((144 - 192) / 1000) and vessel.ml_difference == pytest.approx(0.0)
    assert review.false_positives == (144 - 96) + (48 - 24)
    assert review.false_negatives == (192 - 96) + (48 - 24)
    expected = np.zeros_like(result)
    expected[2:6, 3:9, 4:6] = FALSE_POSITIVE
    expected[2:6, 3:9, 10:14] = FALSE_NEGATIVE
    expected[7:9, 10:12, 14:20] = FALSE_POSITIVE
    expected[7:9, 14:16, 14:20] = FALSE_NEGATIVE
    np.testing.assert_array_equal(review.disagreement, expected)
    np.testing.assert_array_equal(result, kept[0])
    np.testing.assert_array_equal(reference, kept[1])


def test_disagreement_counts_another_label_as_a_false_positive_and_names_unknown_values():
    result = np.array([[[0, 1, 2, 2, 0]]], np.uint8)
    reference = np.array([[[1, 1, 1, 0, 0]]], np.uint8)
    np.testing.assert_array_equal(disagreement_map(result, reference), [[[FALSE_NEGATIVE, 0, FALSE_POSITIVE,
                                                                          FALSE_POSITIVE, 0]]])
    review = review_labels(np.where(result == 2, 5, result), reference, (1, 1, 1), {0: "background", 1: "a"})
    assert [row.name for row in review.labels] == ["a", "label 5"]
    # label 5 is only in the result (a spurious structure): Dice 0, HD95 the diagonal of the 1 x 1 x 5 mm image
    assert review.labels[1].hd95 == pytest.approx(np.sqrt(27)) and review.labels[1].dice == 0.0


def test_the_review_scores_a_case_to_the_last_digit_as_evaluate_does():
    from napari_pgps.data.geometry import affine_from_spacing
    from napari_pgps.data.volume import Volume
    from napari_pgps.tasks.evaluation import score_cases

    result, reference = shifted_cubes()
    result[0, 0, :3] = 7  # a structure only the result has: Dice 0, HD95 the image's diagonal
    names = NAMES | {7: "spurious"}
    affine = affine_from_spacing(SPACING)
    [case] = score_cases([(Volume(reference, affine), Volume(result, affine))], names, references_given=True)["cases"]
    review = review_labels(result, reference, SPACING, names)
    assert [row.name for row in review.labels] == ["lesion", "vessel", "spurious"]
    for row in review.labels:
        assert (row.dice, row.hd95) == (case["dice"][row.name], case["hd95"][row.name])
    assert review.labels[2].dice == 0.0 and review.labels[2].hd95 > 10


def test_entropy_map_is_0_when_certain_and_1_when_uniform():
    certain = np.zeros((3, 2, 2, 2), np.float32)
    certain[1] = 1
    np.testing.assert_allclose(entropy_map(certain), 0.0, atol=1e-5)
    uniform = np.full((3, 2, 2, 2), 1 / 3, np.float32)
    out = entropy_map(uniform)
    assert out.dtype == np.float32 and out.shape == (2, 2, 2)
    np.testing.assert_allclose(out, 1.0, atol=1e-5)


def test_segment_writes_the_uncertainty_with_the_input_affine(tmp_path, trained_phantom_run, phantom_dataset, capsys):
    source = phantom_dataset / "imagesTr" / "case_000.nii.gz"
    out = tmp_path / "seg.nii.gz"
    assert main(["segment", "--model", str(trained_phantom_run), "--input", str(source), "--output", str(out),
                 "--device", "cpu", "--uncertainty"]) == 0
    assert "seg_uncertainty.nii.gz" in capsys.readouterr().out
    written, original = nib.load(str(tmp_path / "seg_uncertainty.nii.gz")), nib.load(str(source))
    assert written.shape == original.shape
    np.testing.assert_allclose(written.affine, original.affine)
    assert written.get_data_dtype() == np.float32
    values = np.asanyarray(written.dataobj)
    assert values.dtype == np.float32 and 0.0 <= values.min() and values.max() <= 1.0 + 1e-6
    assert nib.load(str(out)).shape == original.shape

    assert main(["segment", "--model", str(trained_phantom_run), "--input", str(source), "--output",
                 str(tmp_path / "plain.nii.gz"), "--device", "cpu"]) == 0
    assert not (tmp_path / "plain_uncertainty.nii.gz").exists()
