"""Real files stored other ways: the same anatomy gets the same answer in world space.

A small model is trained on hippocampus cases (1 mm, RAS); held-out cases are then written with their file
axes permuted and flipped, and with one axis resampled to 2.5 mm, each with a truthful affine, and segmented.
BraTS (2 channels, LPS headers, labels 0-4) trains and segments from the command line.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_pgps.cli import main
from napari_pgps.config import RunConfig
from napari_pgps.data.geometry import resample_labels
from napari_pgps.data.volume import read_volume
from napari_pgps.engine import load_model, segment_volume
from napari_pgps.engine.metrics import dice_per_label
from napari_pgps.tasks.evaluation import labelled_cases

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def hippocampus_model(hippocampus_run):
    """The quick model on 40 hippocampus cases (tests/conftest.py)."""
    return load_model(hippocampus_run[0], "cpu")


def _permute(volume):
    """The volume stored with file axes (k, i, j), the first flipped, and the affine that keeps it in place."""
    data = np.transpose(volume.array, (2, 1, 0))  # file (i, j, k)
    out = np.flip(np.transpose(data, (2, 0, 1)), 0)
    to_old = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [-1, 0, 0, data.shape[2] - 1], [0, 0, 0, 1]], dtype=float)
    from napari_pgps.data.volume import Volume

    return Volume(np.ascontiguousarray(np.transpose(out, (2, 1, 0))), volume.affine @ to_old)


def _unpermute(array):
    """A label map on the permuted grid (Z', Y', X'), back on the original grid (Z, Y, X)."""
    file = np.flip(np.transpose(array, (2, 1, 0)), 0)  # (a, b, c) with a unflipped
    return np.transpose(np.transpose(file, (1, 2, 0)), (2, 1, 0))


def test_permuted_and_flipped_files_segment_to_the_same_labels_in_world_space(hippocampus_model, hippocampus):
    model = hippocampus_model
    for case in labelled_cases(model, hippocampus, "validation")[:4]:
        original = segment_volume(model, case.image)
        moved = segment_volume(model, _permute(case.image))
        assert moved.notes == [f"reoriented from {_codes(_permute(case.image))} to RAS"]
        np.testing.assert_array_equal(_unpermute(moved.labels.array), original.labels.array)
        np.testing.assert_allclose(moved.labels.affine, _permute(case.image).affine)
        assert moved.volumes == original.volumes


def test_a_thick_axis_is_resampled_to_the_model_and_back(hippocampus_model, hippocampus):
    """Cases with their first array axis (file k) at 2.5 mm: segmented on their own grid, they agree with the
    original's segmentation brought to that grid, and score close to the original against their labels."""
    from napari_pgps.data.geometry import resample
    from napari_pgps.data.volume import Volume

    model = hippocampus_model
    agreement, dice_thick, dice_original = [], [], []
    for case in labelled_cases(model, hippocampus, "validation")[:6]:
        n = case.image.shape[0]
        new_n = int(round(n / 2.5))
        shape = (new_n,) + case.image.shape[1:]
        affine = case.image.affine.copy()
        affine[:3, 2] *= n / new_n
        image = Volume(resample(case.image.array[None], shape, 3, 0, 3)[0], affine)
        truth = resample_labels(case.labels.array, shape, 0)
        result = segment_volume(model, image)
        assert result.labels.shape == shape and np.allclose(result.labels.affine, affine)
        assert any(note.startswith("resampled from 2.") and note.endswith("and back") for note in result.notes)
        original = segment_volume(model, case.image)
        brought = resample_labels(original.labels.array, shape, 0)
        values = sorted(model.config.labels)
        lookup = np.zeros(max(values) + 1, np.int64)
        lookup[values] = np.arange(len(values))
        agreement.append(np.nanmean(dice_per_label(lookup[result.labels.array], lookup[brought], len(values))))
        dice_thick.append(np.nanmean(dice_per_label(lookup[result.labels.array], lookup[truth], len(values))))
        dice_original.append(np.nanmean(dice_per_label(lookup[original.labels.array], lookup[case.labels.array],
                                                       len(values))))
        # volumes are measured on the input's grid, in mL
        voxel_ml = float(np.prod(result.labels.spacing)) / 1000
        first = model.config.labels[values[1]]
        assert result.volumes[first]["ml"] == pytest.approx(result.volumes[first]["voxels"] * voxel_ml)
    assert np.mean(agreement) > 0.8
    assert np.mean(dice_thick) > np.mean(dice_original) - 0.1


def test_brats_trains_and_segments_from_the_command_line_on_its_own_grid(tmp_path, brats, brats_run):
    run = brats_run
    config = RunConfig.load(run / "config.yaml")
    assert config.channels == ["FLAIR", "T1c"] and config.model.in_channels == 2
    assert config.labels == {0: "background", 1: "necrosis", 2: "edema", 3: "non-enhancing tumour",
                             4: "enhancing tumour"}
    assert len(config.normalization) == 2 and config.preprocessing.orientation == "RAS"
    source = brats / "imagesTr" / "brats15_pat0003.nii.gz"
    out = tmp_path / "seg.nii.gz"
    assert main(["segment", "--model", str(run), "--input", str(source), "--output", str(out), "--device", "cpu",
                 "--patch-size", "64", "64", "64"]) == 0
    written, original = nib.load(str(out)), nib.load(str(source))
    assert written.shape == original.shape[:3]
    np.testing.assert_allclose(written.affine, original.affine)
    assert nib.aff2axcodes(written.affine) == ("L", "P", "S")
    assert int(written.header["sform_code"]) == int(original.header["sform_code"])
    labels = read_volume(out, kind="labels")
    assert set(np.unique(labels.array)) <= {0, 1, 2, 3, 4}


def _codes(volume) -> str:
    return "".join(nib.aff2axcodes(volume.affine))
