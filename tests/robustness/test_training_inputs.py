"""Training crops at a case's border and nnU-Net's foreground rule under DDP (issue 31's probe, generated here).

The probe: with ``augmentation: nnunet`` the enlarged crop was clipped inside the case, so of 2,000 crops forced
onto foreground lying only at the border, none held it; and a global batch of 2 on two ranks forced no crop.
"""

import numpy as np
import pytest

from napari_pgps.data import PatchSampler
from napari_pgps.data.augmentation import Augmentation
from napari_pgps.data.preprocessing import CaseGeometry
from napari_pgps.data.store import PreprocessedDataset
from napari_pgps.engine.distributed import DistributedContext, batch_share

SHAPE = (20, 24, 24)
PATCH = (8, 8, 8)


def _border_sampler(tmp_path, probability, augmentation="nnunet", seed=0):
    """A sampler over one noise case whose only foreground is its first slice (Z = 0)."""
    store = PreprocessedDataset(tmp_path / "store")
    labels = np.zeros(SHAPE, np.uint8)
    labels[0] = 1
    image = np.random.default_rng(1).normal(size=(1,) + SHAPE).astype(np.float32)
    box = tuple((0, n) for n in SHAPE)
    store.write("border", image, labels, CaseGeometry(SHAPE, "RAS", SHAPE, box, (1.0, 1.0, 1.0), SHAPE))
    return PatchSampler(store, ["border"], 2, np.random.default_rng(seed), foreground_probability=probability,
                        augmentation=Augmentation(augmentation))


def test_forced_crops_hold_foreground_that_lies_only_at_the_border(tmp_path):
    sampler = _border_sampler(tmp_path, 1.0)
    assert Augmentation("nnunet").crop_size(PATCH) > PATCH  # the enlarged crop reaches past the border
    batches = [sampler.sample(PATCH, 2) for _ in range(20)]
    held = sum(bool((labels > 0).any()) for batch in batches for labels in batch.labels)
    assert held >= 30  # of 40; rotation may turn the slice out of a few patches (before the fix: 0)
    assert all(origin[0] == 0 for batch in batches for origin in batch.origins)  # the patch starts at the slice


@pytest.fixture
def cut_crops(monkeypatch):
    """The crops as cut, before augmentation (which is skipped): a list of (image, labels), (C, Z, Y, X) each."""
    seen = []
    monkeypatch.setattr(Augmentation, "__call__", lambda self, image, labels, patch, rng: seen.append(
        (image, labels)) or (image, labels))
    return seen


@pytest.mark.parametrize("augmentation", ["nnunet", "none"])
def test_random_crops_reach_every_voxel_and_the_patch_stays_inside(tmp_path, augmentation, cut_crops):
    sampler = _border_sampler(tmp_path, 0.0, augmentation)
    origins = np.array([o for _ in range(150) for o in sampler.sample(PATCH, 2).origins])
    np.testing.assert_array_equal(origins.min(axis=0), (0, 0, 0))
    np.testing.assert_array_equal(origins.max(axis=0), np.array(SHAPE) - PATCH)


def test_outside_the_case_the_enlarged_crop_is_padded_with_zero_and_background(tmp_path, cut_crops):
    _border_sampler(tmp_path, 1.0).sample(PATCH, 1)
    image, labels = cut_crops[0]
    margin = (Augmentation("nnunet").crop_size(PATCH)[0] - PATCH[0]) // 2
    assert margin > 0 and (image[:, :margin] == 0).all() and (labels[:, :margin] == 0).all()
    assert (labels[:, margin] == 1).any()  # the case's first slice, foreground


def _plans(tmp_path, global_batch, world, oversampling="batch"):
    sampler = _border_sampler(tmp_path, 0.33, "none")
    sampler.oversampling = oversampling
    return [sampler.plan(PATCH, global_batch, share=batch_share(global_batch, DistributedContext(rank, world)))
            for rank in range(world)]


def test_ddp_ranks_force_the_share_of_the_global_batch_onto_foreground(tmp_path):
    ranks = _plans(tmp_path, 2, 2)
    assert [plan.foreground for plan in ranks] == [(False,), (True,)]  # one of two, as in one process
    ranks = _plans(tmp_path, 5, 2)  # round(5 x 0.33) = 2 forced: the global batch's last two, both on rank 1
    assert [plan.foreground for plan in ranks] == [(False, False, False), (True, True)]
    assert [len(plan.case_indices) for plan in _plans(tmp_path, 5, 2, "crop")] == [3, 2]
