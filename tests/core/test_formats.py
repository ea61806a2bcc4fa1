"""NRRD, MetaImage and DICOM series read with their full geometry and written back on their own grid.

Every file is generated here: a DICOM series in an oblique LPS orientation, its files named so that name order is not
slice order; NRRD and MetaImage files with directions that permute, flip and tilt the axes. Each is checked against
the NIfTI of the same voxels in world space: voxel centres where the file's own header puts them, and the same array
once both are reoriented to RAS.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from dicom_series import lps_to_ras_affine, oblique_cosines, write_series

sitk = pytest.importorskip("SimpleITK")
pydicom = pytest.importorskip("pydicom")

from napari_pgps.data.geometry import orientation_of, reorient  # noqa: E402
from napari_pgps.data.volume import Volume, case_name, is_volume_file, read_volume, write_volume  # noqa: E402
from napari_pgps.errors import InputError  # noqa: E402

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
SPACING = (2.0, 0.8, 0.6)
"""(sz, sy, sx) mm of the generated DICOM series."""
ORIGIN = (-30.0, 20.0, 15.0)
SOME_VOXELS = [(0, 0, 0), (8, 5, 6), (3, 2, 5), (7, 1, 0)]
"""(z, y, x) voxels whose centres are compared."""


def _voxels(shape=(9, 6, 7), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-50, 500, shape).astype(np.float32)


def _nifti_of(path, voxels: np.ndarray, affine: np.ndarray):
    """The NIfTI of ``voxels`` (Z, Y, X) placed by ``affine``, stored with its k axis reversed, so its file order
    differs from the source's and only world space can match them."""
    flipped = voxels[::-1]  # array (k', j, i) with k' = last - k
    flip = np.eye(4)
    flip[2, 2], flip[2, 3] = -1.0, voxels.shape[0] - 1
    nib.save(nib.Nifti1Image(np.transpose(flipped, (2, 1, 0)), affine @ flip), str(path))
    return path


def _assert_same_world(volume, nifti):
    """The two volumes hold the same values at the same world points: reoriented to RAS, equal arrays and affines."""
    array, affine = reorient(volume.array, volume.affine, "RAS")
    expected, expected_affine = reorient(nifti.array, nifti.affine, "RAS")
    np.testing.assert_allclose(affine, expected_affine, atol=1e-6)
    np.testing.assert_array_equal(array, expected)


def _world(affine, voxel):
    z, y, x = voxel
    return (np.asarray(affine) @ [x, y, z, 1.0])[:3]


# -- DICOM -----------------------------------------------------------------------------
def test_an_oblique_dicom_series_in_scrambled_files_lies_where_its_headers_put_it(tmp_path):
    voxels = _voxels()
    row, column = oblique_cosines()
    files = write_series(tmp_path / "series", voxels, row=row, column=column, spacing=SPACING, origin=ORIGIN,
                         slopes=[1.0, 0.5] * 4 + [1.0])
    names = sorted(p.name for p in (tmp_path / "series").iterdir())
    assert names != [f.name for f in files]  # name order is not slice order
    volume = read_volume(tmp_path / "series")
    assert volume.dicom.files == tuple(files) and volume.path == tmp_path / "series"
    assert volume.shape == (9, 6, 7) and volume.stored_dtype == "int16"
    np.testing.assert_array_equal(volume.array, voxels)  # slice order and the per-slice rescale
    assert volume.spacing == pytest.approx(SPACING)
    for z, y, x in SOME_VOXELS:  # each voxel centre where its own file's position and cosines put it (LPS -> RAS)
        header = pydicom.dcmread(files[z])
        lps = np.asarray(header.ImagePositionPatient, float) + x * SPACING[2] * row + y * SPACING[1] * column
        np.testing.assert_allclose(_world(volume.affine, (z, y, x)), LPS_TO_RAS @ lps, atol=1e-6)
    nifti = read_volume(_nifti_of(tmp_path / "same.nii.gz", voxels, lps_to_ras_affine(row, column, SPACING, ORIGIN)))
    _assert_same_world(volume, nifti)


