import nibabel as nib
import numpy as np
import pytest
import tifffile

from napari_pgps.data.volume import Volume, read_volume, write_volume
from napari_pgps.errors import InputError


def _affine():
    affine = np.diag([0.8, 0.9, 2.5, 1.0])
    affine[:3, 3] = [10, -20, 30]
    return affine


def _save(path, data, affine=None):
    nib.save(nib.Nifti1Image(data, _affine() if affine is None else affine), str(path))
    return path


def test_nifti_is_read_in_zyx_with_affine_and_spacing(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)  # (x, y, z) on disk
    volume = read_volume(_save(tmp_path / "a.nii.gz", data))
    assert volume.shape == (6, 5, 4)
    assert volume.array[2, 3, 1] == data[1, 3, 2]
    np.testing.assert_allclose(volume.affine, _affine())
    assert volume.spacing == pytest.approx((2.5, 0.9, 0.8))


def test_nifti_write_read_round_trip_keeps_geometry(tmp_path):
    source = read_volume(_save(tmp_path / "a.nii.gz", np.random.rand(4, 5, 6).astype(np.float32)))
    labels = source.with_array((source.array > 0.5).astype(np.uint8))
    out = write_volume(labels, tmp_path / "out" / "labels.nii.gz")
    back = read_volume(out, kind="labels")
    np.testing.assert_array_equal(back.array, labels.array)
    np.testing.assert_allclose(back.affine, source.affine)
    header = nib.load(str(out)).header
    assert header.get_data_dtype() == np.uint8
    assert int(header["sform_code"]) == int(source.header["sform_code"])
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_tiff_spacing_from_imagej_metadata(tmp_path):
    data = np.random.rand(3, 8, 9).astype(np.float32)
    tifffile.imwrite(tmp_path / "v.tif", data, imagej=True, resolution=(1 / 0.5, 1 / 0.25), metadata={"spacing": 2.0, "axes": "ZYX"})
    volume = read_volume(tmp_path / "v.tif")
    assert volume.shape == (3, 8, 9)
    assert volume.spacing == pytest.approx((2.0, 0.25, 0.5))
    assert any("no length unit" in note for note in volume.notes)  # the numbers taken as mm, and said so
    round_trip = read_volume(write_volume(volume, tmp_path / "w.tif"))
    assert round_trip.spacing == pytest.approx(volume.spacing)
    assert not any("unit" in note or "unknown" in note for note in round_trip.notes)  # written in mm, saying so


def test_single_channel_4d_is_accepted(tmp_path):
    volume = read_volume(_save(tmp_path / "a.nii", np.zeros((4, 5, 6, 1), np.float32)))
    assert volume.shape == (6, 5, 4)


@pytest.mark.parametrize(
    "data, kind, message",
    [
        (np.zeros((4, 5), np.float32), "image", "2D"),
        (np.zeros((4, 5, 6, 2), np.uint8), "labels", "label map is 4D"),
    ],
)
def test_wrong_dimensions_are_refused(tmp_path, data, kind, message):
    with pytest.raises(InputError, match=message):
        read_volume(_save(tmp_path / "a.nii.gz", data), kind=kind)


def test_a_4d_image_is_read_as_channels_and_files_per_channel_are_stacked(tmp_path):
    from napari_pgps.data.volume import read_image

    data = np.random.default_rng(0).random((4, 5, 6, 2)).astype(np.float32)  # (x, y, z, c) on disk
    volume = read_volume(_save(tmp_path / "a.nii.gz", data))
    assert volume.array.shape == (2, 6, 5, 4) and volume.shape == (6, 5, 4) and volume.channels == 2
    assert volume.array[1, 3, 2, 1] == data[1, 2, 3, 1]
    first, second = (_save(tmp_path / f"b_000{c}.nii.gz", data[..., c]) for c in range(2))
    stacked = read_image([first, second])
    np.testing.assert_array_equal(stacked.array, volume.array)
    _save(tmp_path / "c_0001.nii.gz", data[..., 1], affine=_affine() * 2)
    with pytest.raises(InputError, match="geometry differs"):
        read_image([first, tmp_path / "c_0001.nii.gz"])


def test_nan_intensities_are_refused(tmp_path):
    data = np.zeros((4, 5, 6), np.float32)
    data[1, 1, 1] = np.nan
    data[2, 2, 2] = np.inf
    with pytest.raises(InputError, match="2 voxel.*NaN or infinite"):
        read_volume(_save(tmp_path / "a.nii.gz", data))


def test_non_integer_labels_are_refused(tmp_path):
    data = np.zeros((4, 5, 6), np.float32)
    data[0, 0, 0] = 0.5
    with pytest.raises(InputError, match="non-integer"):
        read_volume(_save(tmp_path / "l.nii.gz", data), kind="labels")


def test_missing_and_damaged_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_volume(tmp_path / "missing.nii.gz")
    (tmp_path / "bad.nii.gz").write_bytes(b"not a nifti at all")
    with pytest.raises(InputError, match="bad.nii.gz: cannot read"):
        read_volume(tmp_path / "bad.nii.gz")
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(InputError, match="unsupported"):
        read_volume(tmp_path / "x.png")


def test_write_refuses_unknown_suffix_and_leaves_nothing(tmp_path):
    with pytest.raises(InputError):
        write_volume(Volume(np.zeros((2, 2, 2), np.uint8)), tmp_path / "out.png")
    assert list(tmp_path.iterdir()) == []
