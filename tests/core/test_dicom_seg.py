"""DICOM SEG writing (data/dicom_seg.py) on a DICOM series generated here: oblique, files written in scrambled order
under names that sort wrong."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from napari_pgps.data.dicom_seg import write_dicom_seg
from napari_pgps.errors import InputError

SHAPE = (5, 6, 7)  # (Z, Y, X): slices, rows, columns
LABELS = {0: "background", 1: "liver", 3: "tumour", 4: "cyst"}


def oblique_series(folder, shape=SHAPE, seed=0, slice_thickness=2.5):
    """A CT series of ``shape`` (Z, Y, X) in an oblique orientation, slices 2.5 mm apart, its files written in a
    scrambled order under names unrelated to their position; returns the files in slice order (along the slice
    normal) and the series UID. ``slice_thickness`` ``None`` leaves the (Type 2) SliceThickness out."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    slices, rows, columns = shape
    a, b = 0.3, 0.2
    row = np.array([np.cos(a), np.sin(a), 0.0])
    column = np.array([-np.sin(a) * np.cos(b), np.cos(a) * np.cos(b), np.sin(b)])
    normal = np.cross(row, column)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    files = [None] * slices
    for k in rng.permutation(slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Doe^Jane", "ID-1234", "19700101", "F"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = (
            "20240101", "120000", "1", "A-1", "")
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 3, int(slices - k)  # numbers that run backwards
        ds.ImageOrientationPatient = [float(v) for v in (*row, *column)]
        ds.ImagePositionPatient = [float(v) for v in np.array([10.0, -20.0, 30.0]) + 2.5 * k * normal]
        ds.PixelSpacing = [0.8, 0.6]
        if slice_thickness is not None:
            ds.SliceThickness = slice_thickness
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = rng.integers(0, 2000, (rows, columns)).astype(np.int16).tobytes()
        path = folder / f"IM{rng.integers(10**6):06d}_{k}"
        ds.save_as(path, enforce_file_format=True)
        files[k] = path
    return files, series


def label_map(shape=SHAPE):
    labels = np.zeros(shape, dtype=np.uint8)
    labels[1:3, 1:4, 2:6] = 1
    labels[3, 2:5, 0:3] = 3
    labels[3, 0, 6] = 1
    return labels  # 4 (cyst) is named but absent


def segment_masks(seg, source_files, shape=SHAPE):
    """Each segment number's mask (Z, Y, X) rebuilt from the SEG's frames, each put on the slice of the source
    instance it references (also checked against the slice's position)."""
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in source_files]
    slice_of = {s.SOPInstanceUID: z for z, s in enumerate(sources)}
    pixels = seg.pixel_array.reshape((int(seg.NumberOfFrames),) + shape[1:])
    masks = {int(s.SegmentNumber): np.zeros(shape, dtype=bool) for s in seg.SegmentSequence}
    for frame, groups in zip(pixels, seg.PerFrameFunctionalGroupsSequence):
        number = int(groups.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        source = groups.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        z = slice_of[source]
        np.testing.assert_allclose(groups.PlanePositionSequence[0].ImagePositionPatient,
                                   sources[z].ImagePositionPatient, atol=1e-4)
        masks[number][z] = frame.astype(bool)
    return masks


def test_the_seg_references_the_series_and_each_segment_is_its_label(tmp_path):
    files, series = oblique_series(tmp_path)
    labels = label_map()
    out = write_dicom_seg(labels, files, LABELS, tmp_path / "out" / "seg.dcm")
    seg = pydicom.dcmread(out)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.SegmentationType == "BINARY"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced <= {pydicom.dcmread(f).SOPInstanceUID for f in files}
    assert [(int(s.SegmentNumber), s.SegmentLabel) for s in seg.SegmentSequence] == [(1, "liver"), (2, "tumour"),
                                                                                      (3, "cyst")]
    masks = segment_masks(seg, files)
    for number, value in ((1, 1), (2, 3), (3, 4)):
        np.testing.assert_array_equal(masks[number], labels == value)
    source = pydicom.dcmread(files[0])
    assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.SeriesInstanceUID != series
    shared = seg.SharedFunctionalGroupsSequence[0]
    np.testing.assert_allclose(shared.PlaneOrientationSequence[0].ImageOrientationPatient,
                               source.ImageOrientationPatient, atol=1e-6)
    assert not list(out.parent.glob(".*"))  # no temporary file left


def test_files_in_descending_order_are_the_labels_z_order(tmp_path):
    files, _ = oblique_series(tmp_path)
    labels = label_map()
    out = write_dicom_seg(labels[::-1], files[::-1], LABELS, tmp_path / "seg.dcm")
    masks = segment_masks(pydicom.dcmread(out), files[::-1])
    np.testing.assert_array_equal(masks[2], labels[::-1] == 3)


def test_a_series_without_slice_thickness_gets_its_slice_distance_as_one(tmp_path):
    files, _ = oblique_series(tmp_path, slice_thickness=None)
    seg = pydicom.dcmread(write_dicom_seg(label_map(), files, LABELS, tmp_path / "seg.dcm"))
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SliceThickness) == pytest.approx(2.5)
    assert [float(v) for v in measures.PixelSpacing] == [0.8, 0.6]


