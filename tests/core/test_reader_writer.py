"""The napari reader and writer functions, without a viewer: placement in world space, header codes."""

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_series import lps_to_ras_affine, oblique_cosines, write_series

from napari_pgps._reader import DICOM_SERIES, napari_get_reader, read_volumes
from napari_pgps._writer import write_labels, write_labels_as_seg
from napari_pgps.data.volume import read_volume
from napari_pgps.errors import InputError


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


# -- NRRD, MetaImage and DICOM series: opened lined up with the NIfTI of the same voxels, saved back on their grid ---
SERIES_SPACING = (2.0, 0.8, 0.6)
"""(sz, sy, sx) mm of the generated series and files."""
SERIES_ORIGIN = (-30.0, 20.0, 15.0)
"""LPS mm of voxel (0, 0, 0)."""
ORIENTATIONS = {  # LPS row and column cosines; the sagittal one is shown with its axes reordered (stored_axes)
    "oblique": oblique_cosines(),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
}
SHAPE = (5, 4, 6)


def _distinct(shape=SHAPE) -> np.ndarray:
    """Voxels (Z, Y, X) that each hold another value, so a value tells where a voxel went."""
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape)


def _lps_to_ras(orientation: str) -> np.ndarray:
    row, column = ORIENTATIONS[orientation]
    return lps_to_ras_affine(row, column, SERIES_SPACING, SERIES_ORIGIN)


def _nifti_of(path, voxels: np.ndarray, affine: np.ndarray):
    """The NIfTI of ``voxels`` (Z, Y, X) placed by ``affine``, stored with its slice axis reversed (so only world
    space can match it with another file of the same voxels)."""
    flip = np.eye(4)
    flip[2, 2], flip[2, 3] = -1.0, voxels.shape[0] - 1
    nib.save(nib.Nifti1Image(np.transpose(voxels[::-1], (2, 1, 0)), affine @ flip), str(path))
    return path


def _series(folder, orientation: str, voxels=None, name="IM{:04d}", **options) -> list:
    """A DICOM series of ``voxels`` (default :func:`_distinct`) in ``orientation``; its files in Z order."""
    row, column = ORIENTATIONS[orientation]
    voxels = _distinct() if voxels is None else voxels
    return write_series(folder, voxels, row=row, column=column, spacing=SERIES_SPACING, origin=SERIES_ORIGIN,
                        name=name, **options)


def _itk_file(path, voxels: np.ndarray, orientation: str):
    """``voxels`` written by SimpleITK with the series' direction (a non-identity one), spacing and origin."""
    row, column = (np.asarray(v, float) for v in ORIENTATIONS[orientation])
    image = sitk.GetImageFromArray(voxels)
    image.SetDirection(np.column_stack([row, column, np.cross(row, column)]).ravel().tolist())
    image.SetSpacing(SERIES_SPACING[::-1])
    image.SetOrigin(SERIES_ORIGIN)
    sitk.WriteImage(image, str(path))
    return path


def _world_in_value_order(data, layer_affine) -> np.ndarray:
    """The world (z, y, x) of every voxel of a layer of distinct values, in increasing order of their values."""
    data = np.asarray(data)
    index = np.array(np.unravel_index(np.argsort(data.ravel()), data.shape), dtype=float)  # (3, N)
    return (np.asarray(layer_affine) @ np.vstack([index, np.ones(index.shape[1])]))[:3].T


def _expected_world(orientation: str, shape=SHAPE) -> np.ndarray:
    """From first principles: the world (z, y, x) of voxel (z, y, x) of :func:`_distinct`, in value (C) order."""
    z, y, x = np.indices(shape).reshape(3, -1)
    return (_lps_to_ras(orientation) @ np.vstack([x, y, z, np.ones_like(x)]))[:3][::-1].T


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
@pytest.mark.parametrize("given", ["folder", "a .dcm file", "an extension-less file"])
def test_a_dicom_series_opens_lined_up_with_the_nifti_of_its_voxels(tmp_path, orientation, given):
    files = _series(tmp_path / "series", orientation, name="IM{:04d}.dcm" if given == "a .dcm file" else "IM{:04d}")
    path = str(tmp_path / "series" if given == "folder" else files[2])
    reader = napari_get_reader(path)
    assert reader is not None
    [(data, meta, kind)] = reader(path)
    [(nifti_data, nifti_meta, _)] = read_volumes(str(_nifti_of(tmp_path / "same.nii.gz", _distinct(),
                                                               _lps_to_ras(orientation))))
    assert kind == "image" and meta["name"] == "series"
    world = _world_in_value_order(data, meta["affine"])
    np.testing.assert_allclose(world, _world_in_value_order(nifti_data, nifti_meta["affine"]), atol=1e-4)
    np.testing.assert_allclose(world, _expected_world(orientation), atol=1e-4)
    assert meta["metadata"]["stored_axes"] == nifti_meta["metadata"]["stored_axes"]
    assert (meta["metadata"]["stored_axes"] == (0, 1, 2)) == (orientation == "oblique")
    # the series, for a DICOM SEG: files in the grid's Z order, its shape and affine; no patient data
    series = meta["metadata"][DICOM_SERIES]
    assert series["uid"] == pydicom.dcmread(files[0]).SeriesInstanceUID and series["description"] == "AX T1"
    assert series["files"] == [str(f) for f in files] and series["shape"] == SHAPE
    np.testing.assert_allclose(series["affine"], _lps_to_ras(orientation), atol=1e-6)
    assert "Doe" not in repr(meta) and "PID-SECRET" not in repr(meta)


