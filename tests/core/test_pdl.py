import numpy as np
import pytest

from napari_pgps.curriculum.pdl import active_cases, default_interval, rank_cases
from napari_pgps.errors import InputError


def _family(n=6, seed=0):
    """A base volume and copies with growing noise: case i is less similar to case 0 the larger i is."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*(np.linspace(-1, 1, s) for s in (20, 24, 28)), indexing="ij")
    base = np.exp(-(zz**2 + yy**2 + xx**2) * 3).astype(np.float32)
    return [base + rng.normal(0, 0.05 * i, base.shape).astype(np.float32) for i in range(n)]


@pytest.mark.parametrize("metric", ["mse", "psnr", "ssim"])
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


def test_unknown_metric():
    with pytest.raises(InputError, match="similarity"):
        rank_cases(_family(3), "uqi")
