"""Orientation, spacing and the preprocessed store, on generated volumes."""

from __future__ import annotations

import os

import numpy as np
import pytest

from helpers import quick_config, run_events
from napari_pgps.config import NormalizationConfig
from napari_pgps.data.geometry import (
    affine_from_spacing,
    axes_matrix,
    canonical_grid,
    display_axes,
    geometry_difference,
    label_dtype,
    layer_to_world,
    nonzero_box,
    orientation_of,
    reorient,
    resample,
    resample_labels,
    resampled_shape,
    reverse_axes,
    spacing_of,
    target_spacing,
    thick_axis,
)
from napari_pgps.data.preprocessing import PreprocessingPlan, preprocess_image, preprocess_labels, restore_probabilities
from napari_pgps.data.volume import Volume
from napari_pgps.events import Preparing

LPS = np.array([[-0.8, 0, 0, 10.0], [0, -0.9, 0, -20.0], [0, 0, 2.5, 30.0], [0, 0, 0, 1]])


def test_reorientation_keeps_every_voxel_in_place_and_is_undone_exactly():
    array = np.random.default_rng(0).random((2, 6, 5, 4))  # (C, Z, Y, X); file axes (i, j, k) = (X, Y, Z)
    out, affine = reorient(array, LPS, "RAS")
    assert orientation_of(LPS) == "LPS" and orientation_of(affine) == "RAS"
    for z, y, x in [(0, 0, 0), (5, 4, 3), (2, 1, 3)]:
        world = LPS @ [x, y, z, 1]
        i, j, k = np.round(np.linalg.inv(affine) @ world)[:3].astype(int)
        assert out[1, k, j, i] == array[1, z, y, x]
    back, back_affine = reorient(out, affine, "LPS")
    np.testing.assert_array_equal(back, array)
    np.testing.assert_allclose(back_affine, LPS)
    assert canonical_grid((6, 5, 4), LPS, "RAS") == ((6, 5, 4), pytest.approx((2.5, 0.9, 0.8)))


def test_target_spacing_follows_nnunets_rule_for_thick_slices():
    isotropic = target_spacing([(1.0, 1.0, 1.0), (1.2, 1.0, 1.0), (1.0, 0.8, 0.8)], [(100, 100, 100)] * 3)
    assert isotropic == pytest.approx((1.0, 1.0, 1.0))
    # thick slices (median 5 mm, more than 3x the in-plane 1 mm) and few of them: the thick axis takes the
    # 10th percentile of its spacings, not less than the in-plane spacing
    spacings = [(5.0, 1.0, 1.0)] * 8 + [(3.0, 1.0, 1.0), (2.0, 1.0, 1.0)]
    assert target_spacing(spacings, [(20, 200, 200)] * 10) == pytest.approx((2.9, 1.0, 1.0))
    assert thick_axis((5.0, 1.0, 1.0), (2.9, 1.0, 1.0)) == 0 and thick_axis((1, 1, 1), (1, 1, 1)) is None
    assert resampled_shape((20, 200, 200), (5.0, 1.0, 1.0), (2.5, 1.0, 1.0)) == (40, 200, 200)


def test_two_axes_tied_for_the_thickest_are_resampled_alike():
    # nnU-Net: with two axes sharing the largest spacing there is no single out-of-plane axis to resample apart
    assert thick_axis((5.0, 5.0, 1.0), (2.0, 2.0, 1.0)) is None
    assert thick_axis((1.0, 4.0, 4.0 * (1 + 1e-7)), (1.0, 1.0, 1.0)) is None  # rounding noise of an affine
    assert thick_axis((1.0, 1.0, 4.0), (1.0, 1.0, 1.0)) == 2 and thick_axis((1.0, 1.0, 1.0), (4.0, 1.0, 1.0)) == 0
    image = np.random.default_rng(0).normal(size=(1, 6, 6, 24)).astype(np.float32)
    image = image + image.swapaxes(1, 2)  # the same along Z as along Y
    out = resample(image, (15, 15, 24), order=3, separate_axis=thick_axis((5.0, 5.0, 1.0), (2.0, 2.0, 1.0)))
    np.testing.assert_allclose(out, out.swapaxes(1, 2), atol=1e-5)  # Z and Y resampled alike


