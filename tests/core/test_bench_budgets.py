"""The bench at several time budgets: its runs' order and names, resuming, the seeds limit, the "default" profile,
the test Dice of a run, and the report's check that Dice rises with the budget."""

from __future__ import annotations

import json

import pytest

from helpers import quick_config
from napari_pgps.cli import main
from napari_pgps.config import RunConfig
from napari_pgps.tasks import bench
from napari_pgps.tasks.bench import BenchSettings, bench_config, run_bench, run_one

DICE = {(20.0, "constant"): 0.80, (40.0, "constant"): 0.70, (20.0, "pgps-efficiency"): 0.75,
        (40.0, "pgps-efficiency"): 0.85}
"""The fake runs' test Dice per (budget, schedule): constant falls from 20 s to 40 s, PGPS rises."""


def _fake_training(calls):
    def trained(config, run_dir):
        budget, schedule, seed = config["training"]["time_budget"], config["curriculum"]["schedule"], config["training"]["seed"]
        calls.append((budget, seed, schedule, run_dir))
        dice = DICE[budget, schedule] + 0.01 * seed
        return {"schedule": schedule, "seed": seed, "device": "CPU (fake)", "planned_epochs": 3, "completed_epochs": 3,
                "time_budget": budget, "wall_seconds": budget, "training_seconds": budget / 2, "dice_on": "test",
                "dice_per_label": {"organ": dice}, "mean_dice": dice, "validation_dice": dice - 0.05, "test_cases": 1,
                "best_checkpoint_test_dice": dice - 0.01, "curve": [{"epoch": 2, "training_seconds": budget / 2,
                                                                     "mean_dice": dice - 0.05}],
                "epochs": [{"epoch": e, "steps": 2, "voxels": 1, "patch": [8, 8, 8], "batch": 2} for e in range(3)],
                "final_patch_step_seconds": 0.25 + seed, "peak_memory_mib": 1.0, "memory_kind": "process peak RSS MiB"}
    return trained