def test_any_file_of_a_series_reads_the_whole_series(tmp_path):
    voxels = _voxels()
    files = write_series(tmp_path / "series", voxels)
    volume = read_volume(files[4])
    np.testing.assert_array_equal(volume.array, voxels)
    assert volume.path == tmp_path / "series" and volume.name == "series"


def test_a_gantry_tilt_keeps_every_slice_where_it_lies_as_a_sheared_grid(tmp_path):
    files = write_series(tmp_path / "series", _voxels(), spacing=SPACING, origin=ORIGIN)
    for z, file in enumerate(files):  # each slice moved 0.4 mm further along the columns: a tilted gantry
        header = pydicom.dcmread(file)
        header.ImagePositionPatient = [float(v) for v in np.add(header.ImagePositionPatient, [0, 0.4 * z, 0])]
        header.save_as(file)
    volume = read_volume(tmp_path / "series")
    assert any("gantry tilt" in note for note in volume.notes)
    for z in (0, 4, 8):
        position = np.asarray(pydicom.dcmread(files[z]).ImagePositionPatient, float)
        np.testing.assert_allclose(_world(volume.affine, (z, 0, 0)), LPS_TO_RAS @ position, atol=1e-6)
    with pytest.raises(InputError, match="not at right angles"):
        write_volume(volume, tmp_path / "out.nrrd")
    assert read_volume(write_volume(volume, tmp_path / "out.nii.gz")).affine == pytest.approx(volume.affine)


def test_a_series_in_a_subfolder_of_an_export_is_found(tmp_path):
    from napari_pgps.data.dicom import is_dicom_file, is_dicom_folder

    files = write_series(tmp_path / "export" / "ST0" / "SE3", _voxels())
    (tmp_path / "export" / "README.txt").write_text("exported by a PACS")
    assert is_dicom_file(files[0]) and not is_dicom_file(tmp_path / "export" / "README.txt")
    assert is_dicom_folder(tmp_path / "export") and not is_dicom_folder(tmp_path / "export" / "README.txt")
    assert read_volume(tmp_path / "export").dicom.files == tuple(files)


def test_dicom_description_and_slices_in_info_and_no_patient_data_anywhere(tmp_path):
    from napari_pgps.data.info import describe_file, info_text

    write_series(tmp_path / "series", _voxels(), description="COR PD fs")
    description = describe_file(tmp_path / "series")
    assert description["dicom_series"]["description"] == "COR PD fs" and description["dicom_series"]["slices"] == 9
    text = info_text(description) + json.dumps(description)
    assert "'COR PD fs', 9 slices" in text
    assert "Doe" not in text and "PID-SECRET" not in text


def test_localizers_in_a_series_are_left_out_and_said_so(tmp_path):
    voxels = _voxels()
    files = write_series(tmp_path / "series", voxels)
    uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    write_series(tmp_path / "series", _voxels((1, 6, 7), seed=1), row=(0, 1, 0), column=(0, 0, -1), series_uid=uid,
                 image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), order=[0], name="LOC{:04d}")
    volume = read_volume(tmp_path / "series")
    np.testing.assert_array_equal(volume.array, voxels)
    assert any("1 localizer slice(s)" in note for note in volume.notes)


# -- NRRD and MetaImage ----------------------------------------------------------------
DIRECTION = np.array([[0.0, 0.0, -1.0], [np.cos(0.4), np.sin(0.4), 0.0], [-np.sin(0.4), np.cos(0.4), 0.0]]).T
"""LPS columns of voxel axes i, j, k: i towards the feet, j to the patient's left and k posterior, both tilted
0.4 rad in the axial plane (RAS codes "ILP": permuted, flipped and oblique)."""


def _itk_image(array: np.ndarray, vector: bool = False):
    image = sitk.GetImageFromArray(array, isVector=vector)
    image.SetDirection(DIRECTION.reshape(-1).tolist())
    image.SetSpacing((0.7, 1.1, 2.5))
    image.SetOrigin((12.0, -7.0, 40.0))
    return image


