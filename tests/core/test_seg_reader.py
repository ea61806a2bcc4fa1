"""The napari reader opening a DICOM SEG (written by data/dicom_seg.py) as a labels layer on its series' grid."""

from __future__ import annotations

import numpy as np
import pytest
from dicom_series import oblique_cosines, write_series

from napari_pgps._reader import DICOM_SERIES, LABEL_NAMES, napari_get_reader, read_volumes
from napari_pgps.data.dicom_seg import write_dicom_seg
from napari_pgps.errors import InputError

SHAPE = (6, 7, 8)  # (Z, Y, X)
LABELS = {0: "background", 1: "lesion", 2: "vessel"}


def labelled_series(folder):
    """An oblique series with scrambled file names and a label map on its grid (values 0, 1, 2; slice 0 empty)."""
    rng = np.random.default_rng(0)
    row, column = oblique_cosines()
    files = write_series(folder, rng.normal(100, 10, SHAPE).astype(np.float32), row=row, column=column)
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[2:4, 1:5, 2:6] = 1
    labels[4, 3:6, 1:3] = 2
    return files, labels


@pytest.mark.parametrize("beside", [True, False], ids=["in the series folder", "in the folder above"])
def test_seg_opens_as_the_written_labels_where_the_series_lies(tmp_path, beside):
    files, labels = labelled_series(tmp_path / "series")
    seg = write_dicom_seg(labels, files, LABELS, (tmp_path / "series" if beside else tmp_path) / "seg.dcm")
    assert napari_get_reader(str(seg)) is read_volumes

    (image, image_meta, image_kind), = read_volumes(str(tmp_path / "series"))
    (data, meta, kind), = read_volumes(str(seg))
    assert (image_kind, kind) == ("image", "labels")
    np.testing.assert_allclose(meta["affine"], image_meta["affine"])
    assert meta["metadata"]["stored_axes"] == image_meta["metadata"]["stored_axes"]
    axes = meta["metadata"]["stored_axes"]
    assert data.shape == image.shape
    np.testing.assert_array_equal(np.transpose(labels, axes), data)
    assert meta["metadata"][LABEL_NAMES] == LABELS
    assert meta["metadata"][DICOM_SERIES]["files"] == [str(f.absolute()) for f in files]


def test_seg_without_its_series_is_refused_naming_it(tmp_path):
    files, labels = labelled_series(tmp_path / "a" / "series")
    seg = write_dicom_seg(labels, files, LABELS, tmp_path / "b" / "elsewhere" / "seg.dcm")  # a/series: not below b
    with pytest.raises(InputError, match="seg.dcm: a DICOM SEG of series"):
        read_volumes(str(seg))


def test_seg_layer_saves_again_as_a_seg_with_its_segment_names(tmp_path):
    import pydicom

    from napari_pgps._writer import write_labels_as_seg

    files, labels = labelled_series(tmp_path / "series")
    seg = write_dicom_seg(labels, files, LABELS, tmp_path / "seg.dcm")
    (data, meta, _), = read_volumes(str(seg))
    again, = write_labels_as_seg(str(tmp_path / "again.dcm"), data, meta)
    written = pydicom.dcmread(again)
    assert [s.SegmentLabel for s in written.SegmentSequence] == ["lesion", "vessel"]
    (back, _, _), = read_volumes(again)
    np.testing.assert_array_equal(back, data)
