import numpy as np
import pytest

from napari_pgps.config import RunConfig
from napari_pgps.curriculum.pdl import active_cases, default_interval, rank_cases, universal_quality_index
from napari_pgps.errors import InputError


def _family(n=6, seed=0):
    """A base volume and copies with growing noise: case i is less similar to case 0 the larger i is."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*(np.linspace(-1, 1, s) for s in (20, 24, 28)), indexing="ij")
    base = np.exp(-(zz**2 + yy**2 + xx**2) * 3).astype(np.float32)
    return [base + rng.normal(0, 0.05 * i, base.shape).astype(np.float32) for i in range(n)]


@pytest.mark.parametrize("metric", ["mse", "psnr", "ssim", "uqi"])
def test_ranking_follows_the_known_order(metric):
    images = _family()
    order, reference = rank_cases(images, metric, reference=0)
    assert reference == 0 and order == [0, 1, 2, 3, 4, 5]
    shuffled = [images[i] for i in (3, 0, 5, 1, 4, 2)]
    order, _ = rank_cases(shuffled, metric, reference=1)
    assert order == [1, 3, 5, 0, 4, 2]


def test_default_reference_is_closest_to_the_mean():
    rng = np.random.default_rng(1)
    shapes = [(10, 10, 10), (12, 8, 10), (9, 11, 10), (10, 10, 12)]
    values = [0.0, 1.0, 2.0, 10.0]  # mean 3.25: case 2 is the closest, case 3 the outlier
    images = [np.full(s, v, np.float32) + rng.normal(0, 0.01, s).astype(np.float32) for s, v in zip(shapes, values)]
    order, reference = rank_cases(images, "mse")
    assert reference == 2 and order == [2, 1, 0, 3]


def test_groups_join_every_n_epochs():
    assert [active_cases(e, 10, 4, 3) for e in range(0, 12, 3)] == [3, 6, 9, 10]
    assert active_cases(100, 10, 4, 3) == 10
    assert default_interval(40, 4) == 6


def test_uqi_is_1_for_the_same_volume_and_lower_for_a_shifted_or_noisy_copy():
    base = _family(1)[0] + 1.0  # non-negative intensities, as UQI expects
    assert universal_quality_index(base, base) == pytest.approx(1.0)
    shifted = np.roll(base, 3, axis=2)
    noisy = base + np.random.default_rng(2).normal(0, 0.05, base.shape)
    assert universal_quality_index(shifted, base) < 0.99 and universal_quality_index(noisy, base) < 0.99
    assert universal_quality_index(shifted, base) == pytest.approx(universal_quality_index(base, shifted))  # symmetric
    # the flat windows of Wang & Bovik's rule: equal flat windows are 1, different flat means are 2ab / (a^2 + b^2)
    assert universal_quality_index(np.full((10, 10, 10), 3.0), np.full((10, 10, 10), 3.0)) == 1.0
    assert universal_quality_index(np.full((10, 10, 10), 1.0), np.full((10, 10, 10), 3.0)) == pytest.approx(0.6)
    assert universal_quality_index(np.zeros((10, 10, 10)), np.zeros((10, 10, 10))) == 1.0


def test_uqi_ranks_higher_as_more_similar():
    """Hand-made set: the reference, a copy with a small intensity gain, a noisy copy, a shifted copy, and noise."""
    rng = np.random.default_rng(3)
    reference = _family(1)[0] * 4.0 + 1.0
    gain = reference * 1.1
    noisy = reference + rng.normal(0, 0.2, reference.shape).astype(np.float32)
    shifted = np.roll(reference, 2, axis=(0, 1, 2))
    unrelated = rng.uniform(0.0, 5.0, reference.shape).astype(np.float32)
    images = [noisy, unrelated, reference, shifted, gain]
    scores = [universal_quality_index(x, reference) for x in images]
    assert scores[2] == pytest.approx(1.0) and scores[4] > scores[0] > scores[3] > scores[1]
    order, _ = rank_cases(images, "uqi", reference=2)
    assert order == [2, 4, 0, 3, 1]  # the highest UQI first
    assert rank_cases(images, "mse", reference=2)[0] == [2, 0, 4, 3, 1]  # MSE counts the gain as a larger error than the noise


def test_uqi_is_a_pdl_metric_of_the_configuration():
    config = RunConfig.from_dict({"curriculum": {"pdl": {"enabled": True, "metric": "uqi"}}})
    assert config.curriculum.pdl.metric == "uqi"
    order, _ = rank_cases(_family(4), config.curriculum.pdl.metric, reference=0)
    assert order == [0, 1, 2, 3]


def test_unknown_metric():
    with pytest.raises(InputError, match="similarity 'nmi'; choose one of mse, psnr, ssim, uqi"):
        rank_cases(_family(3), "nmi")
