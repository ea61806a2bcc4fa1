"""The napari reader and writer functions, without a viewer: placement in world space, header codes."""

import nibabel as nib
import numpy as np
import pytest

from napari_pgps._reader import napari_get_reader, read_nifti
from napari_pgps._writer import write_labels


def _affine():
    affine = np.diag([0.8, 0.9, 2.5, 1.0])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    return affine


def _lps_oblique():
    """An LPS affine with a 10-degree rotation about z (as scanners write): axes point left, posterior, superior."""
    angle = np.radians(10)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-0.8, -0.9, 2.5])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    return affine


def test_reader_places_the_volume_with_its_affine_in_zyx_world_order(tmp_path):
    nib.save(nib.Nifti1Image(np.random.rand(4, 5, 6).astype(np.float32), _affine()), str(tmp_path / "ct.nii.gz"))
    (tmp_path / "labelsTr").mkdir()
    nib.save(nib.Nifti1Image(np.ones((4, 5, 6), np.uint8), _affine()), str(tmp_path / "labelsTr" / "ct.nii.gz"))
    assert napari_get_reader(str(tmp_path / "x.png")) is None
    reader = napari_get_reader(str(tmp_path / "ct.nii.gz"))
    [(data, meta, kind)] = reader(str(tmp_path / "ct.nii.gz"))
    assert kind == "image" and data.shape == (6, 5, 4)
    expected = np.diag([2.5, 0.9, 0.8, 1.0])
    expected[:3, 3] = [30.0, -20.0, 10.0]
    np.testing.assert_allclose(meta["affine"], expected)
    np.testing.assert_allclose(meta["metadata"]["affine"], _affine())
    [(labels, _, kind)] = read_nifti([str(tmp_path / "labelsTr" / "ct.nii.gz")])
    assert kind == "labels" and labels.dtype == np.uint8


@pytest.mark.parametrize("affine", [_affine(), _lps_oblique()], ids=["ras", "lps-oblique"])
def test_a_voxel_lands_where_the_file_says(tmp_path, affine):
    nib.save(nib.Nifti1Image(np.random.rand(4, 5, 6).astype(np.float32), affine), str(tmp_path / "a.nii.gz"))
    [(_, meta, _)] = read_nifti(str(tmp_path / "a.nii.gz"))
    i, j, k = 3, 1, 4
    world_xyz = (affine @ [i, j, k, 1])[:3]
    world_zyx = (np.asarray(meta["affine"]) @ [k, j, i, 1])[:3]  # napari: data (Z, Y, X) -> world (z, y, x)
    np.testing.assert_allclose(world_zyx, world_xyz[::-1], atol=1e-9)


def test_a_4d_image_opens_as_one_layer_per_channel(tmp_path):
    nib.save(nib.Nifti1Image(np.random.rand(4, 5, 6, 2).astype(np.float32), _affine()), str(tmp_path / "mr.nii.gz"))
    [(data, meta, kind)] = read_nifti(str(tmp_path / "mr.nii.gz"))
    assert data.shape == (2, 6, 5, 4) and meta["channel_axis"] == 0 and meta["name"] == ["mr [0]", "mr [1]"]


def test_writer_writes_the_layer_placement_and_the_source_header_codes(tmp_path):
    labels = np.zeros((6, 5, 4), np.uint8)
    labels[1, 2, 3] = 2
    placement = np.diag([2.5, 0.9, 0.8, 1.0])
    placement[:3, 3] = [30.0, -20.0, 10.0]
    codes = {"sform_code": 2, "qform_code": 1, "unit": "mm"}
    [path] = write_labels(str(tmp_path / "a.nii.gz"), labels, {"affine": placement, "metadata": {"nifti": codes}})
    saved = nib.load(path)
    np.testing.assert_allclose(saved.affine, _affine())
    assert np.asanyarray(saved.dataobj)[3, 2, 1] == 2
    assert (int(saved.header["sform_code"]), int(saved.header["qform_code"])) == (2, 1)
    assert saved.header.get_xyzt_units()[0] == "mm"
    [path] = write_labels(str(tmp_path / "b.nii"), labels, {"scale": (2.5, 0.9, 0.8), "translate": (30.0, -20.0, 10.0)})
    np.testing.assert_allclose(nib.load(path).affine, _affine())