def test_an_empty_segmentation_is_written_with_its_segments(tmp_path):
    files, _ = oblique_series(tmp_path)
    out = write_dicom_seg(np.zeros(SHAPE, dtype=np.uint8), files, LABELS, tmp_path / "seg.dcm")
    seg = pydicom.dcmread(out)
    assert len(seg.SegmentSequence) == 3 and not seg.pixel_array.any()


@pytest.mark.parametrize("fault, message", [
    ("scrambled", "not given in slice order"),
    ("missing slice", "has 4 file(s)"),
    ("unnamed value", "value(s) 2 that the labels"),
    ("not dicom", "not a readable DICOM file"),
    ("other grid", "6 x 7 pixels, but the label map's slices are 7 x 6"),
    ("no frame of reference", "a DICOM SEG cannot reference it .*Frame Of Reference"),
])
def test_a_seg_that_cannot_match_its_series_is_refused_and_nothing_written(tmp_path, fault, message):
    files, _ = oblique_series(tmp_path)
    labels = label_map()
    if fault == "scrambled":
        files = [files[i] for i in (0, 2, 1, 3, 4)]
    elif fault == "missing slice":
        files = files[:2] + files[3:]
    elif fault == "unnamed value":
        labels[0, 0, 0] = 2
    elif fault == "not dicom":
        files[2] = tmp_path / "notes.txt"
        files[2].write_text("not an image")
    elif fault == "other grid":
        labels = np.zeros((5, 7, 6), dtype=np.uint8)
    else:
        for file in files:
            source = pydicom.dcmread(file)
            del source.FrameOfReferenceUID
            source.save_as(file)
    with pytest.raises(InputError, match=message.replace("(s)", r"\(s\)")):
        write_dicom_seg(labels, files, LABELS, tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()


def test_a_series_read_from_scrambled_files_gets_a_seg_of_its_own_voxels(tmp_path):
    from napari_pgps.data.dicom import read_dicom

    oblique_series(tmp_path / "series")
    array, affine, _, series, _ = read_dicom(tmp_path / "series")
    labels = np.where(array > 0, 1, 0).astype(np.uint8) + 2 * (array > 700)  # values 1 and 3 from the voxels
    seg = pydicom.dcmread(write_dicom_seg(labels, series.files, LABELS, tmp_path / "seg.dcm"))
    masks = segment_masks(seg, series.files)
    np.testing.assert_array_equal(masks[1], labels == 1)
    np.testing.assert_array_equal(masks[2], labels == 3)
    for groups in seg.PerFrameFunctionalGroupsSequence:  # each frame where the volume's affine puts its slice
        source = groups.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        z = [pydicom.dcmread(f).SOPInstanceUID for f in series.files].index(source)
        ras = affine @ np.array([0, 0, z, 1.0])
        np.testing.assert_allclose(groups.PlanePositionSequence[0].ImagePositionPatient,
                                   [-ras[0], -ras[1], ras[2]], atol=1e-4)
