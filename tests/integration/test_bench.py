"""The quick bench end to end on the real hippocampus data."""

import json

import pytest

from napari_pgps.cli import main

pytestmark = pytest.mark.integration


def test_quick_bench_writes_results_report_and_figures(tmp_path, hippocampus, capsys):
    out = tmp_path / "report"
    assert main(["bench", "--data", str(hippocampus), "--out", str(out), "--profile", "quick", "--seeds", "1",
                 "--schedules", "constant,pgps-efficiency,pgps-performance", "--device", "cpu"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["summary"]) == {"constant", "pgps-efficiency", "pgps-performance"}
    runs = {r["schedule"]: r for r in results["runs"]}
    assert runs["constant"]["time_ratio"] == 1.0
    for run in runs.values():
        assert 0 <= run["mean_dice"] <= 1 and run["training_seconds"] > 0 and run["peak_memory_mib"] > 0
        assert run["curve"] and run["curve"][-1]["epoch"] == 14
    # Efficiency processes about a third of the voxels: its steps must take less time than constant's.
    assert runs["pgps-efficiency"]["training_seconds"] < runs["constant"]["training_seconds"]
    balance = runs["pgps-efficiency"]["class_balance"]
    assert len(balance) == 14 and balance[-1]["patch"] == [40, 56, 40]
    assert 1 - balance[0]["class_fractions"][0] > 1 - runs["pgps-efficiency"]["volume_class_fractions"][0]
    report = (out / "report.md").read_text()
    assert "| pgps-performance |" in report and "What it shows" in report
    for figure in ("dice_vs_time.png", "patch_and_batch.png", "class_balance.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "napari-pgps bench" in capsys.readouterr().out


def test_bench_refuses_a_run_without_the_baseline(tmp_path, hippocampus, capsys):
    assert main(["bench", "--data", str(hippocampus), "--out", str(tmp_path / "r"), "--schedules", "pgps-efficiency"]) == 2
    assert "include 'constant'" in capsys.readouterr().err


def test_a_bench_at_two_budgets_reports_test_dice_and_resumes(tmp_path, hippocampus, capsys):
    out = tmp_path / "budgets"
    command = ["bench", "--data", str(hippocampus), "--out", str(out), "--profile", "quick", "--seeds", "1",
               "--schedules", "constant,pgps-efficiency", "--budgets", "4s,8s", "--device", "cpu"]
    assert main(command) == 0
    results = json.loads((out / "results.json").read_text())
    assert [b["label"] for b in results["budgets"]] == ["4s", "8s"] and results["dice_on"] == "test"
    assert all(r["test_cases"] == 2 and 0 <= r["mean_dice"] <= 1 for r in results["runs"])  # 20% of 12 cases
    assert sorted(p.name for p in (out / "runs" / "8s").iterdir()) == ["constant-seed0.json", "pgps-efficiency-seed0.json"]
    assert not (out / "models").exists() or not any((out / "models").rglob("*.pt"))  # run folders deleted
    assert (out / "dice_vs_budget.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert main(command) == 0  # started again: nothing left to train
    assert capsys.readouterr().out.count("measured before") == 4