def test_label_resampling_keeps_boundaries_in_place():
    labels = np.zeros((8, 16, 16), np.uint8)
    labels[:, 4:12, 4:12] = 1
    labels[:, 6:10, 6:10] = 2
    up = resample_labels(labels, (8, 32, 32))
    assert set(np.unique(up)) == {0, 1, 2}
    assert (up == 2).sum() == pytest.approx(4 * (labels == 2).sum(), rel=0.1)
    back = resample_labels(up, (8, 16, 16))
    assert (back == labels).mean() > 0.98


def test_preprocessing_round_trip_puts_a_prediction_back_on_the_input_grid():
    image = np.zeros((1, 12, 10, 8), np.float32)
    image[0, 2:10, 2:8, 1:7] = np.random.default_rng(0).normal(100, 10, (8, 6, 6))  # zeros around: cropped away
    labels = np.zeros((12, 10, 8), np.uint8)
    labels[4:8, 3:7, 2:6] = 3
    plan = PreprocessingPlan("RAS", (1.25, 0.45, 0.4), True, (NormalizationConfig("zscore", nonzero_mask=True),),
                             (0, 3))
    array, geometry = preprocess_image(Volume(image, LPS), plan)
    assert geometry.box == ((2, 10), (2, 8), (1, 7)) and geometry.orientation == "LPS"
    assert array.shape == (1, 16, 12, 12)  # the cropped 8 x 6 x 6 voxels at twice the resolution
    indices = preprocess_labels(Volume(labels, LPS), geometry, plan)
    assert set(np.unique(indices)) == {0, 1}
    probabilities = np.stack([indices == 0, indices == 1]).astype(np.float32)
    restored = restore_probabilities(probabilities, geometry, plan)
    assert restored.shape == (2, 12, 10, 8)
    np.testing.assert_array_equal(np.array([0, 3])[restored.argmax(0)], labels)
    box_start, box_size = geometry.input_box((2, 2, 2), (8, 6, 6), plan.orientation)
    assert box_size == (4, 3, 3)
    world_corner = LPS @ [box_start[2], box_start[1], box_start[0], 1]
    assert np.all(np.isfinite(world_corner))


def test_nonzero_box_fills_holes_and_takes_every_channel():
    image = np.zeros((2, 10, 10, 10), np.float32)
    image[0, 2:5, 2:5, 2:5] = 1
    image[1, 6:8, 6:8, 6:8] = 1
    box, mask = nonzero_box(image)
    assert box == ((2, 8), (2, 8), (2, 8)) and mask.sum() == 27 + 8


def test_the_preprocessed_dataset_is_kept_for_later_runs(tmp_path, fresh_dataset, monkeypatch):
    from napari_pgps import train

    monkeypatch.setenv("NAPARI_PGPS_CACHE", str(tmp_path / "cache"))
    config = quick_config(fresh_dataset, epochs=1, iterations=1)

    def prepared(events):
        return {(e.task, e.total) for e in events if isinstance(e, Preparing)}

    first = list(train(config))
    assert prepared(first) == {("fingerprint", 3), ("preprocessing", 3)}
    second = list(train(config))
    assert prepared(second) == set()  # fingerprint and preprocessed cases reused
    assert run_events(second)[0].training_cases == run_events(first)[0].training_cases
    config.preprocessing.crop_to_nonzero = False  # another plan: preprocessed again, on the same fingerprint pass
    assert ("preprocessing", 3) in prepared(train(config))
    image = fresh_dataset / "imagesTr" / "case_000.nii.gz"
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))  # the file changed
    assert prepared(train(quick_config(fresh_dataset, epochs=1, iterations=1))) == {("fingerprint", 3),
                                                                                     ("preprocessing", 3)}


