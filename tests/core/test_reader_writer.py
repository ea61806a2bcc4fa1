"""The napari reader and writer functions, without a viewer."""

import nibabel as nib
import pytest
import numpy as np

from napari_pgps._reader import napari_get_reader, read_nifti
from napari_pgps._writer import write_labels


def _affine():
    affine = np.diag([0.8, 0.9, 2.5, 1.0])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    return affine


def test_reader_sets_scale_translate_and_keeps_the_affine(tmp_path):
    nib.save(nib.Nifti1Image(np.random.rand(4, 5, 6).astype(np.float32), _affine()), str(tmp_path / "ct.nii.gz"))
    (tmp_path / "labelsTr").mkdir()
    nib.save(nib.Nifti1Image(np.ones((4, 5, 6), np.uint8), _affine()), str(tmp_path / "labelsTr" / "ct.nii.gz"))
    assert napari_get_reader(str(tmp_path / "x.png")) is None
    reader = napari_get_reader(str(tmp_path / "ct.nii.gz"))
    [(data, meta, kind)] = reader(str(tmp_path / "ct.nii.gz"))
    assert kind == "image" and data.shape == (6, 5, 4)
    assert meta["scale"] == pytest.approx((2.5, 0.9, 0.8)) and meta["translate"] == pytest.approx((30.0, -20.0, 10.0))
    np.testing.assert_allclose(meta["metadata"]["affine"], _affine())
    [(labels, _, kind)] = read_nifti([str(tmp_path / "labelsTr" / "ct.nii.gz")])
    assert kind == "labels" and labels.dtype == np.uint8


def test_writer_uses_the_kept_affine_or_the_scale(tmp_path):
    labels = np.zeros((6, 5, 4), np.uint8)
    labels[1, 2, 3] = 2
    [path] = write_labels(str(tmp_path / "a.nii.gz"), labels, {"metadata": {"affine": _affine()}})
    saved = nib.load(path)
    np.testing.assert_allclose(saved.affine, _affine())
    assert np.asanyarray(saved.dataobj)[3, 2, 1] == 2
    [path] = write_labels(str(tmp_path / "b.nii"), labels, {"scale": (2.5, 0.9, 0.8), "translate": (30.0, -20.0, 10.0)})
    np.testing.assert_allclose(nib.load(path).affine, _affine())