@pytest.mark.parametrize("suffix", [".nrrd", ".nhdr", ".mha", ".mhd"])
def test_nrrd_and_metaimage_with_a_turned_direction_agree_with_nifti_in_world_space(tmp_path, suffix):
    voxels = _voxels((5, 6, 7)).astype(np.int16)
    image = _itk_image(voxels)
    sitk.WriteImage(image, str(tmp_path / f"case{suffix}"))
    volume = read_volume(tmp_path / f"case{suffix}")
    assert volume.shape == (5, 6, 7) and volume.stored_dtype == "int16"
    for z, y, x in SOME_VOXELS[:1] + [(4, 5, 6), (2, 3, 1)]:
        lps = np.asarray(image.TransformIndexToPhysicalPoint((x, y, z)))
        np.testing.assert_allclose(_world(volume.affine, (z, y, x)), LPS_TO_RAS @ lps, atol=1e-6)
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ DIRECTION @ np.diag([0.7, 1.1, 2.5])
    affine[:3, 3] = LPS_TO_RAS @ [12.0, -7.0, 40.0]
    _assert_same_world(volume, read_volume(_nifti_of(tmp_path / "same.nii.gz", voxels.astype(np.float32), affine)))
    assert orientation_of(volume.affine) == "ILP"


def test_vector_nrrd_and_4d_metaimage_are_read_as_channels(tmp_path):
    voxels = _voxels((5, 6, 7))
    sitk.WriteImage(_itk_image(np.stack([voxels, -voxels], axis=-1), vector=True), str(tmp_path / "two.nrrd"))
    volume = read_volume(tmp_path / "two.nrrd")
    assert volume.array.shape == (2, 5, 6, 7)
    np.testing.assert_array_equal(volume.array[1], -voxels)
    back = read_volume(write_volume(volume, tmp_path / "back.nrrd"))
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-9)
    four = sitk.JoinSeries([sitk.GetImageFromArray(voxels), sitk.GetImageFromArray(voxels + 1)])  # (x, y, z, t)
    sitk.WriteImage(four, str(tmp_path / "four.mha"))
    volume = read_volume(tmp_path / "four.mha")
    assert volume.array.shape == (2, 5, 6, 7)
    np.testing.assert_array_equal(volume.array[1], voxels + 1)


# -- writing on the input's own grid ---------------------------------------------------
def _itk_geometry(image):
    return image.GetSize(), np.asarray(image.GetOrigin()), np.asarray(image.GetDirection()), np.asarray(image.GetSpacing())


