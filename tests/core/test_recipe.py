"""The recipe a run trains with: chosen from its budget and network, said one line per part, the user's kept."""

import numpy as np
import pytest
import torch

from napari_pgps.config import RunConfig
from napari_pgps.data.fingerprint import CaseFingerprint, Fingerprint
from napari_pgps.engine.recipe import BUDGET_SCHEDULE, explain_recipe, is_budgeted, recipe_schedule
from napari_pgps.engine.resolve import PROFILES, resolve_config

CPU_BUDGET = PROFILES["cpu"].time_budget


def _resolved(config: RunConfig, device: str = "cpu") -> RunConfig:
    fingerprint = Fingerprint(["MRI"], {"case": CaseFingerprint((1.0, 1.0, 1.0), (40, 56, 40), 1.0)},
                              [np.linspace(0, 1, 100, dtype=np.float32)])
    return resolve_config(config, labels={0: "background", 1: "a", 2: "b"}, channels=["MRI"],
                          fingerprint=fingerprint, device=torch.device(device))


def _lines(config: RunConfig) -> dict[str, str]:
    resolved = _resolved(config)
    return {c.part: c.line() for c in explain_recipe(config, resolved, "cpu", CPU_BUDGET)}


def test_the_default_cpu_run_fills_its_budget_with_pgps_efficiency():
    resolved = _resolved(RunConfig())
    assert resolved.curriculum.schedule == BUDGET_SCHEDULE == "pgps-efficiency"
    assert resolved.training.time_budget == CPU_BUDGET and resolved.training.epochs is None  # no cap: the budget
    lines = _lines(RunConfig())
    assert lines["schedule"].startswith("schedule: pgps-efficiency (PGPS Efficiency beat the constant patch")
    assert lines["length"].startswith("length: as many epochs as fit 15 min (the device's default budget")


@pytest.mark.parametrize("edit, schedule", [
    (lambda c: setattr(c.training, "epochs", 10), "constant"),  # set epochs: no budget on the CPU
    (lambda c: setattr(c.model, "architecture", "unetr"), "constant"),  # takes its training patch only
    (lambda c: setattr(c.model, "architecture", "hypernet"), "augment"),  # the network's own
    (lambda c: setattr(c.curriculum, "schedule", "pgps-performance"), "pgps-performance"),  # the user's
])
def test_the_schedule_rule(edit, schedule):
    config = RunConfig()
    edit(config)
    assert recipe_schedule(config, is_budgeted(config, CPU_BUDGET)) == schedule


def test_a_pruned_run_keeps_the_constant_patch_and_says_why():
    config = RunConfig()
    config.model.architecture, config.pruning.enabled = "prm", True
    assert recipe_schedule(config, budgeted=True) == "constant"
    assert "PSP-Seg's pruning" in _lines(config)["schedule"]


def test_a_budget_with_epochs_is_a_cap_and_the_gpu_profile_has_no_budget():
    config = RunConfig()
    config.training.time_budget, config.training.epochs = 300.0, 7
    assert _lines(config)["length"] == "length: at most 7 epochs within 5 min (your configuration)"
    assert not is_budgeted(RunConfig(), PROFILES["cuda"].time_budget)
    assert _resolved(RunConfig(), "cpu").training.epochs is None


def test_what_the_configuration_gives_is_kept_and_said_to_be_the_users():
    config = RunConfig()
    config.data.augmentation, config.training.weight_averaging, config.model.base_channels = "mirror", "ema", 24
    config.data.augmentation_ramp = (0.25, 0.75)
    lines = _lines(config)
    assert lines["augmentation"] == ("augmentation: mirror, from none at 25% of the run to full strength at 75% "
                                     "(your configuration)")
    assert lines["weight averaging"] == "weight averaging: ema of the weights from 50% of the run (your configuration)"
    assert lines["network"].startswith("network: 24 feature maps") and lines["network"].endswith("(your configuration)")
    assert set(lines) == {"schedule", "length", "augmentation", "weight averaging", "network", "final patch"}


def test_a_budget_that_holds_too_few_steps_at_the_final_patch_trains_the_constant_patch():
    from napari_pgps.engine.budget import MIN_STEPS
    from napari_pgps.engine.recipe import schedule_at_pace

    resolved = _resolved(RunConfig())
    chosen = next(c for c in explain_recipe(RunConfig(), resolved, "cpu", CPU_BUDGET) if c.part == "schedule")
    assert schedule_at_pace(chosen, MIN_STEPS) is chosen  # enough steps: PGPS kept
    fallen = schedule_at_pace(chosen, 72.4)  # the left atrium's 15 minutes on the 2-core CPU
    assert fallen.value == "constant" and not fallen.by_user
    assert fallen.line().startswith("schedule: constant (the budget holds 72 steps at the final patch on this machine, "
                                    f"fewer than the {MIN_STEPS} below which PGPS Efficiency lost")
    asked = RunConfig()
    asked.curriculum.schedule = BUDGET_SCHEDULE
    users = next(c for c in explain_recipe(asked, _resolved(asked), "cpu", CPU_BUDGET) if c.part == "schedule")
    assert schedule_at_pace(users, 10) is users  # the user's PGPS is trained as asked
    pruned = RunConfig()
    pruned.model.architecture, pruned.pruning.enabled = "prm", True
    own = next(c for c in explain_recipe(pruned, _resolved(pruned), "cpu", CPU_BUDGET) if c.part == "schedule")
    assert schedule_at_pace(own, 10) is own  # another rule's schedule


