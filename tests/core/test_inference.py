import numpy as np
import pytest
import torch
from torch import nn

from napari_pgps._sample_data import make_phantom
from napari_pgps.data.volume import Volume, affine_from_spacing
from napari_pgps.engine import Cancelled, load_model, predict_probabilities, segment_volume
from napari_pgps.engine.metrics import label_volumes


class _SignNetwork(nn.Module):
    """Logits (−x, x): label 1 exactly where the input is positive."""

    def forward(self, x):
        return torch.cat([-x, x], dim=1)


@pytest.mark.parametrize("mirror", [False, True])
def test_sliding_window_covers_the_whole_volume(mirror):
    image = np.random.default_rng(0).normal(size=(13, 37, 29)).astype(np.float32)
    probabilities = predict_probabilities(_SignNetwork(), image, (8, 16, 16), torch.device("cpu"), mirror=mirror)
    assert probabilities.shape == (2, 13, 37, 29)
    np.testing.assert_allclose(probabilities.sum(axis=0), 1, atol=1e-5)
    np.testing.assert_array_equal(np.argmax(probabilities, axis=0), image > 0)


def test_progress_reaches_the_total_and_cancel_stops():
    image = np.zeros((16, 32, 32), np.float32)
    calls = []
    predict_probabilities(_SignNetwork(), image, (8, 16, 16), torch.device("cpu"), batch_size=1, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1][0] == calls[-1][1] == len(calls) == 27
    with pytest.raises(Cancelled):
        predict_probabilities(_SignNetwork(), image, (8, 16, 16), torch.device("cpu"), cancel=lambda: True)


def test_segment_volume_keeps_geometry_and_measures_labels(trained_phantom_run):
    model = load_model(trained_phantom_run, "cpu")
    image, _ = make_phantom(50, shape=(20, 48, 44), spacing=(2.5, 0.8, 0.8))
    affine = affine_from_spacing((2.5, 0.8, 0.8))
    affine[:3, 3] = (5, 6, 7)
    result = segment_volume(model, Volume(image, affine), mirror=True, keep_probabilities=True)
    assert result.labels.shape == image.shape
    np.testing.assert_array_equal(result.labels.affine, affine)
    assert set(np.unique(result.labels.array)) <= {0, 1, 2}
    assert result.probabilities.shape == (3, 20, 48, 44)
    assert set(result.volumes) == {"lesion", "vessel"}
    voxels = int((result.labels.array == 1).sum())
    assert result.volumes["lesion"] == {"voxels": voxels, "ml": pytest.approx(voxels * 2.5 * 0.8 * 0.8 / 1000)}


def test_label_volumes_in_millilitres():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[:5] = 1
    labels[5:, :2] = 3
    volumes = label_volumes(labels, (2.0, 1.0, 0.5), {0: "bg", 1: "a", 2: "b", 3: "c"})
    assert volumes == {"a": {"voxels": 500, "ml": 0.5}, "b": {"voxels": 0, "ml": 0.0}, "c": {"voxels": 100, "ml": 0.1}}


def test_cpu_inference_runs_convolutions_through_onednn_with_the_same_result(monkeypatch):
    from napari_pgps.config import ModelConfig
    from napari_pgps.engine import inference
    from napari_pgps.models import build_network

    model = ModelConfig(patch_size=(8, 32, 32), out_channels=3, kernel_sizes=[(1, 3, 3), (3, 3, 3), (3, 3, 3)],
                        strides=[(1, 1, 1), (1, 2, 2), (2, 2, 2)], channels=[8, 16, 32])
    network = build_network(model).eval()
    x = torch.randn(1, 1, 8, 32, 32)
    calls = []
    original = torch.mkldnn_convolution
    monkeypatch.setattr(torch, "mkldnn_convolution", lambda *a: calls.append(1) or original(*a))
    with torch.no_grad():
        expected = network(x)
        with inference.cpu_convolutions(torch.device("cpu")):
            forced = network(x)
    assert len(calls) == sum(isinstance(m, torch.nn.Conv3d) for m in network.modules())
    assert torch.allclose(forced, expected, atol=1e-4)
