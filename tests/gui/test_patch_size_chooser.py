"""The Segment widget's patch-size chooser with memory estimates, driving a real napari viewer with an HN model."""

import numpy as np
import pytest
from helpers import quick_config

from napari_pgps._sample_data import phantom_layers
from napari_pgps._widgets.segment_widget import SegmentWidget

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def hypernet_run(tmp_path_factory, phantom_dataset):
    from napari_pgps import train

    config = quick_config(phantom_dataset, epochs=1, iterations=2)
    config.model.architecture = "hypernet"
    config.model.hypernet_hidden = 8
    config.curriculum.schedule = "augment"
    run_dir = tmp_path_factory.mktemp("runs") / "hn"
    for _ in train(config, run_dir):
        pass
    return run_dir


def test_chooser_estimates_memory_and_segments_with_the_baked_hypernetwork(make_napari_viewer, qtbot, hypernet_run):
    viewer = make_napari_viewer()
    for data, meta, kind in phantom_layers():
        getattr(viewer, f"add_{kind}")(data, **meta)
    image = viewer.layers["phantom"]
    before = image.data.copy()
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.offer_model(hypernet_run)
    widget.device.setCurrentText("cpu")
    widget.estimate.click()
    qtbot.waitUntil(lambda: widget.estimate_worker is None, timeout=30_000)
    texts = [widget.sizes.itemText(i) for i in range(widget.sizes.count())]
    assert len(texts) >= 3 and all("MB (computed)" in t for t in texts)
    assert "8 x 32 x 32" in " ".join(texts)  # the training patch
    megabytes = [float(t.split(": ")[1].split(" MB")[0].replace(",", "")) for t in texts]
    assert megabytes == sorted(megabytes)

    last = widget.sizes.count() - 1  # the largest size: fewest windows, a quick test
    widget.sizes.setCurrentIndex(last)
    widget.sizes.activated.emit(last)  # what a user's pick does
    chosen = widget.sizes.itemData(last)
    assert not widget.training_patch.isChecked() and tuple(s.value() for s in widget.patch) == tuple(chosen)
    widget.estimate.click()  # cached: filled at once, no worker
    assert widget.estimate_worker is None and widget.sizes.count() == len(texts)

    widget.image.layer.setCurrentText("phantom")
    widget.segment()
    qtbot.waitUntil(lambda: widget.result_layer is not None and widget.worker is None, timeout=60_000)
    assert widget.result_layer.data.shape == image.data.shape
    assert "hypernetwork baked" in widget.status.text() and " x ".join(map(str, chosen)) in widget.status.text()
    np.testing.assert_array_equal(image.data, before)