def test_several_files_of_one_series_open_it_once(tmp_path):
    files = _series(tmp_path / "series", "oblique")
    layers = read_volumes([str(f) for f in files[:3]])
    assert len(layers) == 1 and layers[0][0].shape == SHAPE


def test_the_reader_takes_folders_of_dicom_files_only(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "niftis").mkdir()
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3), np.float32), np.eye(4)), str(tmp_path / "niftis" / "a.nii.gz"))
    (tmp_path / "notes.dcm").write_text("not DICOM")
    _series(tmp_path / "patient" / "study" / "series", "oblique")
    assert napari_get_reader(str(tmp_path / "empty")) is None
    assert napari_get_reader(str(tmp_path / "niftis")) is None
    assert napari_get_reader(str(tmp_path / "notes.dcm")) is None
    assert napari_get_reader(str(tmp_path / "patient")) is read_volumes  # a series in a subfolder


def test_a_folder_of_two_series_is_refused_in_one_line_listing_them(tmp_path):
    _series(tmp_path / "study", "oblique", description="AX T1")
    _series(tmp_path / "study", "sagittal", description="SAG T2", name="SAG{:04d}")
    reader = napari_get_reader(str(tmp_path / "study"))
    with pytest.raises(InputError, match=r"holds 2 DICOM series \(.*'AX T1' 5 slices; .*'SAG T2' 5 slices\)") as error:
        reader(str(tmp_path / "study"))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_nrrd_and_metaimage_open_lined_up_with_the_nifti_of_their_voxels(tmp_path, suffix, orientation):
    path = _itk_file(tmp_path / f"ct{suffix}", _distinct(), orientation)
    reader = napari_get_reader(str(path))
    assert reader is not None
    [(data, meta, kind)] = reader(str(path))
    assert kind == "image" and meta["name"] == "ct" and DICOM_SERIES not in meta["metadata"]
    np.testing.assert_allclose(_world_in_value_order(data, meta["affine"]), _expected_world(orientation), atol=1e-4)
    labels_path = _itk_file(tmp_path / f"ct_seg{suffix}", (_distinct() % 3).astype(np.uint8), orientation)
    [(labels, _, kind)] = read_volumes(str(labels_path))
    assert kind == "labels" and labels.dtype == np.uint8


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_a_labels_layer_saved_as_nrrd_or_metaimage_reads_back_lined_up_with_the_layer(tmp_path, suffix, orientation):
    source = _itk_file(tmp_path / "case_seg.nrrd", _distinct().astype(np.int16), orientation)  # 120 classes
    [(data, meta, kind)] = read_volumes(str(source))
    assert kind == "labels"
    [written] = write_labels(str(tmp_path / f"out_seg{suffix}"), data, meta)  # what napari hands the writer
    [(again, again_meta, kind)] = read_volumes(written)
    assert kind == "labels"
    np.testing.assert_array_equal(again, data)
    np.testing.assert_allclose(again_meta["affine"], meta["affine"], atol=1e-6)
    original, saved = read_volume(source, kind="labels"), read_volume(written, kind="labels")  # on the file's grid
    np.testing.assert_array_equal(saved.array, original.array)
    np.testing.assert_allclose(saved.affine, original.affine, atol=1e-6)


# -- DICOM SEG ---------------------------------------------------------------------------------------------------
def _segmentation_over(image_meta, labels: np.ndarray, **metadata) -> dict:
    """The state napari hands the writer for a labels layer made over an image layer read from a DICOM series,
    carrying the image's ``stored_axes`` and ``dicom_series`` as the Segment widget carries them on."""
    carried = {key: image_meta["metadata"][key] for key in ("stored_axes", DICOM_SERIES)}
    return {"name": "seg", "affine": image_meta["affine"], "metadata": {**carried, **metadata}}