def test_spacing_of_an_affine_and_of_its_reversed_layer_matrix_is_z_y_x():
    affine = affine_from_spacing((2.5, 0.9, 0.8))  # (sz, sy, sx)
    np.testing.assert_array_equal(affine, np.diag([0.8, 0.9, 2.5, 1.0]))
    assert spacing_of(affine) == (2.5, 0.9, 0.8)
    assert spacing_of(LPS) == (2.5, 0.9, 0.8)
    layer = reverse_axes(LPS)  # (Z, Y, X) -> world (z, y, x), as napari takes it
    np.testing.assert_array_equal(layer[:3, 3], [30.0, -20.0, 10.0])
    np.testing.assert_array_equal(np.diag(layer), [2.5, -0.9, -0.8, 1.0])
    np.testing.assert_array_equal(reverse_axes(layer), LPS)
    assert spacing_of(reverse_axes(layer)) == (2.5, 0.9, 0.8)


def test_label_maps_are_uint8_up_to_255_and_int16_beyond():
    assert label_dtype(0) == np.uint8 and label_dtype(255) == np.uint8
    assert label_dtype(256) == np.int16 and label_dtype(32767) == np.int16


def test_layer_to_world_composes_affine_rotation_shear_scale_and_translation():
    np.testing.assert_array_equal(layer_to_world(), np.eye(4))
    scaled = layer_to_world(scale=(2.5, 0.9, 0.8), translate=(30.0, -20.0, 10.0))
    np.testing.assert_array_equal(scaled, [[2.5, 0, 0, 30.0], [0, 0.9, 0, -20.0], [0, 0, 0.8, 10.0], [0, 0, 0, 1]])
    turn = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])  # a quarter turn in the (y, x) plane
    shear = layer_to_world(rotate=turn, shear=[0.1, 0.2, 0.3], scale=(1.0, 2.0, 4.0))
    sheared = np.array([[1, 0.1, 0.2], [0, 1, 0.3], [0, 0, 1]])
    np.testing.assert_allclose(shear[:3, :3], turn @ sheared @ np.diag([1.0, 2.0, 4.0]))
    # a layer's own affine comes after its placement; a 4D layer's last three axes are (Z, Y, X)
    outer = affine_from_spacing((1.0, 1.0, 3.0))
    np.testing.assert_allclose(layer_to_world(outer, scale=(2.0, 1.0, 1.0)), outer @ np.diag([2.0, 1, 1, 1]))
    four = layer_to_world(np.eye(5), scale=(7.0, 2.0, 3.0, 4.0), translate=(9.0, 1.0, 2.0, 3.0))
    np.testing.assert_array_equal(four, [[2, 0, 0, 1], [0, 3, 0, 2], [0, 0, 4, 3], [0, 0, 0, 1]])


def test_display_axes_put_a_sagittal_file_in_world_order_and_axes_matrix_finds_its_voxels():
    sagittal = np.array([[0, 0, 2.0, 0], [1.0, 0, 0, 0], [0, 1.5, 0, 0], [0, 0, 0, 1]])  # voxel i, j, k along y, z, x
    assert display_axes(LPS) == (0, 1, 2)
    axes = display_axes(sagittal)
    array = np.arange(3 * 4 * 5).reshape(3, 4, 5)  # (Z, Y, X) = (k, j, i)
    shown = np.transpose(array, axes)
    layer = reverse_axes(sagittal) @ axes_matrix(axes)
    np.testing.assert_allclose(np.abs(layer[:3, :3]), np.diag(np.abs(np.diag(layer[:3, :3]))))  # world order
    for index in [(0, 0, 0), (2, 3, 1), (1, 2, 4)]:
        shown_index = tuple(index[a] for a in axes)
        voxel = axes_matrix(axes) @ [*shown_index, 1]
        assert shown[shown_index] == array[tuple(int(v) for v in voxel[:3])]
        np.testing.assert_allclose(layer @ [*shown_index, 1], reverse_axes(sagittal) @ [*index, 1])


def test_geometry_difference_names_spacing_origin_and_turn():
    moved = LPS.copy()
    moved[:3, 3] += [3.0, 4.0, 0.0]
    moved[2, 2] = 3.0
    assert geometry_difference(LPS, moved) == "spacing along Z 2.5 vs 3 mm, origin differs by 5 mm"
    assert geometry_difference(LPS, LPS + 1e-6) == "the affines differ slightly"
