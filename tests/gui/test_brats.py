"""BraTS in the viewer: two channel layers and LPS headers train from layers, and the segmentation lines up."""

from __future__ import annotations

import numpy as np
import pytest

from napari_pgps._widgets.layers import world_matrix
from napari_pgps._widgets.segment_widget import SegmentWidget
from napari_pgps._widgets.state import state_for
from napari_pgps._widgets.train_widget import TrainWidget

pytestmark = [pytest.mark.gui, pytest.mark.integration]


def test_brats_trains_from_channel_layers_and_its_segmentation_lines_up(make_napari_viewer, qtbot, tmp_path, brats):
    import nibabel as nib

    viewer = make_napari_viewer()
    source = brats / "imagesTr" / "brats15_pat0003.nii.gz"
    flair, t1c = viewer.open(str(source), plugin="napari-pgps")
    [truth] = viewer.open(str(brats / "labelsTr" / "brats15_pat0003.nii.gz"), plugin="napari-pgps")
    before = flair.data.copy()
    # the reader places the LPS file where its affine says: voxel (z, y, x) -> world (z, y, x) of the RAS affine
    affine = nib.load(str(source)).affine
    index = np.argwhere(np.asarray(truth.data) == 4)[0]
    expected = (affine @ [index[2], index[1], index[0], 1])[:3][::-1]
    np.testing.assert_allclose(truth.data_to_world(index), expected, atol=1e-6)
    np.testing.assert_allclose(flair.data_to_world(index), expected, atol=1e-6)

    trainer = TrainWidget(viewer)
    for layer in (flair, t1c):
        trainer.image_choice.layer.setCurrentText(layer.name)
        trainer.image_choice.add_channel()
    trainer.labels_choice.setCurrentText(truth.name)
    trainer._add_pair()
    [(channels, labels)] = trainer.layer_pairs()
    assert [c.name for c in channels] == [flair.name, t1c.name] and labels is truth
    config = state_for(viewer).config
    config.model.patch_size = (64, 64, 64)
    config.model.base_channels = 8
    config.model.spacing = (2.0, 2.0, 2.0)  # the files are 1 mm: the segmentation is resampled and brought back
    config.training.epochs, config.training.iterations_per_epoch = 1, 2
    trainer.run_root.setText(str(tmp_path))
    trainer.device.setCurrentText("cpu")
    trainer.start_training()
    qtbot.waitUntil(lambda: trainer.worker is None, timeout=240_000)
    assert trainer.status.text().startswith("finished"), trainer.status.text()
    assert trainer.history.started.training_cases == 1

    segmenter = SegmentWidget(viewer)
    segmenter.offer_model(trainer.run_dir)
    for layer in (flair, t1c):
        segmenter.image.layer.setCurrentText(layer.name)
        segmenter.image.add_channel()
    segmenter.device.setCurrentText("cpu")
    segmenter.segment()
    qtbot.waitUntil(lambda: segmenter.result_layer is not None and segmenter.worker is None, timeout=240_000)
    result = segmenter.result_layer
    assert result.data.shape == truth.data.shape
    np.testing.assert_allclose(world_matrix(result), world_matrix(truth))
    # the labelled voxel of the reference is the same voxel of the segmentation, in world space
    np.testing.assert_allclose(result.world_to_data(truth.data_to_world(index)), index, atol=1e-6)
    assert "reoriented from LPS to RAS" in segmenter.status.text()
    assert "resampled from 1 x 1 x 1 mm to the model's 2 x 2 x 2 mm and back" in segmenter.status.text()
    np.testing.assert_array_equal(flair.data, before)
