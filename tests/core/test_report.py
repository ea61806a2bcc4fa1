"""The volume report (tasks/report.py) on tiny label maps with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_pgps.data.geometry import affine_from_spacing
from napari_pgps.data.volume import Volume
from napari_pgps.errors import InputError
from napari_pgps.tasks.report import REPORT_COLUMNS, volume_report, write_volume_report

LABELS = {0: "background", 1: "liver", 2: "spleen", 3: "tumour"}
SPACING = (2.0, 1.0, 0.5)  # (sz, sy, sx) mm: a voxel is 1 mm^3


def volume(array, spacing=SPACING):
    return Volume(np.asarray(array, dtype=np.uint8), affine_from_spacing(spacing))


def segmentation():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[:5] = 1  # 500 voxels
    labels[5:, :2] = 3  # 100 voxels; no spleen
    return labels


def test_volumes_in_millilitres_follow_the_spacing():
    rows = volume_report([("a", volume(segmentation()), None),
                          ("b", volume(segmentation(), spacing=(3.0, 0.5, 0.5)), None)], LABELS)
    assert [tuple(row.values()) for row in rows] == [
        ("a", "liver", 1, 500, pytest.approx(0.5), None, None),
        ("a", "spleen", 2, 0, 0.0, None, None),
        ("a", "tumour", 3, 100, pytest.approx(0.1), None, None),
        ("b", "liver", 1, 500, pytest.approx(0.375), None, None),
        ("b", "spleen", 2, 0, 0.0, None, None),
        ("b", "tumour", 3, 100, pytest.approx(0.075), None, None),
    ]
    assert all(tuple(row) == REPORT_COLUMNS for row in rows)


def test_a_reference_adds_dice_and_hd95_in_mm():
    reference = np.zeros((10, 10, 10), np.uint8)
    reference[:4] = 1  # the liver one slice (2 mm) short of the segmentation's; no tumour
    (liver, spleen, tumour), = [volume_report([("a", volume(segmentation()), volume(reference))], LABELS)]
    assert liver["dice"] == pytest.approx(2 * 400 / 900)
    # every voxel of both slabs is surface (they touch the image's sides); 100 of the segmentation's 500 lie 2 mm
    # from the reference's surface, so both directed 95th percentiles are 2 mm and 0 mm
    assert liver["hd95"] == pytest.approx(2.0)
    assert spleen["dice"] is None and spleen["hd95"] is None  # in neither map
    assert tumour["dice"] == 0.0
    assert tumour["hd95"] == pytest.approx(math.sqrt(20**2 + 10**2 + 5**2))  # a spurious structure: the diagonal


def test_the_csv_has_a_header_and_empty_cells_where_undefined(tmp_path):
    reference = segmentation()
    rows = volume_report([("a", volume(segmentation()), volume(reference)), ("b", volume(segmentation()), None)],
                         LABELS)
    out = write_volume_report(rows, tmp_path / "report.csv")
    assert out.read_text().splitlines() == [
        "case,label,value,voxels,volume_ml,dice,hd95",
        "a,liver,1,500,0.5,1,0",
        "a,spleen,2,0,0,,",
        "a,tumour,3,100,0.1,1,0",
        "b,liver,1,500,0.5,,",
        "b,spleen,2,0,0,,",
        "b,tumour,3,100,0.1,,",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.csv"]


def test_a_reference_on_another_grid_or_with_an_undeclared_value_is_refused():
    shifted = volume(segmentation())
    shifted.affine[:3, 3] = (0, 0, 5)
    with pytest.raises(InputError, match="case 'a'.*origin differs by 5 mm"):
        volume_report([("a", volume(segmentation()), shifted)], LABELS)
    with pytest.raises(InputError, match="shape 10 x 10 x 9"):
        volume_report([("a", volume(segmentation()), volume(np.zeros((10, 10, 9))))], LABELS)
    undeclared = segmentation()
    undeclared[0, 0, 0] = 7
    with pytest.raises(InputError, match="label value"):
        volume_report([("a", volume(segmentation()), volume(undeclared))], LABELS)
