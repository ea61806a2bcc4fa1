"""The clinic's formats in a real napari viewer: a DICOM series opened with ``viewer.open`` lies where the NIfTI of
the same voxels lies; a segmentation over it saves as a DICOM SEG that references it, and as NRRD and MetaImage that
open back over it. Every file is generated here (a DICOM series in an oblique or sagittal LPS orientation, its files
named so that name order is not slice order)."""

import napari
import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_series import lps_to_ras_affine, oblique_cosines, write_series

from napari_pgps._reader import DICOM_SERIES, STORED_AXES
from napari_pgps.errors import InputError

pytestmark = [pytest.mark.gui, pytest.mark.filterwarnings("ignore:Non-orthogonal slicing:UserWarning")]

SPACING = (2.0, 0.8, 0.6)
"""(sz, sy, sx) mm of the series."""
ORIGIN = (-30.0, 20.0, 15.0)
ORIENTATIONS = {"oblique": oblique_cosines(), "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0))}
VOXELS = np.arange(5 * 4 * 6, dtype=np.float32).reshape(5, 4, 6)
"""(Z, Y, X), every voxel another value: a value tells where a voxel went."""


def _series_and_nifti(folder, orientation: str):
    """The series (files named ``IM####.dcm``, in Z order) and the NIfTI of the same voxels and placement."""
    row, column = ORIENTATIONS[orientation]
    files = write_series(folder / "series", VOXELS, row=row, column=column, spacing=SPACING, origin=ORIGIN,
                         name="IM{:04d}.dcm")
    nifti = folder / "same.nii.gz"
    nib.save(nib.Nifti1Image(np.transpose(VOXELS), lps_to_ras_affine(row, column, SPACING, ORIGIN)), str(nifti))
    return files, nifti


def _world_by_value(layer) -> np.ndarray:
    """The world (z, y, x) of each voxel centre of a layer of distinct values, by napari's own transform, in
    increasing order of their values."""
    data = np.asarray(layer.data)
    voxels = np.array(np.unravel_index(np.argsort(data.ravel()), data.shape)).T
    return np.array([layer.data_to_world(voxel) for voxel in voxels])


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_a_dicom_series_opens_where_the_nifti_of_its_voxels_lies(make_napari_viewer, tmp_path, orientation):
    viewer = make_napari_viewer()
    files, nifti = _series_and_nifti(tmp_path, orientation)
    [series] = viewer.open(str(tmp_path / "series"), plugin="napari-pgps")
    [one_file] = viewer.open(str(files[3]), plugin="napari-pgps")
    [same] = viewer.open(str(nifti), plugin="napari-pgps")
    for layer in (series, one_file):
        np.testing.assert_allclose(_world_by_value(layer), _world_by_value(same), atol=1e-4)
        assert layer.metadata[DICOM_SERIES]["files"] == [str(f) for f in files]
    for ndisplay in (2, 3):
        viewer.dims.ndisplay = ndisplay
        assert viewer.screenshot(canvas_only=True).size


def test_a_folder_of_two_series_is_refused_in_one_line(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    write_series(tmp_path / "study", VOXELS, description="AX T1")
    write_series(tmp_path / "study", VOXELS, description="COR T2", name="COR{:04d}")
    with pytest.raises(InputError, match="holds 2 DICOM series .* choose one with --series") as error:
        viewer.open(str(tmp_path / "study"), plugin="napari-pgps")
    assert "\n" not in str(error.value) and len(viewer.layers) == 0


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_a_segmentation_over_a_series_saves_as_a_seg_referencing_it_and_as_nrrd_and_mha(make_napari_viewer, tmp_path,
                                                                                        orientation):
    viewer = make_napari_viewer()
    files, _ = _series_and_nifti(tmp_path, orientation)
    [image] = viewer.open(str(tmp_path / "series"), plugin="napari-pgps")
    # a segmentation as the Segment widget adds it: over the image, carrying its series and axis order
    carried = {key: image.metadata[key] for key in (STORED_AXES, DICOM_SERIES)}
    segmentation = viewer.add_labels(
        (np.asarray(image.data) >= 60).astype(np.uint8), name="series segmentation", affine=image.affine.affine_matrix,
        metadata={**carried, "label_names": {0: "background", 1: "lesion"}})

    seg_path = tmp_path / "seg.dcm"
    assert napari.save_layers(str(seg_path), [segmentation], plugin="napari-pgps") == [str(seg_path)]
    seg = pydicom.dcmread(seg_path)
    assert seg.Modality == "SEG" and [s.SegmentLabel for s in seg.SegmentSequence] == ["lesion"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == pydicom.dcmread(files[0]).SeriesInstanceUID
    slice_of = {pydicom.dcmread(f).SOPInstanceUID: z for z, f in enumerate(files)}
    frames = seg.pixel_array.reshape(-1, *VOXELS.shape[1:])
    found = np.zeros(VOXELS.shape, bool)
    for frame, groups in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        found[slice_of[groups.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]] = frame
    np.testing.assert_array_equal(found, VOXELS >= 60)

    for suffix in (".nrrd", ".mha"):
        path = tmp_path / f"saved_seg{suffix}"
        assert napari.save_layers(str(path), [segmentation], plugin="napari-pgps") == [str(path)]
        [again] = viewer.open(str(path), plugin="napari-pgps")
        assert again.__class__.__name__ == "Labels"
        np.testing.assert_array_equal(np.asarray(again.data), np.asarray(segmentation.data))
        np.testing.assert_allclose(again.affine.affine_matrix, segmentation.affine.affine_matrix, atol=1e-6)


def test_the_save_dialog_offers_the_formats_and_refuses_a_seg_without_a_series(make_napari_viewer, tmp_path,
                                                                              monkeypatch):
    """File > Save Selected Layers, choosing "DICOM SEG" for a labels layer drawn from scratch: refused in one line
    (napari shows the error), nothing written."""
    from qtpy.QtWidgets import QFileDialog

    viewer = make_napari_viewer()
    viewer.add_labels(np.ones((3, 4, 5), np.uint8), name="drawn")
    offered = []

    def choose(*args, filter="", **kwargs):  # the user types seg.dcm and picks the DICOM SEG file type
        offered.extend(filter.split(";;"))
        return str(tmp_path / "seg.dcm"), next(kind for kind in offered if kind.startswith("napari PGPS DICOM SEG"))

    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(choose))
    with pytest.raises(InputError, match="labels layer 'drawn' .* segment or open a DICOM series first") as error:
        viewer.window._qt_viewer._save_layers_dialog(selected=True)
    assert "\n" not in str(error.value) and not list(tmp_path.iterdir())
    for kind in ("NIfTI labels (source affine) (*.nii *.nii.gz)", "NRRD labels (source grid) (*.nrrd)",
                 "MetaImage labels (source grid) (*.mha)", "DICOM SEG (source series) (*.dcm)"):
        assert f"napari PGPS {kind}" in offered