def _dicom_geometry_by_gdcm(folder):
    """The series' grid as ITK's own DICOM reader (GDCM's sort by position) places it."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return _itk_geometry(reader.Execute())


@pytest.mark.parametrize("source", ["dicom", ".nrrd", ".mha"])
@pytest.mark.parametrize("output", [".nrrd", ".mha", ".nii.gz"])
def test_a_result_written_for_each_input_round_trips_to_its_grid(tmp_path, source, output):
    voxels = _voxels()
    if source == "dicom":
        row, column = oblique_cosines()
        write_series(tmp_path / "in", voxels, row=row, column=column, spacing=SPACING, origin=ORIGIN)
        path, expected = tmp_path / "in", _dicom_geometry_by_gdcm(tmp_path / "in")
    else:
        path = tmp_path / f"in{source}"
        sitk.WriteImage(_itk_image(voxels), str(path))
        expected = _itk_geometry(sitk.ReadImage(str(path)))
    image = read_volume(path)
    labels = image.with_array((image.array > 200).astype(np.uint8))
    assert labels.dicom == image.dicom
    written = write_volume(labels, tmp_path / f"out{output}")
    size, origin, direction, spacing = _itk_geometry(sitk.ReadImage(str(written)))
    assert size == expected[0]
    np.testing.assert_allclose(origin, expected[1], atol=1e-4)
    np.testing.assert_allclose(direction, expected[2], atol=1e-6)
    np.testing.assert_allclose(spacing, expected[3], atol=1e-6)
    back = read_volume(written, kind="labels")
    np.testing.assert_array_equal(back.array, labels.array)
    np.testing.assert_allclose(back.affine, image.affine, atol=1e-4)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # written atomically


def test_outputs_itk_cannot_hold_are_refused_before_writing(tmp_path):
    volume = Volume(np.zeros((3, 4, 5), np.uint8))
    with pytest.raises(InputError, match=r"one file; choose an output ending in \.nrrd or \.mha"):
        write_volume(volume, tmp_path / "out.nhdr")
    sheared = np.eye(4)
    sheared[0, 2] = 0.5  # a gantry tilt
    with pytest.raises(InputError, match="not at right angles.*write NIfTI"):
        write_volume(Volume(volume.array, sheared), tmp_path / "out.mha")
    assert list(tmp_path.iterdir()) == []


# -- names and datasets ----------------------------------------------------------------
def test_names_of_the_new_formats():
    from pathlib import Path

    for name in ("a/case_7.nrrd", "case_7.nhdr", "case_7.mha", "case_7.mhd", "case_7.nii.gz"):
        assert case_name(Path(name)) == "case_7" and is_volume_file(Path(name))
    assert not is_volume_file(Path("IM0001.dcm"))  # a DICOM slice is not a case on its own


@pytest.mark.parametrize("ending", [".nrrd", ".mha"])
def test_an_nnunet_dataset_of_nrrd_or_metaimage_files_is_read(tmp_path, ending):
    from napari_pgps.data.dataset import read_case, read_dataset_info

    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    for case in ("a", "b"):
        image = _itk_image(_voxels((4, 6, 7)))
        sitk.WriteImage(image, str(tmp_path / "imagesTr" / f"{case}_0000{ending}"))
        labels = sitk.GetImageFromArray((_voxels((4, 6, 7)) > 200).astype(np.uint8))
        labels.CopyInformation(image)
        sitk.WriteImage(labels, str(tmp_path / "labelsTr" / f"{case}{ending}"))
    meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1}, "numTraining": 2,
            "file_ending": ending}
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    info = read_dataset_info(tmp_path)
    assert [f.name for f in info.files] == ["a", "b"]
    case = read_case(info, info.files[0])
    assert case.image.shape == (4, 6, 7) and case.image.channels == 1 and case.labels.array.dtype == np.uint8


def test_an_nnunet_file_ending_napari_pgps_cannot_read_is_refused(tmp_path):
    from napari_pgps.data.dataset import read_dataset_info

    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0},
                                                       "file_ending": ".png"}))
    with pytest.raises(InputError, match=r"file_ending '\.png' is not a volume format.*\.nrrd"):
        read_dataset_info(tmp_path)


def test_a_case_given_as_a_dicom_folder_trains_and_its_cache_name_follows_its_files(tmp_path):
    import os

    from napari_pgps.data.dataset import read_case, read_dataset_info
    from napari_pgps.data.source import folder_source

    files = write_series(tmp_path / "imagesTr" / "case_0", _voxels(), spacing=SPACING, origin=ORIGIN)
    image = read_volume(tmp_path / "imagesTr" / "case_0")
    write_volume(image.with_array((image.array > 200).astype(np.uint8)), tmp_path / "labelsTr" / "case_0.nrrd")
    entries = [{"image": "./imagesTr/case_0", "label": "./labelsTr/case_0.nrrd"}]
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "organ"},
                                                       "modality": {"0": "MRI"}, "training": entries}))
    info = read_dataset_info(tmp_path)
    assert read_case(info, info.files[0]).image.shape == (9, 6, 7)
    before = folder_source(tmp_path, cache=str(tmp_path / "cache")).folder
    os.utime(files[5], ns=(1, 1))  # one slice changed
    assert folder_source(tmp_path, cache=str(tmp_path / "cache")).folder != before
