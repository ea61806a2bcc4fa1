import numpy as np
import pytest

from napari_pgps.config import NormalizationConfig
from napari_pgps.data import fit_normalization, normalize


def test_zscore_per_case():
    image = np.random.default_rng(0).normal(500, 40, (1, 8, 9, 10)).astype(np.float32)
    (config,) = fit_normalization(["MRI"], [np.zeros(0, np.float32)], [1.0])
    out = normalize(image, [config])
    assert config.scheme == "zscore" and not config.nonzero_mask
    assert out.mean() == pytest.approx(0, abs=1e-4) and out.std() == pytest.approx(1, abs=1e-4)
    assert normalize(image * 1000, [config]) == pytest.approx(out, abs=1e-3)


def test_zscore_inside_the_nonzero_region_when_cropping_shrinks_the_cases():
    (config,) = fit_normalization(["FLAIR"], [np.zeros(0, np.float32)], [0.5, 0.6, 0.9])
    assert config.nonzero_mask
    image = np.zeros((1, 10, 10, 10), np.float32)
    image[0, 2:8, 2:8, 2:8] = np.random.default_rng(0).normal(300, 20, (6, 6, 6))
    mask = image[0] != 0
    out = normalize(image, [config], mask)
    assert out[0][mask].mean() == pytest.approx(0, abs=1e-4) and out[0][mask].std() == pytest.approx(1, abs=1e-4)
    assert (out[0][~mask] == 0).all()


def test_ct_clips_to_foreground_percentiles_and_channels_normalise_on_their_own():
    rng = np.random.default_rng(0)
    foreground = rng.uniform(40, 80, 5000).astype(np.float32)
    ct, mri = fit_normalization(["CT", "MRI"], [foreground, foreground], [1.0])
    assert (ct.scheme, mri.scheme) == ("ct", "zscore")
    assert 40 <= ct.clip_low < ct.clip_high <= 80
    image = rng.normal(0, 100, (2, 20, 20, 20)).astype(np.float32)
    out = normalize(image, [ct, mri])
    assert out[0].max() == pytest.approx((ct.clip_high - ct.mean) / ct.std, rel=1e-5)
    assert out[0].min() == pytest.approx((ct.clip_low - ct.mean) / ct.std, rel=1e-5)
    assert out[1].std() == pytest.approx(1, abs=1e-4)
    with pytest.raises(ValueError, match="1 normalisation"):
        normalize(image, [NormalizationConfig("zscore")])


@pytest.mark.parametrize("name, scheme", [("CT", "ct"), ("ct", "ct"), ("Ct", "ct"), (" CT ", "ct"), ("CTA", "zscore"),
                                          ("CT1", "zscore"), ("channel 0", "zscore")])
def test_a_ct_channel_is_named_ct_in_any_case_as_in_nnunet(name, scheme):
    foreground = np.random.default_rng(0).uniform(40, 80, 500).astype(np.float32)
    assert fit_normalization([name], [foreground], [1.0])[0].scheme == scheme


@pytest.mark.parametrize("config", [NormalizationConfig("zscore"), NormalizationConfig("zscore", nonzero_mask=True),
                                    NormalizationConfig("ct", 7.5, 7.5, 7.5, 0.0)], ids=["zscore", "masked", "ct"])
def test_a_channel_holding_one_value_normalises_to_zero_not_to_a_division_by_zero(config):
    image = np.full((1, 4, 5, 6), 7.5, np.float32)
    out = normalize(image, [config], np.ones((4, 5, 6), bool))
    assert np.isfinite(out).all() and (out == 0).all()