@pytest.mark.parametrize("spacing, coarser", [
    ((0.625, 0.625, 0.625), (1.25, 1.25, 1.25)),  # isotropic: all three
    ((2.5, 0.8, 0.8), (2.5, 1.6, 1.6)),  # anisotropic: the fine axes first, as nnU-Net's low resolution
    ((1.0, 1.0, 1.5), (2.0, 2.0, 3.0)),  # within 2x of each other: all three
])
def test_one_level_coarser(spacing, coarser):
    from napari_pgps.engine.recipe import coarser_spacing

    assert coarser_spacing(spacing) == pytest.approx(coarser)


def _left_atrium(config: RunConfig) -> RunConfig:
    """``config`` resolved for cases like the left atrium's: 88 x 142 x 192 voxels of 0.625 mm (its median)."""
    cases = {f"la_{i:03d}": CaseFingerprint((0.625, 0.625, 0.625), (88, 142, 192), 1.0) for i in range(5)}
    fingerprint = Fingerprint(["MRI"], cases, [np.linspace(0, 1, 100, dtype=np.float32)])
    return resolve_config(config, labels={0: "background", 1: "left atrium"}, channels=["MRI"],
                          fingerprint=fingerprint, device=torch.device("cpu"))


def test_a_budget_of_few_steps_at_a_patch_that_leaves_the_case_out_trains_one_level_coarser():
    from napari_pgps.engine.recipe import COARSE_SPACING_STEPS, spacing_at_pace, spacing_without_timing

    asked = RunConfig()
    resolved = _left_atrium(asked)
    assert resolved.model.patch_size == (96, 96, 96)
    median = (88, 142, 192)
    assert spacing_without_timing(asked, resolved, median, budgeted=True) is None  # the step is to be timed
    slow, coarser = spacing_at_pace(resolved, median, step_seconds=11.0)  # a 96^3 step on the 2-core AVX2 CPU
    assert slow.value == "1.25 x 1.25 x 1.25 mm" and coarser == (1.25, 1.25, 1.25) and not slow.by_user
    assert slow.line().startswith("spacing: 1.25 x 1.25 x 1.25 mm (the budget holds at most 82 steps at the data's "
                                  "0.625 x 0.625 x 0.625 mm final patch 96x96x96 (11.0 s a step timed on this machine), "
                                  f"which covers 34% of the median case, fewer than {COARSE_SPACING_STEPS}:")
    fast, kept = spacing_at_pace(resolved, median, step_seconds=900 / COARSE_SPACING_STEPS)
    assert fast.value == "0.625 x 0.625 x 0.625 mm" and kept is None and "train at full resolution" in fast.line()


@pytest.mark.parametrize("edit, reason", [
    (lambda c: setattr(c.model, "spacing", (1.0, 1.0, 1.0)), "your configuration"),
    (lambda c: setattr(c.training, "epochs", 10), "a run of set epochs is not coarsened"),
    (lambda c: setattr(c.model, "patch_size", (64, 64, 64)), "a run given its patch is not coarsened"),
    (lambda c: setattr(c.preprocessing, "resample", False), "the cases' own: resampling is off"),
])
def test_the_spacing_is_kept_without_timing_a_step(edit, reason):
    from napari_pgps.engine.recipe import spacing_without_timing

    asked = RunConfig()
    edit(asked)
    resolved = _left_atrium(asked)
    choice = spacing_without_timing(asked, resolved, (88, 142, 192), is_budgeted(asked, CPU_BUDGET))
    assert choice is not None and reason in choice.line()
    covered = spacing_without_timing(RunConfig(), _resolved(RunConfig()), (40, 56, 40), budgeted=True)
    assert covered.line() == ("spacing: 1 x 1 x 1 mm (the data's (nnU-Net's rule): the final patch covers the median "
                              "case)")


def test_a_budget_that_holds_many_steps_at_the_final_patch_ramps_nnunets_augmentation_in():
    from napari_pgps.engine.recipe import LONG_RUN_RAMP, LONG_RUN_STEPS, augmentation_at_pace

    def augmentation(asked: RunConfig, device: str = "cpu"):
        resolved = _resolved(asked, device)
        choices = explain_recipe(asked, resolved, device, PROFILES[device].time_budget)
        return next(c for c in choices if c.part == "augmentation")

    none = augmentation(RunConfig())
    assert none.value == "none" and not none.by_user
    assert augmentation_at_pace(none, LONG_RUN_STEPS - 1) == (none, None)  # a shorter run keeps plain crops
    ramped, ramp = augmentation_at_pace(none, 9300)  # the hippocampus's 120 minutes on the 2-core CPU
    assert ramp == LONG_RUN_RAMP == (0.25, 0.75) and not ramped.by_user
    assert ramped.line().startswith("augmentation: nnunet, from none at 25% of the run to full strength at 75% (the "
                                    f"budget holds 9300 steps at the final patch on this machine, at least "
                                    f"{LONG_RUN_STEPS}:")
    users = RunConfig()
    users.data.augmentation = "none"
    assert augmentation_at_pace(augmentation(users), 10 ** 6)[1] is None  # the user's none is trained as asked
    assert augmentation_at_pace(augmentation(RunConfig(), "cuda"), 10 ** 6)[1] is None  # the GPU profile's own
