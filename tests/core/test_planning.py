import math

import pytest

from napari_pgps.errors import InputError
from napari_pgps.models import UNetPlan, check_patch_size, plan_patch_size, plan_unet


def test_hippocampus_plan_matches_nnunet():
    patch, plan = plan_patch_size((36, 50, 35), (1.0, 1.0, 1.0), 128**3)
    assert patch == (40, 56, 40)
    assert plan.poolings == (3, 3, 3)
    assert plan.kernel_sizes == [(3, 3, 3)] * 4


def test_anisotropic_spacing_waits_to_pool_the_thick_axis():
    plan = plan_unet((16, 160, 160), (5.0, 0.8, 0.8))
    assert plan.strides[1] == (1, 2, 2)
    assert plan.kernel_sizes[0] == (1, 3, 3)
    assert plan.poolings[0] < plan.poolings[1] == plan.poolings[2]
    assert plan.kernel_sizes[-1][0] == 3


def test_planned_patch_is_taken_and_fits_the_budget():
    patch, plan = plan_patch_size((300, 512, 512), (1.0, 0.7, 0.7), 96**3)
    assert math.prod(patch) <= 96**3
    check_patch_size(patch, plan.divisor)
    assert all(p % d == 0 for p, d in zip(patch, plan.divisor))


def test_a_patch_the_network_cannot_take_gets_a_suggestion():
    with pytest.raises(InputError, match=r"multiple of 8 x 8 x 8.*Try 40 56 40"):
        check_patch_size((37, 50, 40), (8, 8, 8))
    with pytest.raises(InputError, match="three positive sizes"):
        check_patch_size((0, 8, 8), (8, 8, 8))


@pytest.mark.parametrize("poolings", [(5, 5, 5), (2, 5, 5), (1, 3, 3), (0, 0, 0)])
def test_a_plan_with_given_poolings(poolings):
    plan = UNetPlan.with_poolings(poolings)
    assert plan.poolings == poolings and plan.divisor == tuple(2**p for p in poolings)
    assert plan.strides[0] == (1, 1, 1) and len(plan.kernel_sizes) == len(plan.strides)
