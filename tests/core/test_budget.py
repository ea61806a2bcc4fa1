"""Training to a time budget: durations, the planner, and a planned run on phantoms."""

from __future__ import annotations

import math
import time
import types

import pytest
import torch

from helpers import quick_config
from napari_pgps.config import ScheduleOptions
from napari_pgps.engine import fold
from napari_pgps.engine.budget import RunCost, parse_duration, plan_epochs
from napari_pgps.errors import InputError
from napari_pgps.events import Finished, RunStarted, StepDone


@pytest.mark.parametrize("text, seconds", [("15m", 900), ("1h30m", 5400), ("90s", 90), ("2.5", 150), ("1h", 3600),
                                           ("2 min", 120)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-5m", "0", "5 parsecs"])
def test_bad_durations_are_refused(text):
    with pytest.raises(InputError):
        parse_duration(text)


def test_the_planner_takes_the_most_epochs_that_fit_steps_and_validations():
    # two stages of E/2 epochs each, 0.1 s and 0.3 s a step, 10 steps an epoch; a validation takes 2 s, every 5 epochs
    cost = RunCost(lambda e: [(e // 2, 0.1), (e - e // 2, 0.3)], validation_seconds=2.0, validate_every=5)
    assert cost(10, 10) == pytest.approx(5 * 1 + 5 * 3 + 2 * 2)
    plan = plan_epochs(60.0, cost, 10)
    assert cost(plan.epochs, 10) <= 60.0 < cost(plan.epochs + 1, 10)
    small = plan_epochs(2.5, cost, 10)  # not even one epoch of 10 steps: fewer steps
    assert small.epochs == 1 and small.iterations_per_epoch == 1


def test_a_budget_plans_the_run_to_end_within_it(phantom_dataset):
    from napari_pgps import train

    config = quick_config(phantom_dataset, epochs=None, iterations=5)
    config.training.time_budget = 25.0
    config.curriculum.schedule = "pgps-performance"
    started_at, started, steps, events = None, None, [], []
    for event in train(config):
        events.append(event)
        if isinstance(event, RunStarted):
            started, started_at = event, time.perf_counter()
        elif isinstance(event, StepDone):
            steps.append(event)
        elif isinstance(event, Finished):
            took = time.perf_counter() - started_at
    assert started.time_budget == 25.0 and started.expected_seconds <= 25.0
    final_plan = fold(events).started  # re-planned after the first epoch when its steps' time was off
    assert final_plan.expected_seconds <= 25.0
    planned = final_plan.epochs * final_plan.iterations_per_epoch
    assert 0 < len(steps) <= planned  # a slower machine than measured loses the last epochs
    if started.epochs >= 2:  # on a loaded machine only one epoch may fit
        assert len({s.patch for s in steps}) >= 2  # the stages are kept
    assert took <= 25.0 * 1.3


def test_the_bench_at_equal_time_plans_every_schedule_to_the_budget(phantom_dataset, tmp_path):
    from napari_pgps.tasks.bench import BenchSettings, run_bench

    settings = BenchSettings(data=str(phantom_dataset), schedules=["constant", "pgps-efficiency"], seeds=1,
                             profile="quick", iterations_per_epoch=2, device="cpu", time_budget=8.0)
    results = run_bench(settings, tmp_path / "bench", progress=lambda line: None)
    assert {r["schedule"] for r in results["runs"]} == {"constant", "pgps-efficiency"}
    assert all(r["time_budget"] == 8.0 and r["planned_epochs"] >= 1 for r in results["runs"])
    report = (tmp_path / "bench" / "report.md").read_text()
    assert "equal wall time" in report and "pgps-efficiency** at equal wall time" in report
    assert "epochs completed/planned" in report and all(r["wall_seconds"] > 0 for r in results["runs"])
    assert (tmp_path / "bench" / "dice_vs_time.png").is_file()


def test_the_timed_steps_change_no_weight_and_no_draw(phantom_dataset):
    """The planner's probe steps (forward, backward, clipping, a zero-learning-rate optimiser step) leave the run
    exactly where it would have started: the first real step's loss is the same with and without a budget."""
    from napari_pgps import train

    def first_loss(budget):
        config = quick_config(phantom_dataset, epochs=2, iterations=2)
        config.curriculum.schedule = "constant"  # a budget's recipe would choose PGPS Efficiency
        config.training.time_budget = budget
        for event in train(config):
            if isinstance(event, StepDone):
                return event.loss

    assert first_loss(600.0) == first_loss(None)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN is not in this torch build")
def test_the_plan_times_validation_windows_on_the_kernels_validation_uses(phantom_dataset, monkeypatch):
    """Validation segments on the CPU through oneDNN (``cpu_convolutions``); the plan's timed windows must too, or
    a budget plans validations at the speed of kernels they do not run on."""
    from napari_pgps import train

    calls = []
    original = torch.mkldnn_convolution
    monkeypatch.setattr(torch, "mkldnn_convolution", lambda *a: calls.append(1) or original(*a))
    config = quick_config(phantom_dataset, epochs=2, iterations=2)
    config.training.time_budget = 600.0
    events = train(config)
    for event in events:
        if isinstance(event, RunStarted):  # planned: its timed steps and windows have run, no training step yet
            break
    events.close()
    assert calls  # the timed windows went through oneDNN, as validation's windows do


def test_each_fixed_stage_is_planned_at_its_own_measured_cost():
    from napari_pgps.engine.budget import measure_step_cost

    costs = {((8, 8, 8), 16): 0.5, ((16, 16, 16), 2): 0.2, ((32, 32, 32), 2): 1.0}  # many small crops cost more

    def step(patch, batch):
        time.sleep(costs[(patch, batch)] / 50)

    cost = measure_step_cost(step, list(costs))
    assert cost.at((8, 8, 8), 16) == pytest.approx(0.01, rel=0.5)  # its own time, not the line's
    assert cost.at((8, 8, 8), 16) > cost.at((16, 16, 16), 2)
    assert cost.at((24, 24, 24), 2) == pytest.approx(cost.seconds(2 * 24**3))  # unprobed: the fitted line


def test_the_bench_names_pdl_runs_by_their_schedule_plus_pdl(phantom_dataset, tmp_path):
    from napari_pgps.tasks.bench import BenchSettings, bench_config, run_bench

    settings = BenchSettings(data=str(phantom_dataset), schedules=["constant", "constant+pdl"], seeds=1, profile="quick")
    config = bench_config(settings, "constant+pdl", 0)
    assert config.curriculum.schedule == "constant" and config.curriculum.pdl.enabled
    assert not bench_config(settings, "constant", 0).curriculum.pdl.enabled
    settings.schedules = ["constant", "constant+ssl"]
    with pytest.raises(InputError, match="optionally with \\+pdl"):
        run_bench(settings, tmp_path / "bench")


def test_a_plan_timed_on_a_busy_machine_is_made_again_once_its_steps_show_the_pace(phantom_dataset, monkeypatch):
    from napari_pgps import train
    from napari_pgps.engine import trainer
    from napari_pgps.engine.budget import EVIDENCE_SHARE
    from napari_pgps.events import Replanned, StageStarted

    timed = trainer._Run._timed_step

    def busy(self, patch, batch):  # the plan's timed steps look four times slower than the training's
        start = time.perf_counter()
        timed(self, patch, batch)
        time.sleep(3 * (time.perf_counter() - start))

    monkeypatch.setattr(trainer._Run, "_timed_step", busy)
    config = quick_config(phantom_dataset, epochs=None, iterations=4)
    config.curriculum.schedule = "pgps-efficiency"
    config.training.time_budget = 20.0
    started_at = time.perf_counter()
    events = list(train(config))
    took = time.perf_counter() - started_at
    started = next(e for e in events if isinstance(e, RunStarted))
    replanned = [e for e in events if isinstance(e, Replanned)]
    steps = [e for e in events if isinstance(e, StepDone)]
    stages = [e for e in events if isinstance(e, StageStarted)]
    final_voxels = 2 * math.prod(started.final_patch)
    first_evidence = next(s.epoch for s in stages if s.batch * math.prod(s.patch) >= EVIDENCE_SHARE * final_voxels)
    assert replanned and replanned[0].epoch == first_evidence + 1  # not from the small stages' steps
    assert all(r.slowdown < 0.9 for r in replanned)
    assert replanned[-1].epochs > started.epochs  # the time the busy plan left unused is spent
    assert started.epochs * 4 < len(steps) <= replanned[-1].epochs * 4  # a slower epoch than planned may not fit
    assert fold(events).started.epochs == replanned[-1].epochs  # every face shows the last plan
    assert [s.patch for s in stages] == sorted({s.patch for s in steps}, key=math.prod)  # each size once, in order
    assert took <= 20.0 * 1.3


def test_a_long_budget_is_re_planned_when_a_minute_of_it_would_be_left_unused_or_overrun():
    from napari_pgps.engine.budget import replan_margin

    assert replan_margin(5 * 60) == pytest.approx(15.0)  # 5% of short budgets, as measured at 5 and 15 minutes
    assert replan_margin(15 * 60) == pytest.approx(45.0)
    assert replan_margin(45 * 60) == pytest.approx(60.0)  # not 135 s: the 45-minute runs ended up to 116 s early
    assert replan_margin(8 * 3600) == pytest.approx(60.0)  # not 24 minutes of a night


def test_the_stages_left_are_laid_out_again_by_their_proportions():
    from napari_pgps.curriculum import Stage, stages_laid_out_again

    stages = tuple(Stage((8 * (i + 1), 8, 8), 2, e) for i, e in enumerate((7, 7, 7, 12)))

    def epochs(laid):
        return [(s.patch[0], s.epochs) for s in laid]

    assert epochs(stages_laid_out_again(stages, 7, 60)) == [(8, 7), (16, 14), (24, 14), (32, 25)]  # equal stages stay equal
    assert epochs(stages_laid_out_again(stages, 10, 60)) == [(8, 7), (16, 12), (24, 15), (32, 26)]  # the one begun keeps its 3
    assert epochs(stages_laid_out_again(stages, 21, 22)) == [(8, 7), (16, 7), (24, 7), (32, 1)]
    assert epochs(stages_laid_out_again(stages, 14, 15)) == [(8, 7), (16, 7), (32, 1)]  # too few: the final patch stays
    assert epochs(stages_laid_out_again(stages, 3, 5)) == [(8, 3), (16, 1), (32, 1)]
    assert epochs(stages_laid_out_again(stages, 30, 30)) == [(8, 7), (16, 7), (24, 7), (32, 9)]  # the run ends now
    for done in range(0, 34):
        for total in range(done, 80):
            laid = stages_laid_out_again(stages, done, total)
            assert sum(s.epochs for s in laid) == total and all(s.epochs > 0 for s in laid)
            assert [s.patch for s in laid] == sorted(s.patch for s in laid)  # the patch never shrinks
            if total > done:
                assert laid[-1].patch == (32, 8, 8)


def test_a_run_re_planned_up_and_down_keeps_the_stages_left_in_the_schedules_proportions():
    """The 45-minute PGPS run's re-plans (docs/benchmarks.md section 14): 13 growing stages of 6 epochs and the final
    patch's 12, planned again nine times from epoch 43 (stage 7 of 14). Before, each re-plan rounded the shares down
    and gave the final stage the rest: it ended with 1-3 epochs at the middle stages and 20 at the final patch."""
    from napari_pgps.curriculum import Stage, stages_laid_out_again

    stages = tuple(Stage((i + 1, 8, 8), 2, 6) for i in range(13)) + (Stage((14, 8, 8), 2, 12),)
    for done, total in [(43, 69), (44, 73), (46, 76), (47, 78), (48, 79), (49, 76), (50, 74), (55, 72), (63, 73)]:
        stages = stages_laid_out_again(stages, done, total)
        assert sum(s.epochs for s in stages) == total
        growing_left = [s.epochs for s in stages[7:-1]]
        assert max(growing_left) - min(growing_left) <= 4 and min(growing_left) >= 3
        assert stages[-1].epochs <= 2.5 * max(growing_left)  # about the schedule's 2 to 1, not 20 to 1
    assert [s.epochs for s in stages] == [6] * 7 + [4, 3, 3, 4, 4, 4, 9]


def test_a_bench_started_again_keeps_the_runs_it_measured_and_trains_the_new_ones(phantom_dataset, tmp_path, monkeypatch):
    import json

    from napari_pgps.tasks import bench
    from napari_pgps.tasks.bench import BenchSettings, run_bench

    trained = []

    def run_one(config):  # a stand-in training: its Dice tells the runs apart
        trained.append((config["curriculum"]["schedule"], config["training"]["seed"]))
        return {"schedule": config["curriculum"]["schedule"], "seed": config["training"]["seed"], "device": "CPU",
                "mean_dice": 0.5 + 0.1 * len(trained), "dice_per_label": {"a": 0.5}, "training_seconds": 1.0,
                "wall_seconds": 1.0, "curve": [], "peak_memory_mib": 1.0, "memory_kind": "process peak RSS MiB"}

    class Pool:  # the bench's child process, run in this one
        def __init__(self, *_):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *_):
            return False

        def apply(self, function, args):
            return run_one(*args)

    monkeypatch.setattr(bench.multiprocessing, "get_context", lambda *_: types.SimpleNamespace(Pool=Pool))
    monkeypatch.setattr("napari_pgps.tasks.bench_report.write_figures", lambda *_: None)
    monkeypatch.setattr("napari_pgps.tasks.bench_report.write_report", lambda *_: None)
    settings = BenchSettings(data=str(phantom_dataset), schedules=["constant", "pgps-efficiency"], seeds=1, profile="quick")
    first = run_bench(settings, tmp_path / "bench", progress=lambda line: None)
    assert trained == [("constant", 0), ("pgps-efficiency", 0)]
    assert sorted(p.name for p in (tmp_path / "bench" / "runs").iterdir()) == ["constant-seed0.json", "pgps-efficiency-seed0.json"]

    settings.seeds = 2  # one more seed: only its runs train
    second = run_bench(settings, tmp_path / "bench", progress=lambda line: None)
    assert trained[2:] == [("constant", 1), ("pgps-efficiency", 1)]
    assert second["runs"][:2] == first["runs"]

    saved = tmp_path / "bench" / "runs" / "constant-seed0.json"
    changed = json.loads(saved.read_text())
    changed["config"]["training"]["learning_rate"] = 0.5  # measured with another configuration: trained again
    saved.write_text(json.dumps(changed))
    run_bench(settings, tmp_path / "bench", progress=lambda line: None)
    assert trained[4:] == [("constant", 0)]

    settings.first_seed, settings.seeds = 1, 1  # seed 1 alone: measured before, nothing trains
    alone = run_bench(settings, tmp_path / "bench", progress=lambda line: None)
    assert trained[5:] == [] and [r["seed"] for r in alone["runs"]] == [1, 1]
    assert alone["runs"] == second["runs"][2:]


def test_the_bench_starts_every_run_from_a_given_configuration_the_profile_overriding_it(phantom_dataset, tmp_path):
    from napari_pgps.cli import _parser
    from napari_pgps.tasks.bench import BenchSettings, bench_config

    base = tmp_path / "mirror.yaml"
    base.write_text("data: {augmentation: mirror}\ntraining: {iterations_per_epoch: 99, learning_rate: 0.005}\n")
    settings = BenchSettings(data=str(phantom_dataset), schedules=["constant"], seeds=1, profile="quick", config=str(base))
    config = bench_config(settings, "constant", 0)
    assert config.data.augmentation == "mirror" and config.training.learning_rate == 0.005
    assert config.training.iterations_per_epoch == 2  # the profile's
    assert bench_config(BenchSettings(data=str(phantom_dataset), schedules=["constant"]), "constant", 0).data.augmentation is None
    args = _parser().parse_args(["bench", "--data", str(phantom_dataset), "--out", str(tmp_path), "--config", str(base)])
    assert args.config == str(base)
    settings.config = str(tmp_path / "missing.yaml")
    with pytest.raises(InputError, match="configuration file not found"):
        bench_config(settings, "constant", 0)


class _Clock:
    """A stand-in for ``time.perf_counter`` that a test moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _timed(shapes, fixed=0.01, per_voxel=1e-5):
    """A step timer's cost without timing anything: each probed shape costs ``fixed + per_voxel x voxels``, except
    that a step of small crops costs twice that (off the line through the others)."""
    from napari_pgps.engine.budget import StepCost

    def seconds(patch, batch):
        return (fixed + per_voxel * batch * math.prod(patch)) * (2.0 if math.prod(patch) < 16**3 else 1.0)

    return StepCost(fixed, per_voxel, tuple(((tuple(p), b), seconds(p, b)) for p, b in shapes))


def test_the_step_timing_stops_at_its_time_limit_after_the_final_and_smallest_shapes(monkeypatch):
    from napari_pgps.curriculum import build_schedule
    from napari_pgps.engine import budget

    clock = _Clock()
    monkeypatch.setattr(budget.time, "perf_counter", clock)
    schedule = build_schedule("pgps-efficiency", (16, 32, 32), (2, 3, 3), 1000, 2)
    shapes = budget.probe_shapes(schedule, None)
    by_voxels = sorted(shapes, key=lambda o: o[1] * math.prod(o[0]))
    assert shapes[:3] == [((16, 32, 32), 2), by_voxels[0], by_voxels[-2]]  # final, smallest, then largest down
    timed = []

    def step(patch, batch):  # 1 s a step: a warm-up and two timed steps are 3 s a shape
        timed.append((patch, batch))
        clock.now += 1.0

    cost = budget.measure_step_cost(step, shapes, time_limit=7.0)
    assert [shape for shape, _ in cost.measured] == shapes[:3]  # 6 s after two shapes, 9 s after three: stop
    assert len(timed) == 9 and cost.at(*by_voxels[1]) == pytest.approx(1.0)  # the others priced on the line
    assert len(budget.measure_step_cost(step, shapes).measured) == len(shapes)  # no limit: every shape


def test_a_budget_is_planned_from_a_step_timer_and_a_schedule_factory_without_a_network():
    from napari_pgps.curriculum import build_schedule
    from napari_pgps.engine.budget import BudgetPlanner

    def schedule_for(epochs):
        return build_schedule("pgps-efficiency", (16, 32, 32), (2, 3, 3), epochs, 2)

    clock = _Clock()
    planner = BudgetPlanner(600.0, schedule_for, validate_every=5, started_at=0.0, clock=clock)
    shapes = planner.probe_shapes(seed=0)
    every_stage = {(s.patch, s.batch) for s in schedule_for(1000).stages}
    assert shapes[0] == ((16, 32, 32), 2) and set(shapes) == every_stage  # the final shape first, then each stage's
    cost = _timed(shapes)
    clock.now = 10.0  # timing the steps took 10 s of the budget
    plan = planner.plan(cost, validation_seconds=3.0, iterations_per_epoch=10)

    def run_seconds(epochs):  # each stage at its own timed cost, and a validation every 5 epochs and after the last
        steps = sum(s.epochs * 10 * cost.at(s.patch, s.batch) for s in schedule_for(epochs).stages)
        return steps + math.ceil(epochs / 5) * 3.0

    assert run_seconds(plan.epochs) <= 590.0 < run_seconds(plan.epochs + 1)
    assert plan.iterations_per_epoch == 10 and plan.expected_seconds == pytest.approx(10.0 + run_seconds(plan.epochs))
    capped = BudgetPlanner(600.0, schedule_for, validate_every=5, cap=7, started_at=0.0, clock=clock)
    assert capped.plan(cost, 3.0, 10).epochs == 7  # the user's epochs, when fewer fit
    small = ((8, 8, 8), 2)
    assert cost.at(*small) == pytest.approx(2 * cost.seconds(2 * 8**3))  # a stage's own timed cost, not the line's

    stages = schedule_for(plan.epochs).stages  # a small stage's steps, however slow, say nothing of the pace
    small = next(s for s in stages if s.voxels_per_step < 0.25 * 2 * 16 * 32 * 32)
    slow = [3 * cost.at(small.patch, small.batch)] * 10
    assert planner.replan(stages, small, slow, 1, plan.epochs, 10) is None


def test_a_budget_is_planned_again_when_the_steps_show_another_pace():
    from napari_pgps.curriculum import build_schedule
    from napari_pgps.engine.budget import BudgetPlanner

    def schedule_for(epochs):
        return build_schedule("constant", (16, 32, 32), (2, 3, 3), epochs, 2)

    def planned(cap=None):
        clock = _Clock()
        planner = BudgetPlanner(300.0, schedule_for, validate_every=1, cap=cap, started_at=0.0, clock=clock)
        plan = planner.plan(_timed(planner.probe_shapes(0)), validation_seconds=1.0, iterations_per_epoch=10)
        return planner, plan, clock

    planner, plan, clock = planned()
    stage = schedule_for(plan.epochs).stages[0]
    step = planner.step_seconds(stage)
    epoch = 10 * step + 1.0  # its steps and a validation
    clock.now = 2 * epoch
    assert planner.replan((stage,), stage, [step] * 10, 2, plan.epochs, 10) is None  # on time: the plan holds

    planner, plan, clock = planned()
    clock.now = 2 * (10 * 2 * step + 2.0)
    replan = planner.replan((stage,), stage, [2 * step] * 10, 2, plan.epochs, 10)  # twice as slow as timed
    assert replan.slowdown == pytest.approx(2.0) and 2 < replan.epochs < plan.epochs
    assert replan.stages[0].patch == stage.patch and sum(s.epochs for s in replan.stages) == replan.epochs
    assert replan.expected_seconds <= 300.0 < replan.expected_seconds + 2 * epoch  # no room for another epoch

    planner, plan, clock = planned(cap=plan.epochs + 3)
    clock.now = 2 * (10 * 0.5 * step + 0.5)
    faster = planner.replan((stage,), stage, [0.5 * step] * 10, 2, plan.epochs, 10)
    assert faster.epochs == plan.epochs + 3 and faster.slowdown == pytest.approx(0.5)  # more, up to the user's cap


# -- a busy machine never starves a run (issue 33) ------------------------------------------------------------------
def _constant(epochs):
    from napari_pgps.curriculum import build_schedule

    return build_schedule("constant", (16, 32, 32), (2, 3, 3), epochs, 2)


def test_a_short_budget_plans_shorter_epochs_rather_than_fewer():
    from napari_pgps.engine.budget import MIN_EPOCHS, BudgetPlan

    cost = RunCost(lambda e: [(e, 0.1)], validation_seconds=1.0, validate_every=1)  # 0.1 s a step, 1 s a validation
    assert plan_epochs(30.0, cost, 10, MIN_EPOCHS) == plan_epochs(30.0, cost, 10) == BudgetPlan(15, 10)  # enough: as before
    short = plan_epochs(30.0, cost, 100, MIN_EPOCHS)  # one epoch of 100 steps fits, four do not
    assert plan_epochs(30.0, cost, 100).epochs == 2 and short.epochs == MIN_EPOCHS
    assert cost(MIN_EPOCHS, short.iterations_per_epoch) <= 30.0 < cost(MIN_EPOCHS, short.iterations_per_epoch + 1)
    assert plan_epochs(3.3, cost, 100, MIN_EPOCHS) == BudgetPlan(3, 1)  # validations take the budget: most epochs of a step
    assert plan_epochs(0.5, cost, 100, MIN_EPOCHS) == BudgetPlan(1, 1)  # nothing fits: one step, not none


def test_a_plan_fills_the_budget_with_one_shorter_epoch_more():
    """The left atrium's 45-minute constant plan: epochs of 50 steps of 11 s, 4 of them left 466 s of 2,700 unused."""
    from napari_pgps.engine.budget import BudgetPlan

    cost = RunCost(lambda e: [(e, 11.0)], validation_seconds=60.0, validate_every=5)
    assert plan_epochs(2600.0, cost, 50, 4) == BudgetPlan(4, 50)  # 2,260 s: no slack given, whole epochs as before
    assert plan_epochs(2600.0, cost, 50, 4, slack=60.0) == BudgetPlan(5, 46)  # 230 steps, not 200, in 2,590 s
    assert plan_epochs(2600.0, cost, 50, 4, slack=400.0) == BudgetPlan(4, 50)  # within the slack: kept
    assert plan_epochs(2270.0, cost, 50, 4, slack=5.0) == BudgetPlan(4, 50)  # 5 epochs of 40 steps train no more


def test_a_short_budget_keeps_every_pgps_stage_in_shorter_epochs():
    """The left atrium's 15-minute PGPS plan (4 epochs) trained 4 of its 15 sizes, the patch jumping from 48^3 to
    80x64x64 to 96^3: a plan of a schedule of fixed stages has the epochs that keep them all (of fewer steps)."""
    from napari_pgps.curriculum import build_schedule
    from napari_pgps.engine.budget import MIN_EPOCHS, BudgetPlanner

    def pgps(epochs):
        return build_schedule("pgps-efficiency", (96, 96, 96), (4, 4, 4), epochs, 2)

    def planned(budget, cap=None, schedule_for=pgps):
        planner = BudgetPlanner(budget, schedule_for, validate_every=5, cap=cap, started_at=0.0, clock=_Clock())
        return planner, planner.plan(_timed(planner.probe_shapes(0), fixed=0.05, per_voxel=2e-6), 1.0, 50)

    sizes = len(pgps(1000).stages)
    assert sizes == 15 and len(pgps(MIN_EPOCHS).stages) == MIN_EPOCHS  # thinned to the epochs, as before
    planner, plan = planned(300.0)  # 4 epochs of 50 steps at the final patch's 1.8 s do not fit
    assert planner.least_epochs == sizes and plan.epochs == sizes and plan.iterations_per_epoch < 50
    assert [s.patch for s in pgps(plan.epochs).stages] == [s.patch for s in planner.probed.stages]
    assert plan.expected_seconds <= 300.0
    planner, plan = planned(30_000.0)  # a long budget: epochs of the configured steps, as before
    assert plan.iterations_per_epoch == 50 and plan.epochs > sizes
    assert planned(300.0, cap=6)[1].epochs == 6  # the user's epochs are the most
    assert planned(300.0, schedule_for=_constant)[0].least_epochs == MIN_EPOCHS  # one stage: the floor as before
    growth = lambda epochs: build_schedule("pgps-efficiency", (96, 96, 96), (4, 4, 4), epochs, 2,  # noqa: E731
                                           ScheduleOptions(growth_fraction=0.5))
    least = planned(300.0, schedule_for=growth)[0].least_epochs
    assert len(growth(least).stages) == sizes > len(growth(least - 1).stages)  # the fewest that keep them all


def test_a_plan_under_the_floor_times_its_final_step_again_then_says_why():
    from napari_pgps.engine.budget import MIN_EPOCHS, MIN_STEPS, BudgetPlanner

    timed_again = []

    def planned(again, cap=None, iterations=50):
        planner = BudgetPlanner(60.0, _constant, validate_every=5, cap=cap, started_at=0.0, clock=_Clock())
        busy = _timed(planner.probe_shapes(0), fixed=0.5)  # 0.83 s a step: 60 s hold ~70 steps
        plan = planner.plan(busy, 1.0, iterations, time_again=lambda shapes: timed_again.append(shapes) or again(shapes))
        return planner, plan

    planner, plan = planned(lambda shapes: _timed(shapes, fixed=0.01, per_voxel=1e-6))  # the busy moment passed
    assert timed_again == [[((16, 32, 32), 2)]]  # the final shape only, once
    assert plan.steps >= MIN_STEPS and planner.notes == () and plan.expected_seconds <= 60.0

    planner, plan = planned(lambda shapes: _timed(shapes, fixed=0.5))  # still busy: the budget holds, and says so
    assert len(timed_again) == 2 and plan.steps < MIN_STEPS and plan.expected_seconds <= 60.0
    assert plan.epochs == MIN_EPOCHS and plan.iterations_per_epoch < 50  # shorter epochs, so checked as often
    (note,) = planner.notes
    assert f"holds {plan.steps} steps at 0.83 s a step" in note and f"fewer than the {MIN_STEPS}" in note
    assert "keeps its budget" in note and "--time-budget" in note and "not busy" in note

    planner, plan = planned(lambda shapes: pytest.fail("timed again"), cap=2, iterations=10)
    assert plan.steps == 20 and plan.epochs == 2 and planner.notes == ()  # the user's 20 steps: no note


def _planned_constant(budget=300.0, iterations=20, cap=None, fixed=0.01):
    """A planner of a constant schedule to ``budget`` seconds (validating every epoch, 1 s each), its plan, its clock
    and a step's timed seconds."""
    from napari_pgps.engine.budget import BudgetPlanner

    clock = _Clock()
    planner = BudgetPlanner(budget, _constant, validate_every=1, cap=cap, started_at=0.0, clock=clock)
    plan = planner.plan(_timed(planner.probe_shapes(0), fixed=fixed), validation_seconds=1.0, iterations_per_epoch=iterations)
    stage = _constant(plan.epochs).stages[0]
    return planner, plan, clock, planner.step_seconds(stage)


def test_the_pace_is_checked_within_the_first_epoch_every_few_steps():
    from napari_pgps.engine.budget import CHECK_STEPS

    for pace, more in ((1.0, None), (3.0, False), (1 / 3, True)):
        planner, plan, clock, step = _planned_constant()
        stages = _constant(plan.epochs).stages
        assert plan.iterations_per_epoch == 20 and plan.epochs > 4
        replans = []
        for taken in range(1, 20):
            clock.now = taken * pace * step
            replans.append(planner.check_within_epoch(stages, stages[0], [pace * step] * taken, 0, plan.epochs, 20))
        if more is None:  # the plan's pace: nothing changes
            assert replans == [None] * 19
            continue
        (replan,) = [r for r in replans if r is not None]  # at the first check; the epoch ends there
        assert replans.index(replan) + 1 == replan.after_steps == CHECK_STEPS
        assert replan.slowdown == pytest.approx(pace) and replan.iterations_per_epoch == 20
        assert (replan.epochs > plan.epochs) == more and replan.expected_seconds <= 300.0
        assert sum(s.epochs for s in replan.stages) == replan.epochs

    planner, plan, clock, step = _planned_constant(cap=None)  # the pace known (an epoch re-checked), 4+ epochs
    stages = _constant(plan.epochs).stages
    clock.now = 20 * step + 1.0
    assert planner.replan(stages, stages[0], [step] * 20, 1, plan.epochs, 20) is None
    clock.now += 10 * 3 * step
    assert planner.check_within_epoch(stages, stages[0], [3 * step] * 10, 1, plan.epochs, 20) is None  # at its end

    planner, plan, clock, step = _planned_constant(cap=3)  # faster, but at the user's epochs: cutting only loses steps
    stages = _constant(plan.epochs).stages
    clock.now = 10 * step / 3
    assert plan.epochs == 3 and planner.check_within_epoch(stages, stages[0], [step / 3] * 10, 0, 3, 20) is None


def test_a_re_plan_grows_short_epochs_back_to_the_configured_steps():
    from napari_pgps.engine.budget import MIN_EPOCHS

    planner, plan, clock, step = _planned_constant(budget=60.0, iterations=50, fixed=0.1)  # 0.43 s a step
    assert plan.epochs == MIN_EPOCHS and plan.iterations_per_epoch < 50
    stages = _constant(plan.epochs).stages
    taken = plan.iterations_per_epoch
    clock.now = taken * step / 10 + 1.0  # the steps went 10x faster than timed
    replan = planner.replan(stages, stages[0], [step / 10] * taken, 1, plan.epochs, taken)
    assert replan.iterations_per_epoch == 50 and replan.epochs > MIN_EPOCHS and replan.after_steps is None
    epoch = 50 * step / 10 + 0.1  # an epoch of the configured steps at this pace, and its validation (also 10x faster)
    assert 60.0 - epoch < replan.expected_seconds <= 60.0  # the budget is spent


def test_a_run_whose_plan_holds_trains_the_same_steps_and_numbers_with_the_check_within_the_epoch(phantom_dataset):
    """A run at the user's epochs (a budget far longer than it) is checked within its epoch and keeps its plan: the
    same steps and losses as without a budget."""
    from napari_pgps import train
    from napari_pgps.events import Replanned

    def run(budget):
        config = quick_config(phantom_dataset, epochs=1, iterations=12)  # checked at its 10th step
        config.curriculum.schedule = "constant"  # not the budget's recipe
        config.training.time_budget = budget
        events = list(train(config))
        assert not any(isinstance(e, Replanned) for e in events)
        return [(e.step, e.patch, e.loss) for e in events if isinstance(e, StepDone)]

    assert run(600.0) == run(None)


def test_a_plan_timed_twenty_times_too_slow_no_longer_starves_the_run(phantom_dataset, monkeypatch):
    """The issue's demo: its steps timed under another training's load planned one step for two minutes. Timed
    20x too slow here (twice: the load does not pass), the plan says it is under the floor, and the run's own
    steps re-plan it (within its epochs, back to the configured steps per epoch) to spend its budget."""
    from napari_pgps import train
    from napari_pgps.engine import trainer
    from napari_pgps.engine.budget import MIN_STEPS
    from napari_pgps.events import Replanned

    timed = trainer.measure_step_cost
    monkeypatch.setattr(trainer, "measure_step_cost", lambda step, sizes, **limit: timed(step, sizes, **limit).scaled(20.0))
    config = quick_config(phantom_dataset, epochs=None, iterations=20)
    config.curriculum.schedule = "pgps-performance"  # the demo's
    config.training.time_budget = 20.0
    config.training.validate_every = 5
    started_at = time.perf_counter()
    events = list(train(config))
    took = time.perf_counter() - started_at
    started = next(e for e in events if isinstance(e, RunStarted))
    replanned = [e for e in events if isinstance(e, Replanned)]
    steps = [e for e in events if isinstance(e, StepDone)]
    assert started.epochs * started.iterations_per_epoch < MIN_STEPS and started.iterations_per_epoch < 20
    assert any(f"fewer than the {MIN_STEPS} a model needs" in note for note in started.notes)
    assert replanned and replanned[0].epoch == 1 and replanned[0].slowdown < 0.5  # 0.05 on an idle machine
    # the configured epochs again, or one epoch more of fewer steps that trains more of the budget (more than half)
    assert 10 < replanned[-1].iterations_per_epoch <= 20 and replanned[-1].iterations_per_epoch > started.iterations_per_epoch
    assert len(steps) > started.epochs * started.iterations_per_epoch
    first_step = took - sum(s.seconds for s in steps)  # planning, validations, checkpoints
    assert sum(s.seconds for s in steps) > 0.5 * (20.0 - first_step)  # the budget is spent on steps, not left
    if sum(s.seconds for s in steps) / len(steps) < 20.0 / (3 * MIN_STEPS):  # a machine not too busy to hold them
        assert len(steps) > MIN_STEPS
    assert took <= 20.0 * 1.3


@pytest.mark.parametrize("asked", [None, "pgps-efficiency"])
def test_the_recipes_pgps_gives_way_to_the_constant_patch_when_the_budget_holds_too_few_final_steps(
        phantom_dataset, monkeypatch, asked):
    """Timed 100x too slow (the final step timed again, as slow), a 10-second budget holds a handful of steps at the
    final patch: the recipe's PGPS Efficiency becomes the constant patch and says why; the user's PGPS is kept."""
    from napari_pgps import train
    from napari_pgps.engine import trainer
    from napari_pgps.events import StageStarted

    timed, shapes_timed = trainer.measure_step_cost, []

    def slow(step, sizes, **limit):
        shapes_timed.append(list(sizes))
        return timed(step, sizes, **limit).scaled(100.0)

    monkeypatch.setattr(trainer, "measure_step_cost", slow)
    config = quick_config(phantom_dataset, epochs=None, iterations=5)
    config.curriculum.schedule = asked
    config.training.time_budget = 10.0
    events = list(train(config))
    started = next(e for e in events if isinstance(e, RunStarted))
    (line,) = [line for line in started.recipe if line.startswith("schedule: ")]
    if asked is None:
        assert started.schedule == "constant" and line.startswith("schedule: constant (the budget holds ")
        assert len(shapes_timed) == 2 and shapes_timed[1] == [((8, 32, 32), 2)]  # the final step timed once more
        assert {e.patch for e in events if isinstance(e, StageStarted)} == {(8, 32, 32)}
    else:
        assert started.schedule == "pgps-efficiency" and line == "schedule: pgps-efficiency (your configuration)"


def test_a_budget_that_holds_many_final_steps_trains_the_long_runs_augmentation_curriculum(
        phantom_dataset, monkeypatch, tmp_path):
    """With the long-run rule's step count lowered to 0, every budgeted run holds enough: its recipe ramps nnU-Net's
    augmentation in from none, its steps follow the ramp over its 8 epochs (capped, so the ramp's epochs are known)
    and its saved configuration has it, so a resumed run trains the same."""
    from napari_pgps import train
    from napari_pgps.config import RunConfig
    from napari_pgps.engine import recipe
    from napari_pgps.engine.file_names import CONFIG_FILE

    monkeypatch.setattr(recipe, "LONG_RUN_STEPS", 0)
    config = quick_config(phantom_dataset, epochs=8, iterations=2)
    config.training.time_budget = 120.0
    events = list(train(config, tmp_path / "run"))
    started = next(e for e in events if isinstance(e, RunStarted))
    (line,) = [line for line in started.recipe if line.startswith("augmentation: ")]
    assert line.startswith("augmentation: nnunet, from none at 25% of the run to full strength at 75% (the budget holds ")
    strengths = [e.augmentation_strength for e in events if isinstance(e, StepDone)]
    assert strengths == pytest.approx([0, 0, 0, 0, 0, 0, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1, 1, 1, 1])
    saved = RunConfig.load(tmp_path / "run" / CONFIG_FILE).data
    assert (saved.augmentation, saved.augmentation_ramp) == ("nnunet", (0.25, 0.75))


def test_a_re_plan_within_an_epoch_is_told_and_shown_with_its_steps_per_epoch():
    from napari_pgps.engine import TrainingProgress, describe_event
    from napari_pgps.events import Replanned

    started = RunStarted(run_dir=None, device="CPU", training_cases=4, validation_cases=1, parameters=10, start_epoch=0,
                         epochs=4, iterations_per_epoch=3, final_patch=(8, 8, 8), schedule="constant",
                         label_names=("background", "a"), volume_class_fractions=(0.9, 0.1), time_budget=120.0)
    progress = TrainingProgress().update(started)
    replanned = Replanned(epoch=1, slowdown=0.05, epochs=9, expected_seconds=118.0, iterations_per_epoch=20, after_steps=10)
    assert describe_event(replanned, progress.update(replanned)) == (
        "epoch 1 (ended after 10 steps): steps took 0.05x the planned time; re-planned to 9 epochs x 20 steps, "
        "expected 1m58s")
    assert (progress.started.epochs, progress.started.iterations_per_epoch) == (9, 20)
    at_the_end = Replanned(epoch=2, slowdown=1.5, epochs=5, expected_seconds=119.0)  # as before issue 33
    assert describe_event(at_the_end, progress.update(at_the_end)).startswith("epoch 2: steps took 1.50x")
    assert progress.started.iterations_per_epoch == 20


def test_a_network_step_is_timed_on_random_crops_without_changing_a_weight():
    from napari_pgps.config import ModelConfig
    from napari_pgps.engine.budget import measure_network_step_seconds
    from napari_pgps.models import build_network

    model = ModelConfig(patch_size=(8, 16, 16), spacing=(1.0, 1.0, 1.0), kernel_sizes=[(3, 3, 3)] * 3,
                        strides=[(1, 1, 1), (2, 2, 2), (2, 2, 2)], channels=[4, 8, 16], in_channels=1, out_channels=2)
    network = build_network(model)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    seconds = measure_network_step_seconds(network, (2, 1, 8, 16, 16), torch.device("cpu"), None,
                                           torch.channels_last_3d)
    assert 0 < seconds < 30
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())
    assert all(p.grad is None for p in network.parameters())
