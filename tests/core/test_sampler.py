"""Crops from a preprocessed store: shapes, nnU-Net's oversampling rule, padding, seeds, background workers."""

import numpy as np
import pytest

from napari_pgps.data import PatchSampler, class_fractions
from napari_pgps.data.loader import BatchLoader
from napari_pgps.data.preprocessing import CaseGeometry
from napari_pgps.data.store import PreprocessedDataset


def _store(tmp_path, shape=(20, 30, 30), cases=1, channels=1):
    """A store of ``cases`` noise volumes with a tiny structure of label 1 and one of label 2 in opposite corners."""
    store = PreprocessedDataset(tmp_path / "store")
    rng = np.random.default_rng(1)
    for c in range(cases):
        image = rng.normal(size=(channels,) + shape).astype(np.float32)
        labels = np.zeros(shape, np.uint8)
        labels[2:4, 3:6, 3:6] = 1
        labels[-5:-3, -5:-3, -5:-3] = 2
        box = tuple((0, n) for n in shape)
        store.write(f"case{c}", image, labels, CaseGeometry(shape, "RAS", shape, box, (1.0, 1.0, 1.0), shape))
    return store


def _sampler(tmp_path, probability, seed=0, **kwargs):
    store = _store(tmp_path)
    return PatchSampler(store, ["case0"], 3, np.random.default_rng(seed), foreground_probability=probability, **kwargs)


@pytest.mark.parametrize("patch, batch", [((8, 8, 8), 1), ((16, 24, 8), 3), ((4, 32, 32), 2)])
def test_any_patch_and_batch(tmp_path, patch, batch):
    out = _sampler(tmp_path, 0.33).sample(patch, batch)
    assert out.images.shape == (batch, 1) + patch and out.images.dtype == np.float32
    assert out.labels.shape == (batch, 1) + patch
    assert sum(out.class_fractions) == pytest.approx(1.0)
    assert out.class_fractions == pytest.approx(class_fractions(out.labels, 3))


def test_several_channels_come_through(tmp_path):
    store = _store(tmp_path, channels=3)
    out = PatchSampler(store, ["case0"], 3, np.random.default_rng(0)).sample((8, 8, 8), 2)
    assert out.images.shape == (2, 3, 8, 8, 8)


def test_nnunet_batch_rule_forces_the_last_third_of_each_batch_onto_foreground(tmp_path):
    sampler = _sampler(tmp_path, 0.33)
    assert sampler.plan((6, 6, 6), 2).foreground == (False, True)  # one of two at B = 2
    assert sampler.plan((6, 6, 6), 6).foreground == (False,) * 4 + (True,) * 2
    for _ in range(20):
        assert (sampler.sample((6, 6, 6), 2).labels[1] > 0).any()


def test_per_crop_rule_forces_each_crop_with_the_probability(tmp_path):
    sampler = _sampler(tmp_path, 1.0, oversampling="crop")
    for _ in range(20):
        assert (sampler.sample((6, 6, 6), 1).labels > 0).any()
    sampler = _sampler(tmp_path, 0.5, seed=3, oversampling="crop")
    forced = [f for _ in range(200) for f in sampler.plan((6, 6, 6), 2).foreground]
    assert 0.4 < np.mean(forced) < 0.6


def test_oversampling_raises_the_foreground_fraction(tmp_path):
    def mean_foreground(p):
        sampler = _sampler(tmp_path, p, seed=5)
        return np.mean([1 - sampler.sample((8, 8, 8), 4).class_fractions[0] for _ in range(50)])

    assert mean_foreground(1.0) > 3 * mean_foreground(0.0)


def test_volumes_smaller_than_the_patch_are_padded(tmp_path):
    store = PreprocessedDataset(tmp_path / "small")
    shape = (4, 5, 6)
    box = tuple((0, n) for n in shape)
    store.write("one", np.ones((1,) + shape, np.float32), np.ones(shape, np.uint8),
                CaseGeometry(shape, "RAS", shape, box, (1.0, 1.0, 1.0), shape))
    out = PatchSampler(store, ["one"], 2, np.random.default_rng(0)).sample((8, 8, 8), 1)
    assert out.images.sum() == pytest.approx(4 * 5 * 6)
    assert out.labels.sum() == 4 * 5 * 6
    assert out.class_fractions[1] == pytest.approx(120 / 512)


def test_same_seed_same_crops(tmp_path):
    a = _sampler(tmp_path, 0.33, seed=9).sample((8, 8, 8), 2)
    b = _sampler(tmp_path, 0.33, seed=9).sample((8, 8, 8), 2)
    np.testing.assert_array_equal(a.images, b.images)
    c = _sampler(tmp_path, 0.33, seed=10).sample((8, 8, 8), 2)
    assert not np.array_equal(a.images, c.images)


def test_background_workers_cut_the_same_batches(tmp_path):
    store = _store(tmp_path, cases=3)
    plans = [PatchSampler(store, ["case0", "case1", "case2"], 3, np.random.default_rng(4)) for _ in range(2)]
    requests = [plans[0].plan((8, 8, 8), 2) for _ in range(6)]
    assert requests == [plans[1].plan((8, 8, 8), 2) for _ in range(6)]
    in_process = list(BatchLoader(plans[0], workers=0).batches(requests))
    with BatchLoader(plans[1], workers=2) as loader:
        in_workers = list(loader.batches(requests))
    for a, b in zip(in_process, in_workers):
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)