def _segment_masks(path, files) -> tuple[dict, dict]:
    """A SEG read back with pydicom: segment label -> mask on the series' grid (Z in ``files``' order, checked by
    each frame's referenced source instance), and the SEG's dataset."""
    seg = pydicom.dcmread(path)
    slice_of = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: z for z, f in enumerate(files)}
    labels = {int(s.SegmentNumber): s.SegmentLabel for s in seg.SegmentSequence}
    masks = {label: np.zeros((len(files), seg.Rows, seg.Columns), bool) for label in labels.values()}
    pixels = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    for frame, groups in zip(pixels, seg.PerFrameFunctionalGroupsSequence):
        number = int(groups.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        source = groups.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        masks[labels[number]][slice_of[source]] = frame.astype(bool)
    return masks, seg


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_a_labels_layer_over_a_dicom_series_saves_as_a_dicom_seg_referencing_it(tmp_path, orientation):
    files = _series(tmp_path / "series", orientation)
    [(image, image_meta, _)] = read_volumes(str(tmp_path / "series"))
    labels = ((image > 40) + (image > 90)).astype(np.uint8)  # in the layer's (world) axis order
    meta = _segmentation_over(image_meta, labels, label_names={0: "background", 1: "liver", 2: "tumour"})
    [written] = write_labels_as_seg(str(tmp_path / "seg.dcm"), labels, meta)
    masks, seg = _segment_masks(written, files)
    assert seg.Modality == "SEG" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == image_meta["metadata"][
        DICOM_SERIES]["uid"]
    on_series_grid = ((_distinct() > 40) + (_distinct() > 90)).astype(np.uint8)  # the file's (Z, Y, X)
    assert sorted(masks) == ["liver", "tumour"]
    np.testing.assert_array_equal(masks["liver"], on_series_grid == 1)
    np.testing.assert_array_equal(masks["tumour"], on_series_grid == 2)


def test_a_segs_segments_are_named_by_the_layers_features_or_by_their_values(tmp_path):
    import pandas as pd

    files = _series(tmp_path / "series", "oblique")
    [(image, image_meta, _)] = read_volumes(str(tmp_path / "series"))
    labels = ((image > 40).astype(np.uint8) + 2 * (image > 90)).astype(np.uint8)  # values 1 and 3
    meta = _segmentation_over(image_meta, labels)
    [written] = write_labels_as_seg(str(tmp_path / "by_value.dcm"), labels, meta)
    assert sorted(_segment_masks(written, files)[0]) == ["label 1", "label 3"]
    meta["features"] = pd.DataFrame({"index": [0, 1, 3], "name": ["background", "kidney", "cyst"]})
    [written] = write_labels_as_seg(str(tmp_path / "by_feature.dcm"), labels, meta)
    assert sorted(_segment_masks(written, files)[0]) == ["cyst", "kidney"]


def test_a_seg_needs_a_labels_layer_from_a_dicom_series_on_its_grid(tmp_path):
    _series(tmp_path / "series", "oblique")
    [(image, image_meta, _)] = read_volumes(str(tmp_path / "series"))
    labels = (image > 40).astype(np.uint8)
    with pytest.raises(InputError, match="segment or open a DICOM series first, or save as NIfTI"):
        write_labels_as_seg(str(tmp_path / "a.dcm"), labels, {"name": "seg", "affine": image_meta["affine"]})
    with pytest.raises(InputError, match=r"labels layer 'seg' has shape \(5, 4, 5\) .* \(5, 4, 6\)"):
        write_labels_as_seg(str(tmp_path / "b.dcm"), labels[..., :5], _segmentation_over(image_meta, labels))
    moved = _segmentation_over(image_meta, labels)
    moved["translate"] = (0.0, 3.0, 0.0)  # 3 rows of 0.8 mm (napari applies the layer's affine after it)
    with pytest.raises(InputError, match=r"placed elsewhere than DICOM series .*\(origin differs by 2.4 mm\)"):
        write_labels_as_seg(str(tmp_path / "c.dcm"), labels, moved)
    with pytest.raises(InputError, match="only a 3D labels layer can be saved as a DICOM SEG"):
        write_labels_as_seg(str(tmp_path / "d.dcm"), labels[0], _segmentation_over(image_meta, labels))
    assert not list(tmp_path.glob("*.dcm"))
