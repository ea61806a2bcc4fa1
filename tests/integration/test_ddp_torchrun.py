"""DDP under torchrun: 2 CPU ranks (Gloo) on six hippocampus cases, 16x16x16 patches, 8 base channels.

``ddp_driver.py`` runs under ``python -m torch.distributed.run`` (no torchrun
script needed on PATH) and writes per-rank records; the command line then
resumes the run it stopped. About 50 s on 2 CPU cores in all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from napari_pgps.engine import load_checkpoint

pytestmark = pytest.mark.integration

DRIVER = Path(__file__).with_name("ddp_driver.py")
RANKS = 2


def torchrun(*args: str, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 ARGS`` (a free port is picked), one thread per rank."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={RANKS}", *args]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        environment.pop(name, None)
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=timeout, check=False)


def read_records(out: Path, name: str) -> list[list[dict]]:
    """Per rank, the lines of ``{name}.rank{r}.jsonl``."""
    return [[json.loads(line) for line in (out / f"{name}.rank{r}.jsonl").read_text().splitlines()] for r in range(RANKS)]


def steps_of(records: list[dict]) -> list[dict]:
    return [r for r in records if "step" in r and "event" not in r]


@pytest.fixture(scope="module")
def driven(tmp_path_factory, hippocampus) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    result = torchrun(str(DRIVER), str(hippocampus), str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def test_one_ddp_step_equals_a_single_process_step_on_the_union_of_the_batches(driven):
    records = [json.loads((driven / f"step.rank{r}.json").read_text()) for r in range(RANKS)]
    assert [r["crops"] for r in records] == [2, 1]  # the global batch of 3 split unevenly
    for record in records:
        assert record["loss"] == pytest.approx(record["reference_loss"], rel=1e-6)
        tolerance = 1e-5 * record["largest_grad"]
        assert record["grad_difference"] < tolerance and record["weight_difference"] < 1e-6
        # DDP with the per-rank loss (local batch Dice, unweighted cross-entropy) is measurably wrong:
        assert record["naive_grad_difference"] > 100 * tolerance


def test_ranks_cut_different_crops_of_the_same_patch_and_share_the_global_batch(driven):
    for name in ("straight", "rpss"):
        ranks = [steps_of(r) for r in read_records(driven, name)]
        assert len(ranks[0]) == len(ranks[1]) > 0
        for first, second in zip(*ranks):
            assert first["step"] == second["step"]
            assert first["patch"] == second["patch"] and first["batch"] == second["batch"]
            assert first["loss"] == second["loss"]  # the global loss, averaged over the ranks
            assert len(first["crop_origins"]) + len(second["crop_origins"]) == first["batch"]
            assert (first["crop_cases"], first["crop_origins"]) != (second["crop_cases"], second["crop_origins"])
    straight = steps_of(read_records(driven, "straight")[0])
    assert [s["patch"] for s in straight] == [[8, 4, 4]] * 3 + [[16, 16, 16]] * 3  # pgps-performance, one stage per epoch
    assert [s["batch"] for s in straight] == [96] * 3 + [3] * 3
    rpss = steps_of(read_records(driven, "rpss")[0])
    assert len({tuple(s["patch"]) for s in rpss}) > 1  # RPSS drew several patches, the same on both ranks


def test_weights_stay_identical_on_every_rank_after_every_step(driven):
    for name in ("straight", "split", "rpss"):
        first, second = (steps_of(r) for r in read_records(driven, name))
        assert [s["weights"] for s in first] == [s["weights"] for s in second]
        assert len({s["weights"] for s in first}) == len(first)  # and they change at every step


def test_only_rank_zero_writes_and_the_checkpoint_holds_every_rank_sampler_state(driven):
    assert sorted(p.name for p in (driven / "straight").iterdir()) == [
        "checkpoint_best.pt", "checkpoint_final.pt", "checkpoint_last.pt", "config.yaml", "metrics.jsonl", "splits.json"]
    logged = [json.loads(line) for line in (driven / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [e["event"] for e in logged].count("RunStarted") == 1
    assert [e["crop_origins"] for e in logged if e["event"] == "StepDone"] == [
        s["crop_origins"] for s in steps_of(read_records(driven, "straight")[0])]
    states = load_checkpoint(driven / "straight" / "checkpoint_final.pt")["rng"]
    assert len(states["numpy_ranks"]) == RANKS and states["numpy_ranks"][0] != states["numpy_ranks"][1]


def test_a_stop_on_one_rank_stops_every_rank_and_the_run_resumes_from_the_command_line(driven):
    for records in read_records(driven, "split"):
        assert [s["step"] for s in steps_of(records)] == [1, 2, 3, 4]
        assert records[-1]["event"] == "Finished" and records[-1]["stopped"] and records[-1]["epochs_completed"] == 1
    run_dir = driven / "split"
    assert not (run_dir / "checkpoint_final.pt").exists() and load_checkpoint(run_dir / "checkpoint_last.pt")["epoch"] == 1

    result = torchrun("-m", "napari_pgps", "train", "--out", str(run_dir), "--resume")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("resuming at epoch 1") == 1 and result.stdout.count("finished after 2 epochs") == 1  # rank 0 only
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in logged if e["event"] == "StepDone"] == [1, 2, 3, 4, 5, 6]  # cut back to the checkpoint
    # Every rank's sampler, the schedule and the weights were restored: the resumed run ends where the straight one did.
    resumed = load_checkpoint(run_dir / "checkpoint_final.pt")
    straight = load_checkpoint(driven / "straight" / "checkpoint_final.pt")
    assert resumed["epoch"] == 2 and resumed["rng"]["numpy_ranks"] == straight["rng"]["numpy_ranks"]
    for name, weights in straight["model"].items():
        torch.testing.assert_close(resumed["model"][name], weights, rtol=1e-5, atol=1e-6)


def test_a_failing_rank_ends_the_whole_run_and_keeps_the_last_checkpoint(tmp_path, hippocampus):
    started = time.perf_counter()
    result = torchrun(str(DRIVER), str(hippocampus), str(tmp_path), "fail", env={"NAPARI_PGPS_DDP_TIMEOUT": "120"})
    assert result.returncode != 0 and "injected failure on rank 1" in result.stdout + result.stderr
    assert time.perf_counter() - started < 60  # rank 0 did not wait for its collective to time out
    assert load_checkpoint(tmp_path / "failed" / "checkpoint_last.pt")["epoch"] == 1
    assert not (tmp_path / "failed" / "checkpoint_final.pt").exists()
