"""The augmentation curriculum: an augmentation's strength, the ramp that sets it per epoch, and its way to workers."""

import numpy as np
import pytest
from helpers import quick_config

from napari_pgps import train
from napari_pgps.data import PatchSampler
from napari_pgps.data.augmentation import (
    AUGMENTATIONS,
    Augmentation,
    _intensity_transforms,
    augmentation_strength,
    enlarged_crop,
)
from napari_pgps.data.preprocessing import CaseGeometry
from napari_pgps.data.store import PreprocessedDataset
from napari_pgps.events import StepDone

PATCH = (8, 10, 12)

# Before strengths existed: for seeds 0..11, (image sum, image sum of squares, label sum, position-weighted label
# checksum) of the crops of _crop(name, seed).
TODAY = {
    "nnunet": [(40.1613, 1918.2588, 586, 13423), (20.7679, 1961.9698, 552, 13297), (10.8751, 1890.1683, 602, 14301),
               (-48.3091, 545.2111, 546, 12828), (-83.9141, 1921.6331, 542, 13456), (-50.4919, 2037.0082, 668, 15980),
               (22.8263, 1945.8424, 554, 13040), (-33.7396, 1226.1824, 574, 13307), (3.3622, 1926.2004, 550, 13081),
               (49.9635, 1614.8846, 518, 12507), (-94.9495, 1894.389, 566, 13321), (-5.8679, 800.5302, 566, 13283)],
    "mirror": [(48.5219, 1854.9268, 620, 15047), (-59.6269, 1997.8379, 556, 13647), (-84.771, 1985.2276, 638, 15160),
               (47.3711, 1781.5795, 566, 13621), (-12.1381, 2017.4919, 584, 13922), (35.7382, 1846.0242, 556, 13686),
               (19.8621, 2012.3747, 560, 13238), (-0.2372, 1844.0682, 630, 15516), (4.5978, 1927.5714, 580, 13689),
               (11.9019, 1858.416, 546, 13411), (-72.0298, 1965.8691, 582, 13897), (27.4138, 1946.5186, 606, 14917)],
}


def _inputs(size, seed):
    """A noise crop (2, Z, Y, X) of ``size`` and labels (1, Z, Y, X) of 0 and 2."""
    rng = np.random.default_rng(100 + seed)
    return rng.normal(size=(2,) + tuple(size)).astype(np.float32), (rng.random((1,) + tuple(size)) < 0.3).astype(
        np.uint8) * 2


def _crop(augmentation, seed):
    image, labels = _inputs(augmentation.crop_size(PATCH), seed)
    return augmentation(image, labels, PATCH, np.random.default_rng(seed))


def _fingerprint(image, labels):
    image = image.astype(np.float64)
    return (image.sum(), (image ** 2).sum(), int(labels.sum()),
            int((labels * np.arange(labels.size).reshape(labels.shape) % 97).sum()))


@pytest.mark.parametrize("name", ["nnunet", "mirror"])
def test_full_strength_is_the_pipeline_as_it_was(name):
    for seed, (total, squares, label_sum, checksum) in enumerate(TODAY[name]):
        image, labels = _crop(Augmentation(name, strength=1.0), seed)
        got = _fingerprint(image, labels)
        assert got[:2] == pytest.approx((total, squares), abs=2e-4)
        assert got[2:] == (label_sum, checksum)


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_strength_zero_is_the_crop_as_it_is_and_draws_nothing(name):
    augmentation = Augmentation(name, strength=0.0)
    assert augmentation.crop_size(PATCH) == PATCH  # nnU-Net's enlarged crop is not needed
    image, labels = _inputs(PATCH, 3)
    rng = np.random.default_rng(7)
    out_image, out_labels = augmentation(image, labels, PATCH, rng)
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_labels, labels)
    assert rng.random() == np.random.default_rng(7).random()


def _store(tmp_path, shape=(20, 24, 24)):
    store = PreprocessedDataset(tmp_path / "store")
    rng = np.random.default_rng(1)
    for case in range(2):
        labels = np.zeros(shape, np.uint8)
        labels[4:9, 5:12, 6:14] = 1
        store.write(f"case{case}", rng.normal(size=(1,) + shape).astype(np.float32), labels,
                    CaseGeometry(shape, "RAS", shape, tuple((0, n) for n in shape), (1.0, 1.0, 1.0), shape))
    return store


def _sampler(store, augmentation, seed=4):
    return PatchSampler(store, ["case0", "case1"], 2, np.random.default_rng(seed),
                        augmentation=Augmentation(augmentation))


def test_a_plan_at_strength_zero_cuts_what_no_augmentation_cuts(tmp_path):
    store = _store(tmp_path)
    plain, curriculum = _sampler(store, "none"), _sampler(store, "nnunet")
    for _ in range(5):
        a, b = plain.sample(PATCH, 2), curriculum.cut(curriculum.plan(PATCH, 2, strength=0.0))
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)
        assert a.origins == b.origins and b.augmentation_strength == 0.0


