"""Per-class probabilities on the input's grid (segment_volume(keep_probabilities=True)) and their files
(data/probabilities.py)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_pgps._sample_data import make_phantom
from napari_pgps.data.probabilities import PROBABILITIES_KEY, probabilities_paths, write_probabilities
from napari_pgps.data.volume import Volume, read_volume
from napari_pgps.engine import load_model, segment_volume
from napari_pgps.errors import InputError


def test_probability_files_sit_beside_the_segmentation():
    assert probabilities_paths(Path("out/case_001.nii.gz")) == (Path("out/case_001_probabilities.npz"),
                                                                Path("out/case_001_probabilities.nii.gz"))
    assert probabilities_paths(Path("seg.dcm")) == (Path("seg_probabilities.npz"), Path("seg_probabilities.nii.gz"))


def test_probabilities_on_the_input_grid_sum_to_one_and_their_argmax_is_the_labels(trained_phantom_run, tmp_path):
    model = load_model(trained_phantom_run, "cpu")
    image, _ = make_phantom(52, shape=(14, 40, 36), spacing=(3.0, 0.7, 0.9))
    affine = np.diag([-0.9, -0.7, 3.0, 1.0])  # LPS, another spacing than the model's: reoriented and resampled
    affine[:3, 3] = (40, 30, -20)
    result = segment_volume(model, Volume(image, affine), keep_probabilities=True)
    assert any("LPS" in note for note in result.notes)
    archive, nifti = write_probabilities(result.probabilities, result.labels, model.config.labels,
                                         tmp_path / "case.nii.gz")
    assert (archive.name, nifti.name) == ("case_probabilities.npz", "case_probabilities.nii.gz")

    with np.load(archive) as saved:
        probabilities = saved[PROBABILITIES_KEY]
        assert probabilities.shape == (3, 14, 40, 36) and probabilities.dtype == np.float32
        np.testing.assert_allclose(probabilities.sum(axis=0), 1, atol=1e-5)
        np.testing.assert_array_equal(saved["label_values"][np.argmax(probabilities, axis=0)], result.labels.array)
        assert saved["label_names"].tolist() == [model.config.labels[v] for v in sorted(model.config.labels)]
        np.testing.assert_allclose(saved["spacing"], (3.0, 0.7, 0.9))
        np.testing.assert_array_equal(saved["affine"], affine)
    assert 0 < (result.labels.array > 0).mean() < 1  # something segmented, not everything

    stored = nib.load(nifti)
    assert stored.shape == (36, 40, 14, 3)
    np.testing.assert_allclose(stored.affine, affine)
    np.testing.assert_array_equal(read_volume(nifti).array, probabilities)


def test_probabilities_that_do_not_fit_the_grid_are_refused(tmp_path):
    like = Volume(np.zeros((4, 5, 6), np.uint8))
    with pytest.raises(InputError, match="one channel for each of the 3 labels"):
        write_probabilities(np.zeros((2, 4, 5, 6), np.float32), like, {0: "bg", 1: "a", 2: "b"}, tmp_path / "x.nii.gz")
    assert not list(tmp_path.iterdir())
