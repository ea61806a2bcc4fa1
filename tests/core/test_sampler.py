import numpy as np
import pytest

from napari_pgps.data import PatchSampler, class_fractions


def _volume(shape=(20, 30, 30)):
    rng = np.random.default_rng(1)
    image = rng.normal(size=shape).astype(np.float32)
    labels = np.zeros(shape, np.int64)
    labels[2:4, 3:6, 3:6] = 1  # tiny structure in a corner
    labels[15:17, 25:27, 25:27] = 2
    return image, labels


def _sampler(probability, seed=0, **kwargs):
    image, labels = _volume()
    return PatchSampler([image], [labels], 3, np.random.default_rng(seed), foreground_probability=probability, **kwargs)


@pytest.mark.parametrize("patch, batch", [((8, 8, 8), 1), ((16, 24, 8), 3), ((4, 32, 32), 2)])
def test_any_patch_and_batch(patch, batch):
    out = _sampler(0.33).sample(patch, batch)
    assert out.images.shape == (batch, 1) + patch and out.images.dtype == np.float32
    assert out.labels.shape == (batch, 1) + patch
    assert sum(out.class_fractions) == pytest.approx(1.0)
    assert out.class_fractions == pytest.approx(class_fractions(out.labels, 3))


def test_foreground_oversampling_puts_foreground_in_every_crop():
    sampler = _sampler(1.0, mirror=False)
    for _ in range(30):
        assert (sampler.sample((6, 6, 6), 1).labels > 0).any()


def test_oversampling_raises_the_foreground_fraction():
    def mean_foreground(p):
        sampler = _sampler(p, seed=5)
        return np.mean([1 - sampler.sample((8, 8, 8), 4).class_fractions[0] for _ in range(50)])

    assert mean_foreground(1.0) > 3 * mean_foreground(0.0)


def test_volumes_smaller_than_the_patch_are_padded():
    image = np.ones((4, 5, 6), np.float32)
    labels = np.ones((4, 5, 6), np.int64)
    out = PatchSampler([image], [labels], 2, np.random.default_rng(0), mirror=False).sample((8, 8, 8), 1)
    assert out.images.sum() == pytest.approx(4 * 5 * 6)
    assert out.labels.sum() == 4 * 5 * 6
    assert out.class_fractions[1] == pytest.approx(120 / 512)


def test_same_seed_same_crops():
    a = _sampler(0.33, seed=9).sample((8, 8, 8), 2)
    b = _sampler(0.33, seed=9).sample((8, 8, 8), 2)
    np.testing.assert_array_equal(a.images, b.images)
    c = _sampler(0.33, seed=10).sample((8, 8, 8), 2)
    assert not np.array_equal(a.images, c.images)