def test_a_plan_at_full_strength_is_a_plan_as_before(tmp_path):
    store = _store(tmp_path)
    default, full = _sampler(store, "nnunet"), _sampler(store, "nnunet")
    for _ in range(3):
        a, b = default.sample(PATCH, 2), full.cut(full.plan(PATCH, 2, strength=1.0))
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)


def _flips(strength, draws):
    """The share of axes "mirror" flipped at ``strength`` over ``draws`` crops (a ramp image per axis)."""
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in PATCH), indexing="ij")
    image, labels = np.stack([z, y, x]), np.zeros((1,) + PATCH, np.uint8)
    augmentation, rng = Augmentation("mirror", strength), np.random.default_rng(11)
    flips = [[out[axis, 0, 0, 0] > 0 for axis in range(3)]
             for out, _ in (augmentation(image, labels, PATCH, rng) for _ in range(draws))]
    return np.mean(flips)


def test_half_strength_halves_the_mirroring_probability():
    assert _flips(0.5, 600) == pytest.approx(0.25, abs=0.035)  # 3 x 600 draws: sd 0.010
    assert _flips(1.0, 600) == pytest.approx(0.5, abs=0.035)  # sd 0.012


def test_half_strength_scales_nnunet_probabilities():
    """The share of crops no step changed is the product of (1 - s x p) over the pipeline's steps."""
    probabilities = [0.2, 0.2, 0.1, 0.1, 0.15, 0.15, 0.125, 0.1, 0.3, 0.5, 0.5, 0.5]
    image, labels = _inputs(enlarged_crop(PATCH), 5)
    margin = [(c - p) // 2 for c, p in zip(image.shape[1:], PATCH)]
    centre = image[(slice(None),) + tuple(slice(m, m + p) for m, p in zip(margin, PATCH))]
    augmentation, rng = Augmentation("nnunet", 0.5), np.random.default_rng(2)
    unchanged = np.mean([np.array_equal(augmentation(image, labels, PATCH, rng)[0], centre) for _ in range(300)])
    expected = np.prod([1 - 0.5 * p for p in probabilities])  # 0.20 (at full strength 0.03; with s^2 x p 0.47)
    assert unchanged == pytest.approx(expected, abs=0.065)  # sd 0.023


def test_magnitudes_shrink_towards_the_identity():
    half = _intensity_transforms(0.5)["rest"].transforms
    noise, blur, brightness, contrast, low_resolution, inverted_gamma, gamma = (t for t in half[:7])
    assert [t.prob for t in half] == pytest.approx([0.05, 0.05, 0.075, 0.075, 0.0625, 0.05, 0.15, 0.25, 0.25, 0.25])
    assert noise.rand_gaussian_noise.std == pytest.approx(0.05)
    assert blur.rand_smooth.sigma_x == pytest.approx((0.25, 0.5))
    assert brightness.scaler.factors == pytest.approx((-0.125, 0.125))
    assert contrast.scaler.factors == pytest.approx((-0.125, 0.125))
    assert low_resolution.sim_lowres_tfm.zoom_range == pytest.approx((0.75, 1.0))
    assert gamma.adjuster.gamma == inverted_gamma.adjuster.gamma == pytest.approx((0.85, 1.25))


def test_a_strength_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError, match=r"strength lies in \[0, 1\]"):
        Augmentation("nnunet", 1.5)


def test_the_ramp_rises_linearly_between_its_shares_of_the_epochs():
    assert [augmentation_strength(None, e, 10) for e in range(10)] == [1.0] * 10
    assert [augmentation_strength((0.2, 0.6), e, 10) for e in range(10)] == pytest.approx(
        [0, 0, 0, 0.25, 0.5, 0.75, 1, 1, 1, 1])
    assert [augmentation_strength((0.5, 0.5), e, 4) for e in range(4)] == [0.0, 0.0, 1.0, 1.0]  # a step at half
    assert [augmentation_strength((0.0, 1.0), e, 4) for e in range(4)] == [0.0, 0.25, 0.5, 0.75]
    with pytest.raises(ValueError, match="at least one epoch"):
        augmentation_strength((0.0, 1.0), 0, 0)


def test_a_run_with_a_ramp_gives_its_workers_the_strength(phantom_dataset):
    def steps(workers):
        config = quick_config(phantom_dataset, epochs=4, iterations=1)
        config.training.validate_every = 10
        config.data.augmentation, config.data.augmentation_ramp = "nnunet", (0.25, 0.75)
        config.data.loader_workers = workers
        return [e for e in train(config) if isinstance(e, StepDone)]

    in_process, in_a_worker = steps(0), steps(1)
    assert [s.augmentation_strength for s in in_process] == [0, 0, 0.5, 1]
    assert [s.augmentation_strength for s in in_a_worker] == [s.augmentation_strength for s in in_process]
    assert [s.crop_origins for s in in_a_worker] == [s.crop_origins for s in in_process]
    assert [s.loss for s in in_a_worker] == pytest.approx([s.loss for s in in_process], rel=1e-5)

