"""The napari reader and writer functions, without a viewer: placement in world space, header codes."""

import nibabel as nib
import numpy as np
import pytest

from napari_pgps._reader import napari_get_reader, read_volumes
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
    [(labels, _, kind)] = read_volumes([str(tmp_path / "labelsTr" / "ct.nii.gz")])
    assert kind == "labels" and labels.dtype == np.uint8


@pytest.mark.parametrize("affine", [_affine(), _lps_oblique()], ids=["ras", "lps-oblique"])
def test_a_voxel_lands_where_the_file_says(tmp_path, affine):
    nib.save(nib.Nifti1Image(np.random.rand(4, 5, 6).astype(np.float32), affine), str(tmp_path / "a.nii.gz"))
    [(_, meta, _)] = read_volumes(str(tmp_path / "a.nii.gz"))
    i, j, k = 3, 1, 4
    world_xyz = (affine @ [i, j, k, 1])[:3]
    world_zyx = (np.asarray(meta["affine"]) @ [k, j, i, 1])[:3]  # napari: data (Z, Y, X) -> world (z, y, x)
    np.testing.assert_allclose(world_zyx, world_xyz[::-1], atol=1e-9)


def test_a_4d_image_opens_as_one_layer_per_channel(tmp_path):
    nib.save(nib.Nifti1Image(np.random.rand(4, 5, 6, 2).astype(np.float32), _affine()), str(tmp_path / "mr.nii.gz"))
    [(data, meta, kind)] = read_volumes(str(tmp_path / "mr.nii.gz"))
    assert data.shape == (2, 6, 5, 4) and meta["channel_axis"] == 0 and meta["name"] == ["mr [0]", "mr [1]"]


def test_an_imagej_tiff_in_micrometres_opens_at_its_spacing_in_mm_with_one_layer_per_channel(tmp_path):
    import tifffile

    path = tmp_path / "stack.tif"  # Z, C, Y, X as ImageJ stores a hyperstack; 0.5 um pixels, 2 um slices
    tifffile.imwrite(path, np.random.rand(3, 2, 5, 6).astype(np.float32), imagej=True, resolution=(2.0, 2.0),
                     metadata={"axes": "ZCYX", "spacing": 2.0, "unit": "um"})
    reader = napari_get_reader(str(path))
    assert reader is not None
    [(data, meta, kind)] = reader(str(path))
    assert kind == "image" and data.shape == (2, 3, 5, 6) and meta["channel_axis"] == 0
    np.testing.assert_allclose(np.diag(meta["affine"])[:3], [0.002, 0.0005, 0.0005])


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


# -- files stored with their axes in another order (sagittal or coronal storage) ------------------------------------
def _anatomy():
    """A RAS volume (NIfTI order x, y, z) with distinct values, voxel sizes 1 x 2 x 3 mm and an offset origin."""
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    affine = np.diag([1.0, 2.0, 3.0, 1.0])
    affine[:3, 3] = [5.0, -7.0, 11.0]
    return nib.Nifti1Image(data, affine)


def _tilted(affine, degrees=10.0):
    """``affine`` turned by ``degrees`` about the world x axis (an oblique acquisition)."""
    angle = np.radians(degrees)
    turn = np.eye(4)
    turn[1:3, 1:3] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    return turn @ affine


STORAGES = {  # nibabel orientation: for each RAS voxel axis (x, y, z), the stored axis it becomes and its direction
    "as-ras": [[0, 1], [1, 1], [2, 1]],
    "y-z-x": [[2, 1], [0, 1], [1, 1]],
    "z-x-y-flipped": [[1, -1], [2, 1], [0, -1]],
    "lps": [[0, -1], [1, -1], [2, 1]],
}


def _stored(tmp_path, storage, name="a.nii.gz", oblique=False, dtype=np.float32):
    """The anatomy saved with its axes stored as ``storage`` says (the affine saying so truthfully); its path."""
    image = _anatomy().as_reoriented(np.array(STORAGES[storage]))
    affine = _tilted(image.affine) if oblique else image.affine
    path = tmp_path / name
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj).astype(dtype), affine), str(path))
    return path


