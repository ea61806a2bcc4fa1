"""The schedules against the rules of methods.md section 1 and 4."""

import json
import math

import numpy as np
import pytest

from napari_pgps.config import RunConfig, ScheduleOptions
from napari_pgps.curriculum import RANDOM_PATCH_SCHEDULES, SCHEDULES, build_schedule, crops_per_case, growth_sizes, schedule_for
from napari_pgps.errors import InputError

CASES = [((40, 56, 40), (3, 3, 3), 28, 2), ((128, 128, 128), (5, 5, 5), 1000, 2), ((20, 192, 224), (2, 5, 5), 250, 4), ((16, 64, 64), (1, 3, 3), 40, 2)]


def _differs_in_one_axis_by_its_step(a, b, poolings, final):
    changed = [i for i in range(3) if a[i] != b[i]]
    return len(changed) == 1 and b[changed[0]] - a[changed[0]] == min(2 ** poolings[changed[0]], final[changed[0]] - a[changed[0]])


@pytest.mark.parametrize("final, poolings, epochs, batch", CASES)
@pytest.mark.parametrize("mode", ["efficiency", "performance"])
def test_pgps_rules(final, poolings, epochs, batch, mode):
    schedule = build_schedule(f"pgps-{mode}", final, poolings, epochs, batch)
    stages = schedule.stages
    assert stages[-1].patch == final and stages[-1].batch == batch
    assert sum(s.epochs for s in stages) == epochs
    for stage in stages:
        assert all(p % 2**q == 0 and 0 < p <= f for p, q, f in zip(stage.patch, poolings, final)), stage
        bottleneck = [p // 2**q for p, q in zip(stage.patch, poolings)]
        assert math.prod(bottleneck) >= 2  # instance norm needs more than one voxel
        expected = batch if mode == "efficiency" else max(batch, batch * math.prod(final) // math.prod(stage.patch))
        assert stage.batch == expected
    for a, b in zip(stages, stages[1:]):
        assert _differs_in_one_axis_by_its_step(a.patch, b.patch, poolings, final)
    count = len(stages)
    assert all(s.epochs == epochs // count for s in stages[:-1])


def test_journal_growth_picks_the_smallest_next_size_with_ties_to_the_lowest_axis():
    sizes = growth_sizes((128, 128, 128), (5, 5, 5), ScheduleOptions(single_voxel_bottleneck=True))
    assert sizes[:4] == [(32, 32, 32), (64, 32, 32), (64, 64, 32), (64, 64, 64)]
    assert len(sizes) == 3 * math.ceil(96 / 32) + 1
    anisotropic = growth_sizes((16, 64, 64), (1, 3, 3), ScheduleOptions(single_voxel_bottleneck=True))
    assert anisotropic[:3] == [(2, 8, 8), (4, 8, 8), (6, 8, 8)]  # Z's step of 2 keeps the next size smallest


def test_paper_worked_example():
    options = ScheduleOptions(single_voxel_bottleneck=True)
    performance = build_schedule("pgps-performance", (128,) * 3, (5,) * 3, 1000, 2, options)
    assert [s.batch for s in performance.stages] == [128, 64, 32, 16, 10, 7, 4, 3, 2, 2]
    assert [s.epochs for s in performance.stages] == [100] * 10
    assert performance.relative_voxels() == pytest.approx(0.94, abs=0.01)
    efficiency = build_schedule("pgps-efficiency", (128,) * 3, (5,) * 3, 1000, 2, options)
    assert efficiency.relative_voxels() == pytest.approx(0.34, abs=0.01)


def test_voxels_is_the_default_performance_batch_and_unchanged():
    assert ScheduleOptions().performance_batch == "voxels" and RunConfig().curriculum.options.performance_batch == "voxels"
    for growth in ("journal", "miccai"):
        default = build_schedule("pgps-performance", (128,) * 3, (5,) * 3, 1000, 2, ScheduleOptions(growth=growth))
        voxels_options = ScheduleOptions(growth=growth, performance_batch="voxels")
        voxels = build_schedule("pgps-performance", (128,) * 3, (5,) * 3, 1000, 2, voxels_options)
        assert default == voxels
        assert [s.batch for s in default.stages] == [max(2, 2 * 128**3 // math.prod(s.patch)) for s in default.stages]


def test_pgps_plus_batches_of_the_miccai_worked_example():
    """PGPS+ (compai-lab/2024-miccai-fischer, training/nnUNetTrainer/variants/sampling/nnUNetTrainer_PGPS+.py,
    ``plan_batch_size``): the last stage takes 2; going backwards each stage takes int(voxel ratio to the next
    stage x the next stage's batch). Final 128^3, 5 poolings, MICCAI growth from 64x32x32 (32-voxel steps, Y, X, Z, ...):
    128^3 -> 2; 128x128x96 -> int(4/3 x 2) = 2; 128x96x96 -> 2; 96^3 -> 2; 96x96x64 -> int(3/2 x 2) = 3;
    96x64x64 -> int(3/2 x 3) = 4; 64^3 -> int(3/2 x 4) = 6; 64x64x32 -> 2 x 6 = 12; 64x32x32 -> 2 x 12 = 24."""
    options = ScheduleOptions(growth="miccai", performance_batch="miccai")
    schedule = build_schedule("pgps-performance", (128,) * 3, (5,) * 3, 1000, 2, options)
    assert [s.patch for s in schedule.stages] == [(64, 32, 32), (64, 64, 32), (64, 64, 64), (96, 64, 64), (96, 96, 64),
                                                  (96, 96, 96), (128, 96, 96), (128, 128, 96), (128, 128, 128)]
    assert [s.batch for s in schedule.stages] == [24, 12, 6, 4, 3, 2, 2, 2, 2]
    assert [s.epochs for s in schedule.stages] == [111] * 8 + [112]
    # the same rule on the journal's growth (the journal worked example's sizes, whose voxels rule gives 128, 64, ...)
    journal = ScheduleOptions(single_voxel_bottleneck=True, performance_batch="miccai")
    schedule = build_schedule("pgps-performance", (128,) * 3, (5,) * 3, 1000, 2, journal)
    assert [s.batch for s in schedule.stages] == [48, 24, 12, 6, 4, 3, 2, 2, 2, 2]
    # the batch is worked out on every size before fewer epochs thin them, then capped
    thinned = build_schedule("pgps-performance", (128,) * 3, (5,) * 3, 3, 2, options)
    assert [(s.patch, s.batch) for s in thinned.stages] == [((64, 32, 32), 24), ((96, 96, 64), 3), ((128, 128, 128), 2)]
    capped_options = ScheduleOptions(growth="miccai", performance_batch="miccai", max_batch=8)
    capped = build_schedule("pgps-performance", (128,) * 3, (5,) * 3, 1000, 2, capped_options)
    assert [s.batch for s in capped.stages] == [8, 8, 6, 4, 3, 2, 2, 2, 2]
    efficiency = build_schedule("pgps-efficiency", (128,) * 3, (5,) * 3, 1000, 2, options)
    assert all(s.batch == 2 for s in efficiency.stages)


def test_performance_batch_from_the_configuration_and_unknown_rules():
    config = RunConfig.from_dict({"curriculum": {"growth": "miccai", "performance_batch": "miccai"}})
    schedule = build_schedule("pgps-performance", (128,) * 3, (5,) * 3, 1000, 2, config.curriculum.options)
    assert schedule.stages[0].batch == 24
    config.curriculum.options.rpss_mode = "performance"
    rpss = build_schedule("rpss", (128,) * 3, (5,) * 3, 1000, 2, config.curriculum.options)
    assert [c.batch for c in rpss.choices] == [24, 12, 6, 4, 3, 2, 2, 2, 2]
    for name in ("pgps-performance", "constant"):
        with pytest.raises(InputError, match="Performance batch rule 'journal'; choose one of voxels, miccai"):
            build_schedule(name, (128,) * 3, (5,) * 3, 1000, 2, ScheduleOptions(performance_batch="journal"))


def test_miccai_round_robin_starts_at_2x1x1_and_grows_axis_1_first():
    sizes = growth_sizes((64, 64, 64), (4, 4, 4), ScheduleOptions(growth="miccai"))
    assert sizes[:5] == [(32, 16, 16), (32, 32, 16), (32, 32, 32), (48, 32, 32), (48, 48, 32)]
    assert sizes[-1] == (64, 64, 64)


def test_start_later_stop_earlier_and_batch_cap():
    later = build_schedule("pgps-efficiency", (128,) * 3, (5,) * 3, 100, 2, ScheduleOptions(start_fraction=0.25))
    assert math.prod(later.stages[0].patch) >= 0.25 * 128**3
    earlier = build_schedule("pgps-efficiency", (128,) * 3, (5,) * 3, 100, 2, ScheduleOptions(growth_fraction=0.5))
    assert sum(s.epochs for s in earlier.stages[:-1]) <= 50 and earlier.stages[-1].epochs >= 50
    assert earlier.epochs == 100
    capped = build_schedule("pgps-performance", (128,) * 3, (5,) * 3, 100, 2, ScheduleOptions(max_batch=8))
    assert max(s.batch for s in capped.stages) == 8


def test_constant_rpss_and_augment():
    constant = build_schedule("constant", (40, 56, 40), (3, 3, 3), 10, 2)
    assert [(s.patch, s.batch, s.epochs) for s in constant.stages] == [((40, 56, 40), 2, 10)]
    assert constant.relative_voxels() == 1.0
    rng = np.random.default_rng(0)
    rpss = build_schedule("rpss", (40, 56, 40), (3, 3, 3), 10, 2)
    draws = {rpss.draw(rpss.stages[0], rng)[0] for _ in range(300)}
    assert draws == {c.patch for c in rpss.choices} and len(draws) == 14
    augment = build_schedule("augment", (40, 56, 40), (3, 3, 3), 10, 2, ScheduleOptions(augment_range=(0.5, 1.5)))
    draws = [augment.draw(augment.stages[0], rng)[0] for _ in range(500)]
    for axis, (final, sizes) in enumerate(zip((40, 56, 40), augment.axis_sizes)):
        seen = {d[axis] for d in draws}
        assert seen == set(sizes) and all(s % 8 == 0 and 0.5 * final <= s <= 1.5 * final for s in seen)


def test_augment_final_share_and_performance_batch():
    rng = np.random.default_rng(1)
    options = ScheduleOptions(augment_final_share=0.4, max_batch=24)
    augment = build_schedule("augment", (40, 56, 40), (3, 3, 3), 10, 2, options)
    draws = [augment.draw(augment.stages[0], rng) for _ in range(4000)]
    at_final = [d for d in draws if d[0] == (40, 56, 40)]
    # 40 % forced, plus the 1-in-324 uniform draw of the final size
    assert 0.37 < len(at_final) / len(draws) < 0.43 and all(batch == 2 for _, batch in at_final)
    for patch, batch in draws:
        kept = 2 * math.prod((40, 56, 40)) // math.prod(patch)
        assert batch == max(2, min(kept, 24))
    assert max(batch for _, batch in draws) == 24 and (16, 16, 16) in {p for p, _ in draws}
    # the expected voxels per step: close to the mean of the draws
    mean_voxels = np.mean([batch * math.prod(patch) for patch, batch in draws]) / (2 * math.prod((40, 56, 40)))
    assert augment.relative_voxels() == pytest.approx(mean_voxels, rel=0.05)
    # the paper's rule is unchanged: batch 2 for every size, and the same draws as before the options existed
    paper = ScheduleOptions(augment_final_share=0.0, augment_mode="efficiency")
    plain = build_schedule("augment", (40, 56, 40), (3, 3, 3), 10, 2, paper)
    plain_rng = np.random.default_rng(5)
    first = [plain.draw(plain.stages[0], plain_rng) for _ in range(20)]
    sizes = plain.axis_sizes
    expected_rng = np.random.default_rng(5)
    expected = [tuple(int(s[int(expected_rng.integers(len(s)))]) for s in sizes) for _ in range(20)]
    assert first == [(p, 2) for p in expected]
    with pytest.raises(InputError, match="final share"):
        build_schedule("augment", (40, 56, 40), (3, 3, 3), 10, 2, ScheduleOptions(augment_final_share=1.0))
    with pytest.raises(InputError, match="augment mode"):
        build_schedule("augment", (40, 56, 40), (3, 3, 3), 10, 2, ScheduleOptions(augment_mode="fast"))


def test_fewer_epochs_than_sizes_spread_the_growth():
    schedule = build_schedule("pgps-efficiency", (40, 56, 40), (3, 3, 3), 5, 2)
    assert [s.epochs for s in schedule.stages] == [1] * 5
    assert schedule.stages[0].patch == (16, 8, 8) and schedule.stages[-1].patch == (40, 56, 40)
    voxels = [math.prod(s.patch) for s in schedule.stages]
    assert voxels == sorted(voxels)


def test_bad_schedule_inputs():
    with pytest.raises(InputError, match="unknown schedule"):
        build_schedule("grow", (40, 56, 40), (3, 3, 3), 10, 2)
    with pytest.raises(InputError, match="not a multiple"):
        build_schedule("pgps-efficiency", (36, 56, 40), (3, 3, 3), 10, 2)
    with pytest.raises(InputError, match="growth rule"):
        build_schedule("pgps-efficiency", (40, 56, 40), (3, 3, 3), 10, 2, ScheduleOptions(growth="spiral"))


def test_crops_per_case():
    assert crops_per_case(2, 2) == 1 and crops_per_case(175, 2) == 88 and crops_per_case(3, 2) == 2


def test_schedule_command_json(capsys):
    from napari_pgps.cli import main

    common = ["schedule", "--final-patch", "128", "128", "128", "--poolings", "5", "5", "5", "--epochs", "1000",
              "--batch-size", "2", "--mode", "pgps-performance", "--json"]
    assert main([*common, "--single-voxel-bottleneck"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"stages", "relative_voxels"}
    assert result["stages"][0] == {"patch": [32, 32, 32], "batch": 128, "epochs": 100}
    assert result["relative_voxels"] == pytest.approx(0.936, abs=1e-3)
    assert main([*common, "--growth", "miccai", "--performance-batch", "miccai"]) == 0
    assert [s["batch"] for s in json.loads(capsys.readouterr().out)["stages"]] == [24, 12, 6, 4, 3, 2, 2, 2, 2]
    assert main(["schedule", "--final-patch", "30", "32", "32", "--poolings", "3", "3", "3", "--epochs", "10",
                 "--batch-size", "2", "--mode", "constant"]) == 2
    assert "Try 32 32 32" in capsys.readouterr().err


def _run_config(architecture, patch, schedule, epochs=100, batch=2, strides=None, **options):
    return RunConfig.from_dict({"model": {"architecture": architecture, "patch_size": list(patch), "strides": strides,
                                          "kernel_sizes": None if strides is None else [[3, 3, 3]] * len(strides)},
                                "curriculum": {"schedule": schedule, "options": options},
                                "training": {"epochs": epochs, "batch_size": batch}})


def test_schedule_for_takes_the_patch_grid_of_the_registry():
    # a planned U-Net: its strides' poolings (here 3, 3, 3: steps of 8)
    strides = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    dynunet = _run_config("dynunet", (40, 56, 40), "pgps-performance", epochs=28, strides=strides, growth="miccai")
    assert schedule_for(dynunet) == build_schedule("pgps-performance", (40, 56, 40), (3, 3, 3), 28, 2,
                                                   ScheduleOptions(growth="miccai"))
    # UNETR's fixed divisor 16 (4 poolings), whatever a U-Net would plan for the patch
    unetr = schedule_for(_run_config("unetr", (128, 128, 128), "pgps-efficiency"))
    assert unetr == build_schedule("pgps-efficiency", (128,) * 3, (4, 4, 4), 100, 2)
    assert unetr.stages[0].patch == (32, 16, 16)
    # SwinUNETR's divisor 32 and its minimum of 64 voxels per axis
    swin = schedule_for(_run_config("swinunetr", (128, 128, 128), "rpss"))
    assert swin == build_schedule("rpss", (128,) * 3, (5, 5, 5), 100, 2, minimum_patch=(64, 64, 64))
    assert min(min(c.patch) for c in swin.choices) == 64
    augment = schedule_for(_run_config("swinunetr", (128, 128, 128), "augment"))
    assert min(min(sizes) for sizes in augment.axis_sizes) == 64
    # the network's own schedule when the configuration names none (the hypernetwork: augment)
    assert schedule_for(_run_config("hypernet", (40, 56, 40), None, strides=strides)).name == "augment"


def test_schedule_for_epochs_leaves_the_config_alone_and_checks_the_patch():
    config = _run_config("unetr", (64, 64, 64), "pgps-efficiency", epochs=100)
    assert schedule_for(config, epochs=7).epochs == 7 and schedule_for(config).epochs == 100
    assert config.training.epochs == 100
    with pytest.raises(InputError, match=r"final patch 48 x 48 x 40 cannot be taken.*multiple of 16 x 16 x 16"):
        schedule_for(_run_config("unetr", (48, 48, 40), "constant"))
    with pytest.raises(InputError, match="swinunetr needs a patch of at least 64"):
        schedule_for(_run_config("swinunetr", (32, 64, 64), "constant"))


def test_a_schedule_says_how_it_draws():
    draws = {name: build_schedule(name, (40, 56, 40), (3, 3, 3), 10, 2).draws for name in SCHEDULES}
    assert draws == {"constant": "stages", "pgps-efficiency": "stages", "pgps-performance": "stages",
                     "rpss": "choices", "augment": "axis_sizes"}
    assert {name for name, how in draws.items() if how != "stages"} == set(RANDOM_PATCH_SCHEDULES)