def test_a_bench_at_several_budgets_trains_shortest_first_and_a_second_call_trains_nothing(tmp_path, phantom_dataset,
                                                                                          monkeypatch):
    calls = []
    monkeypatch.setattr(bench, "_train_in_child", _fake_training(calls))
    settings = dict(data=str(phantom_dataset), schedules=["constant", "pgps-efficiency"], seeds=2, profile="quick",
                    budgets=[40.0, 20.0], max_seeded_budget=20.0)
    out = tmp_path / "report"
    results = run_bench(BenchSettings(**settings), out, progress=lambda line: None)
    assert [call[:3] for call in calls] == [(20.0, 0, "constant"), (20.0, 0, "pgps-efficiency"), (20.0, 1, "constant"),
                                            (20.0, 1, "pgps-efficiency"), (40.0, 0, "constant"),
                                            (40.0, 0, "pgps-efficiency")]  # one seed above --max-seeded-budget
    assert calls[0][3] == out / "models" / "20s" / "constant-seed0"  # a run folder: there is a test split
    saved = json.loads((out / "runs" / "40s" / "pgps-efficiency-seed0.json").read_text())
    assert saved["config"]["data"]["test_fraction"] == 0.2 and saved["config"]["training"]["time_budget"] == 40.0
    assert saved["config"]["data"]["max_cases"] == 12  # the quick profile

    lines = []
    again = run_bench(BenchSettings(**settings), out, progress=lines.append)
    assert len(calls) == 6 and sum("measured before" in line for line in lines) == 6
    assert again["budgets"] == results["budgets"]

    assert [b["label"] for b in results["budgets"]] == ["20s", "40s"]
    assert results["budgets"][0]["summary"]["constant"]["seeds"] == 2
    assert results["budgets"][1]["summary"]["constant"]["seeds"] == 1
    flags = {row["schedule"]: row["rises"] for row in results["monotonicity"]}
    assert flags == {"constant": False, "pgps-efficiency": True}
    report = (out / "report.md").read_text()
    assert "| 40s | constant | 0.7000 ± 0.0000 | 1 | 0.6900 |" in report
    assert "- constant: 20s 0.8050 -> 40s 0.7000 (-10.50 points) **LOWER than the shorter budget**" in report
    assert "- pgps-efficiency: 20s 0.7550 -> 40s 0.8500 (+9.50 points)\n" in report
    assert (out / "dice_vs_budget.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_bench_stopped_between_a_budgets_runs_reports_every_run_it_measured(tmp_path, phantom_dataset, monkeypatch):
    calls = []
    trained = _fake_training(calls)

    def stopped_at_the_longer_constant(config, run_dir):
        if (config["training"]["time_budget"], config["curriculum"]["schedule"]) == (40.0, "constant"):
            raise KeyboardInterrupt  # Ctrl-C while the last run trains
        return trained(config, run_dir)

    monkeypatch.setattr(bench, "_train_in_child", stopped_at_the_longer_constant)
    settings = BenchSettings(data=str(phantom_dataset), schedules=["pgps-efficiency", "constant"], seeds=1,
                             profile="quick", budgets=[20.0, 40.0])
    out = tmp_path / "report"
    with pytest.raises(KeyboardInterrupt):
        run_bench(settings, out, progress=lambda line: None)
    results = json.loads((out / "results.json").read_text())
    assert [b["label"] for b in results["budgets"]] == ["20s", "40s"]
    assert list(results["budgets"][1]["summary"]) == ["pgps-efficiency"]  # its constant run never ended
    assert [(r["schedule"], r["shorter"], r["longer"]) for r in results["monotonicity"]] == [
        ("pgps-efficiency", "20s", "40s")]
    report = (out / "report.md").read_text()
    assert "| 40s | pgps-efficiency | 0.8500 ± 0.0000 | 1 | 0.8400 | - |" in report
    assert "| 20s | pgps-efficiency | 0.7500 ± 0.0000 | 1 | 0.7400 | -5.00 points |" in report
    assert "- 40s: **pgps-efficiency**: constant has no run at this budget yet." in report
    assert "| 40s | 0 | pgps-efficiency | 0.8500 | 0.8400 | 0.8000 | 20 | 40 | 3 | 6 (6) | 0.25 |" in report
    assert (out / "dice_vs_budget.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_only_writes_the_report_from_the_kept_runs_and_trains_nothing(tmp_path, phantom_dataset, monkeypatch,
                                                                            capsys):
    calls = []
    monkeypatch.setattr(bench, "_train_in_child", _fake_training(calls))
    flags = ["--data", str(phantom_dataset), "--schedules", "pgps-efficiency,constant", "--seeds", "1",
             "--profile", "quick"]
    out = tmp_path / "report"
    assert main(["bench", *flags, "--budgets", "20s", "--out", str(out), "--report-only"]) == 2
    assert "nothing to report" in capsys.readouterr().err and not out.exists()

    assert main(["bench", *flags, "--budgets", "20s", "--out", str(out)]) == 0
    assert len(calls) == 2
    (out / "report.md").unlink()
    capsys.readouterr()
    # a longer budget asked for, not measured yet: reported as such, nothing trained
    assert main(["bench", *flags, "--budgets", "20s,40s", "--out", str(out), "--report-only"]) == 0
    printed = capsys.readouterr().out
    assert len(calls) == 2
    assert "40s, seed 0, constant: not measured yet, left out of the report" in printed
    assert "| 20s | pgps-efficiency | 0.7500 ± 0.0000 | 1 | 0.7400 | -5.00 points |" in (out / "report.md").read_text()
    assert [b["label"] for b in json.loads((out / "results.json").read_text())["budgets"]] == ["20s"]


def _one_run_kept(tmp_path, phantom_dataset, monkeypatch):
    """A bench of one 20-second constant run (trained by a fake): the calls to train, the bench's flags, the kept
    run's file and what it holds."""
    calls = []
    monkeypatch.setattr(bench, "_train_in_child", _fake_training(calls))
    flags = ["--data", str(phantom_dataset), "--schedules", "constant", "--seeds", "1", "--profile", "quick",
             "--budgets", "20s", "--out", str(tmp_path / "report")]
    assert main(["bench", *flags]) == 0 and len(calls) == 1
    saved = tmp_path / "report" / "runs" / "20s" / "constant-seed0.json"
    return calls, flags, saved, json.loads(saved.read_text())


def test_a_run_kept_from_an_earlier_recipe_is_measured_again_only_when_asked(tmp_path, phantom_dataset, monkeypatch,
                                                                             capsys):
    from napari_pgps.engine.recipe import RECIPE_VERSION

    calls, flags, saved, kept = _one_run_kept(tmp_path, phantom_dataset, monkeypatch)
    assert kept["recipe_version"] == RECIPE_VERSION
    del kept["recipe_version"]  # as a bench before the recipe's version kept it: the recipe of version 1
    saved.write_text(json.dumps(kept))
    capsys.readouterr()

    assert main(["bench", *flags, "--report-only"]) == 2  # the same configuration, but an earlier recipe
    assert (f"no run of this bench's configuration and recipe yet (runs/20s/constant-seed0.json: kept from an earlier "
            f"recipe (version 1; this one is {RECIPE_VERSION}))") in capsys.readouterr().err
    assert main(["bench", *flags]) == 2
    err = capsys.readouterr().err
    assert "earlier recipe (e.g. runs/20s/constant-seed0.json: kept from an earlier recipe" in err and "--overwrite" in err
    assert len(calls) == 1 and "recipe_version" not in json.loads(saved.read_text())  # nothing trained or replaced

    assert main(["bench", *flags, "--overwrite"]) == 0
    assert len(calls) == 2 and json.loads(saved.read_text())["recipe_version"] == RECIPE_VERSION


def test_a_run_kept_from_version_2_is_this_recipes_where_its_budget_held_too_few_steps_for_the_new_rule(
        tmp_path, phantom_dataset, monkeypatch):
    """Version 3 added one rule (nnU-Net's augmentation ramped in where a budget holds LONG_RUN_STEPS steps at the
    final patch): a kept version-2 run whose budget held far fewer is kept; one that held enough, or that did not
    keep its step seconds, trains again."""
    from napari_pgps.engine.recipe import KEPT_STEPS_MARGIN, LONG_RUN_STEPS, RECIPE_VERSION

    assert RECIPE_VERSION == 3
    calls, flags, saved, kept = _one_run_kept(tmp_path, phantom_dataset, monkeypatch)
    few, many = 20.0 / (LONG_RUN_STEPS / KEPT_STEPS_MARGIN) * 1.01, 20.0 / (LONG_RUN_STEPS / KEPT_STEPS_MARGIN) * 0.99
    for step_seconds, trains in ((few, False), (many, True), (None, True)):
        kept["recipe_version"], kept["result"]["final_patch_step_seconds"] = 2, step_seconds
        saved.write_text(json.dumps(kept))
        before = len(calls)
        assert main(["bench", *flags, "--overwrite"]) == 0
        assert len(calls) == before + trains, step_seconds


def test_a_runs_step_seconds_at_the_final_patch_are_the_median_of_its_last_shapes_steps():
    from napari_pgps.events import StepDone

    def step(patch, seconds):
        return StepDone(epoch=0, step=0, loss=1.0, patch=patch, batch=2, class_fractions=(1.0,), seconds=seconds,
                        learning_rate=0.01)

    steps = [step((8, 8, 8), 0.1)] * 5 + [step((16, 8, 8), s) for s in (0.5, 0.9, 0.7)]
    assert bench.final_patch_step_seconds(steps) == pytest.approx(0.7)
    assert bench.final_patch_step_seconds([]) is None


def test_the_default_profile_changes_only_the_schedule_seed_budget_and_test_split(tmp_path):
    mine = RunConfig()
    mine.training.epochs, mine.training.validate_every, mine.model.base_channels = 7, 3, 16
    mine.data.path = "elsewhere"
    mine.save(tmp_path / "mine.yaml")
    settings = BenchSettings(data="data", schedules=["constant", "pgps-efficiency"], budgets=[900.0],
                             config=str(tmp_path / "mine.yaml"))
    assert settings.profile == "default" and settings.test_fraction == 0.2
    expected = RunConfig.load(tmp_path / "mine.yaml")
    expected.data.path, expected.data.test_fraction = "data", 0.2
    expected.curriculum.schedule, expected.training.seed, expected.training.time_budget = "pgps-efficiency", 2, 900.0
    assert bench_config(settings, "pgps-efficiency", 2, 900.0).to_dict() == expected.to_dict()
    single = BenchSettings(data="data", schedules=["constant"], time_budget=60.0)  # one budget: as before
    assert (single.profile, single.test_fraction) == ("full", None)
    assert bench_config(single, "constant", 0).data.test_fraction == 0.0


def test_a_run_with_a_test_split_reports_its_final_models_test_dice_as_evaluate_does(tmp_path, phantom_dataset):
    config = quick_config(phantom_dataset, epochs=1, iterations=1)
    config.data.test_fraction = 0.34
    run = tmp_path / "run"
    result = run_one(config.to_dict(), str(run))
    assert result["dice_on"] == "test" and result["test_cases"] == 2 and "validation_dice" in result
    assert result["best_checkpoint_test_dice"] is not None and result["weight_averaging"] in ("ema", "none")
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if s["event"] == "StepDone"]
    assert result["final_patch_step_seconds"] == pytest.approx(steps[-1]["seconds"])  # one step: its own seconds
    scored = tmp_path / "test.json"
    assert main(["evaluate", "--model", str(run), "--data", str(phantom_dataset), "--split", "test", "--json",
                 str(scored), "--device", "cpu"]) == 0
    assert result["mean_dice"] == pytest.approx(json.loads(scored.read_text())["mean_dice"])


@pytest.mark.parametrize("flags, message", [
    (["--max-seeded-budget", "45m"], "give --budgets too"),
    (["--budgets", "5m,15m", "--time-budget", "15m"], "not both"),
    (["--budgets", "5m,5m"], "each budget once"),
    (["--budgets", "5m", "--test-fraction", "1"], "--test-fraction must be in [0, 1)"),
])
def test_bench_flags_that_do_not_fit_are_refused(tmp_path, phantom_dataset, capsys, flags, message):
    assert main(["bench", "--data", str(phantom_dataset), "--out", str(tmp_path / "r"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_schedule_has_its_own_colour_in_every_bench_figure_whatever_the_order_asked():
    from napari_pgps.curriculum import SCHEDULES
    from napari_pgps.tasks.bench_report import schedule_colour

    names = [*SCHEDULES, *(f"{name}+pdl" for name in SCHEDULES)]
    assert len({schedule_colour(name) for name in names}) == len(names)  # the hippocampus and LA figures differed
    assert schedule_colour("another") not in {schedule_colour(name) for name in names}
