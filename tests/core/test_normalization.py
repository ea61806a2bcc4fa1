import numpy as np
import pytest

from napari_pgps.data import fit_normalization, normalize


def test_zscore_per_case():
    image = np.random.default_rng(0).normal(500, 40, (8, 9, 10)).astype(np.float32)
    config = fit_normalization("MRI", [image], [np.zeros_like(image, np.uint8)])
    out = normalize(image, config)
    assert config.scheme == "zscore"
    assert out.mean() == pytest.approx(0, abs=1e-4) and out.std() == pytest.approx(1, abs=1e-4)
    assert normalize(image * 1000, config) == pytest.approx(out, abs=1e-3)


def test_ct_clips_to_foreground_percentiles():
    rng = np.random.default_rng(0)
    image = rng.normal(0, 100, (20, 20, 20)).astype(np.float32)
    labels = np.zeros(image.shape, np.uint8)
    labels[5:15, 5:15, 5:15] = 1
    image[labels == 1] = rng.uniform(40, 80, int(labels.sum()))
    config = fit_normalization("CT", [image], [labels])
    assert config.scheme == "ct"
    assert 40 <= config.clip_low < config.clip_high <= 80
    out = normalize(image, config)
    assert out.max() == pytest.approx((config.clip_high - config.mean) / config.std, rel=1e-5)
    assert out.min() == pytest.approx((config.clip_low - config.mean) / config.std, rel=1e-5)