@pytest.mark.parametrize("oblique", [False, True], ids=["straight", "oblique"])
@pytest.mark.parametrize("storage", list(STORAGES))
def test_every_storage_order_opens_in_world_order_with_each_voxel_where_the_file_says(tmp_path, storage, oblique):
    path = _stored(tmp_path, storage, oblique=oblique)
    [(data, meta, _)] = read_volumes(str(path))
    affine = np.asarray(meta["affine"])
    # napari draws a 2D slice through the affine's block of the two axes shown: every such block must be invertible
    for shown in ([0, 1], [0, 2], [1, 2], [0, 1, 2]):
        assert abs(np.linalg.det(affine[np.ix_(shown, shown)])) > 0.1
    # the layer shows the RAS anatomy's axes along world z, y, x
    reference = np.transpose(np.asarray(_anatomy().dataobj), (2, 1, 0))
    assert data.shape == reference.shape
    stored = nib.load(str(path))
    file_data = np.asarray(stored.dataobj)
    for value in (0.0, 17.0, 119.0):
        index_in_layer = np.argwhere(data == value)[0]
        index_in_file = np.argwhere(file_data == value)[0]
        np.testing.assert_allclose((affine @ [*index_in_layer, 1])[:3],
                                   (stored.affine @ [*index_in_file, 1])[:3][::-1], atol=1e-9)


@pytest.mark.parametrize("storage", list(STORAGES))
def test_a_labels_layer_is_written_back_on_its_files_own_grid(tmp_path, storage):
    (tmp_path / "labelsTr").mkdir()
    source = _stored(tmp_path / "labelsTr", storage, dtype=np.uint8)  # values 0..119: a label map of 120 classes
    [(data, meta, kind)] = read_volumes(str(source))
    assert kind == "labels"
    # what napari hands the writer: the layer's data, affine and metadata
    [written] = write_labels(str(tmp_path / "out.nii.gz"), data, meta)
    original, saved = nib.load(str(source)), nib.load(written)
    np.testing.assert_array_equal(np.asarray(saved.dataobj), np.asarray(original.dataobj))
    np.testing.assert_allclose(saved.affine, original.affine, atol=1e-6)


def test_the_writer_refuses_a_layer_that_is_not_3d(tmp_path):
    from napari_pgps.errors import InputError

    with pytest.raises(InputError, match="2D"):
        write_labels(str(tmp_path / "a.nii.gz"), np.zeros((4, 5), np.uint8), {})


# -- labels or image: by name and by content --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("where", "values", "kind"),
    [
        ("labelsTr/case.nii.gz", "classes", "labels"),
        ("case_seg.nii.gz", "classes", "labels"),
        ("liver_mask.nii.gz", "classes", "labels"),
        ("segmentation-study/case.nii.gz", "classes", "image"),  # a folder's name says nothing about its files
        ("case_seg.nii.gz", "intensities", "image"),  # float intensities are an image whatever the name
        ("case_mask.nii.gz", "ct", "image"),  # whole numbers, but thousands of them: a CT in HU
        ("labelsTr/case.nii.gz", "intensities", "image"),
    ],
)
def test_a_file_is_labels_only_when_its_name_says_so_and_its_values_can_be_labels(tmp_path, where, values, kind):
    rng = np.random.default_rng(0)
    data = {"classes": rng.integers(0, 3, (8, 8, 8)).astype(np.float32),
            "intensities": rng.normal(100, 20, (8, 8, 8)).astype(np.float32),
            "ct": rng.integers(-1000, 2000, (8, 8, 8)).astype(np.int16)}[values]
    path = tmp_path / where
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    [(array, _, found)] = read_volumes(str(path))
    assert found == kind
    assert (array.dtype == np.uint8) == (kind == "labels")
