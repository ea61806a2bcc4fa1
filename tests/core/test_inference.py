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


@pytest.mark.parametrize("mirror_axes", [(), (0, 1, 2)])
def test_sliding_window_covers_the_whole_volume(mirror_axes):
    image = np.random.default_rng(0).normal(size=(13, 37, 29)).astype(np.float32)
    probabilities = predict_probabilities(_SignNetwork(), image, (8, 16, 16), torch.device("cpu"), mirror_axes=mirror_axes)
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
    from napari_pgps.engine.device import cpu_convolutions
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
        with cpu_convolutions(torch.device("cpu")):
            forced = network(x)
    assert len(calls) == sum(isinstance(m, torch.nn.Conv3d) for m in network.modules())
    assert torch.allclose(forced, expected, atol=1e-4)


def test_mirroring_flips_only_the_axes_the_model_was_trained_to_flip(trained_phantom_run):
    image = np.zeros((16, 32, 32), np.float32)
    totals = []
    predict_probabilities(_SignNetwork(), image, (8, 16, 16), torch.device("cpu"), mirror_axes=(2,), batch_size=1,
                          progress=lambda d, t: totals.append(t))
    assert totals[-1] == 2 * 27  # the image and its X flip
    model = load_model(trained_phantom_run, "cpu")
    assert model.config.data.augmentation == "none" and model.mirror_axes == ()
    volume = Volume(make_phantom(51, shape=(8, 32, 32))[0], affine_from_spacing((2.5, 0.8, 0.8)))  # one window
    plain = segment_volume(model, volume, keep_probabilities=True)
    mirrored = segment_volume(model, volume, mirror=True, keep_probabilities=True)
    np.testing.assert_array_equal(mirrored.probabilities, plain.probabilities)  # no flip it never saw
    assert "test-time mirroring skipped: the model was trained without mirroring" in mirrored.notes
    model.config.data.augmentation = "mirror"
    assert model.mirror_axes == (0, 1, 2)
    flipped = segment_volume(model, volume, mirror=True, keep_probabilities=True)
    assert not np.array_equal(flipped.probabilities, plain.probabilities) and not any(
        "mirroring" in note for note in flipped.notes)


def test_whole_volume_arrays_go_to_cpu_memory_when_the_gpu_cannot_hold_them(monkeypatch):
    from napari_pgps.engine import inference

    gpu = torch.device("cuda", 0)
    needed = inference.whole_volume_bytes(1, 14, (200, 384, 384))  # a 384 x 384 x 200 MRI with 14 labels
    assert needed == 4 * 200 * 384 * 384 * (2 + 4 * 14 + 1)
    monkeypatch.setattr(inference, "free_memory", lambda device: 40 * 2**30 if device.type == "cuda" else None)
    assert inference.accumulator_device(gpu, needed) == gpu
    monkeypatch.setattr(inference, "free_memory", lambda device: 8 * 2**30 if device.type == "cuda" else None)
    assert inference.accumulator_device(gpu, needed) == torch.device("cpu")
    assert inference.accumulator_device(torch.device("cpu"), needed) == torch.device("cpu")


def test_a_gpu_out_of_memory_segments_again_with_the_sums_in_cpu_memory():
    from napari_pgps.engine.inference import on_device_or_cpu

    def run(store):
        if store.type != "cpu":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return torch.ones(2)

    notes = []
    assert torch.equal(on_device_or_cpu(run, torch.device("cuda", 0), notes), torch.ones(2))
    assert notes == ["the GPU ran out of memory; segmented again with the whole-volume sums in CPU memory"]
    with pytest.raises(torch.cuda.OutOfMemoryError):  # already in CPU memory: nothing left to move
        on_device_or_cpu(lambda store: run(torch.device("cuda")), torch.device("cpu"), [])


def test_sums_kept_apart_from_the_windows_device_give_the_same_probabilities(monkeypatch):
    from napari_pgps.engine import inference

    image = np.random.default_rng(0).normal(size=(2, 13, 37, 29)).astype(np.float32)

    class TwoChannels(nn.Module):
        def forward(self, x):
            return torch.cat([x[:, :1] - x[:, 1:], x[:, 1:] - x[:, :1], x[:, :1] * 0], dim=1)

    expected = predict_probabilities(TwoChannels(), image, (8, 16, 16), torch.device("cpu"), mirror_axes=(0, 2))
    stores = []
    from monai import inferers  # imported where it is used, so patched there

    real = inferers.sliding_window_inference
    monkeypatch.setattr(inferers, "sliding_window_inference",
                        lambda *a, **k: stores.append((k["sw_device"], k["device"])) or real(*a, **k))
    monkeypatch.setattr(inference, "free_memory", lambda device: 1)  # nothing fits: the sums go to CPU memory
    notes = []
    kept_apart = predict_probabilities(TwoChannels(), image, (8, 16, 16), torch.device("cpu"), mirror_axes=(0, 2),
                                       classes=3, notes=notes)
    np.testing.assert_array_equal(kept_apart, expected)
    assert stores and all(store == (torch.device("cpu"), torch.device("cpu")) for store in stores) and notes == []


def test_an_ensemble_applies_only_the_post_processing_every_model_chose(trained_phantom_run):
    from napari_pgps.engine.postprocessing import Postprocessing

    first, second = load_model(trained_phantom_run, "cpu"), load_model(trained_phantom_run, "cpu")
    first.postprocessing = Postprocessing(foreground=True, labels=[1])
    second.postprocessing = Postprocessing(labels=[1, 2])
    volume = Volume(make_phantom(52, shape=(8, 32, 32))[0], affine_from_spacing((2.5, 0.8, 0.8)))  # one window
    plain = segment_volume([first, second], volume, postprocess=False)
    both = segment_volume([first, second], volume)
    np.testing.assert_array_equal(both.labels.array, Postprocessing(labels=[1]).apply(plain.labels.array))
    assert "post-processed: largest lesion component (the steps all models chose)" in both.notes
    second.postprocessing = None  # a model without a choice chose no step
    assert "post-processed: none (the steps all models chose)" in segment_volume([first, second], volume).notes
    alone = segment_volume(first, volume)
    assert "post-processed: largest foreground component, largest lesion component" in alone.notes
