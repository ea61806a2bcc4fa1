"""Faults a run survives with nothing lost: a second run into the same folder, a run that died before its first
checkpoint, an invalid run folder, a resume after a stop or a kill (the log tells every step once), and a checkpoint
write cut off by a full disk or a kill.

A stop followed by a resume ending on the uninterrupted run's weights is tested in tests/core/test_trainer.py
(test_resumed_run_matches_an_uninterrupted_one); here the same is checked after a failed checkpoint write."""

import errno
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from helpers import quick_config, run_events

from napari_pgps import train
from napari_pgps.cli import main
from napari_pgps.engine import TrainingControl, load_checkpoint
from napari_pgps.engine.progress import read_events
from napari_pgps.engine.run_lock import LOCK_FILE, claim
from napari_pgps.errors import InputError
from napari_pgps.events import Finished, Preparing, RunStarted, StepDone


def _stopped(config, run_dir, at_step):
    """Run ``config`` into ``run_dir`` and stop it after step ``at_step``; the events."""
    control = TrainingControl()
    events = []
    for event in train(config, run_dir, control=control):
        events.append(event)
        if isinstance(event, StepDone) and event.step == at_step:
            control.stop()
    assert events[-1].stopped
    return events


def _logged_steps(run_dir):
    return [e.step for e in read_events(run_dir) if isinstance(e, StepDone)]


# -- one run per folder ------------------------------------------------------------------------------------------
def test_a_second_run_into_a_folder_in_use_is_refused_before_either_writes(tmp_path, phantom_dataset, monkeypatch):
    monkeypatch.setenv("NAPARI_PGPS_CACHE", str(tmp_path / "cache"))  # a fresh cache: the first run prepares the data
    run_dir = tmp_path / "run"
    first = train(quick_config(phantom_dataset, epochs=1, iterations=2), run_dir)
    assert isinstance(next(first), Preparing) and not (run_dir / "config.yaml").exists()  # nothing written yet
    with pytest.raises(InputError) as refused:
        next(iter(train(quick_config(phantom_dataset, epochs=1, iterations=2), run_dir)))
    assert str(refused.value) == (f"{run_dir} is in use by another run (pid {os.getpid()}); wait for it or choose "
                                  "another run folder (--out).")
    events = run_events(first)
    assert events[-1].stopped is False and sum(isinstance(e, RunStarted) for e in read_events(run_dir)) == 1
    assert not (run_dir / LOCK_FILE).exists()  # let go when the run ended


@pytest.mark.skipif(sys.platform == "win32", reason="the other run is simulated with fcntl.flock")
def test_the_lock_of_a_run_killed_with_sigkill_goes_with_it(tmp_path, phantom_dataset):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX)\n"
         "os.write(fd, b'%d other-host\\n' % os.getpid()); print('held', flush=True); time.sleep(120)",
         str(run_dir / LOCK_FILE)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(InputError, match=rf"is in use by another run \(pid {holder.pid} on other-host\)"):
            next(iter(train(quick_config(phantom_dataset), run_dir)))
    finally:
        holder.kill()  # kill -9: nothing of it runs again
        holder.wait()
    assert isinstance(next(iter(train(quick_config(phantom_dataset), run_dir))), (Preparing, RunStarted))


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_an_invalid_run_folder_is_refused_before_the_data_is_read(tmp_path, phantom_dataset, where):
    (tmp_path / "file").write_text("not a folder")
    run_dir = tmp_path / "file" if where == "a file" else tmp_path / "file" / "run"
    refusal = f"^{re.escape(str(run_dir))}: .*(is a file, not a folder|cannot be made or written)"
    with pytest.raises(InputError, match=refusal):
        next(iter(train(quick_config(phantom_dataset), run_dir)))  # the first event would be the data's preparation
    assert (tmp_path / "file").read_text() == "not a folder"


# -- a run that died before its first checkpoint ------------------------------------------------------------------
def test_the_folder_of_a_run_that_ended_before_its_first_checkpoint_takes_a_new_run(tmp_path, phantom_dataset):
    run_dir = tmp_path / "run"
    _stopped(quick_config(phantom_dataset, epochs=2, iterations=2), run_dir, at_step=1)
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml", "metrics.jsonl", "splits.json"]
    with pytest.raises(InputError, match="no checkpoint yet .*; start the run again without --resume"):
        next(iter(train(quick_config(phantom_dataset), run_dir, resume=True)))

    events = run_events(train(quick_config(phantom_dataset, epochs=1, iterations=1), run_dir))
    assert events[0].notes[0] == (f"{run_dir} held config.yaml, splits.json, metrics.jsonl of a run that ended before "
                                  "its first checkpoint; this run replaces them.")
    assert isinstance(events[-1], Finished) and not events[-1].stopped
    logged = list(read_events(run_dir))
    assert sum(isinstance(e, RunStarted) for e in logged) == 1 and _logged_steps(run_dir) == [1]


# -- the log after a resume ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, phantom_dataset):
    """A run of 2 epochs x 2 steps stopped after step 3: its checkpoint is epoch 1's (step 2), its log goes to step 3."""
    run_dir = tmp_path_factory.mktemp("stopped") / "run"
    _stopped(quick_config(phantom_dataset, epochs=2, iterations=2), run_dir, at_step=3)
    assert _logged_steps(run_dir) == [1, 2, 3] and load_checkpoint(run_dir / "checkpoint_last.pt")["step"] == 2
    return run_dir


def _killed_mid_line(lines):
    """Killed while writing a line: its Finished never written, a step's line cut short."""
    return "".join(line + "\n" for line in lines[:-1]) + '{"event": "StepDone", "epoch": 1, "st'


def _killed_before_logging_its_checkpoint(lines):
    """Killed after writing epoch 1's checkpoint, before logging it (the log ends with the epoch's validation)."""
    saved = next(i for i, line in enumerate(lines) if json.loads(line)["event"] == "CheckpointSaved")
    return "".join(line + "\n" for line in lines[:saved])


@pytest.mark.parametrize("ending", [None, _killed_mid_line, _killed_before_logging_its_checkpoint],
                         ids=["stopped", "killed mid-line", "killed before logging its checkpoint"])
def test_a_resumed_run_logs_every_step_once(tmp_path, phantom_dataset, stopped_run, ending):
    run_dir = shutil.copytree(stopped_run, tmp_path / "run")  # the folder as the first run left it
    if ending is not None:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        (run_dir / "metrics.jsonl").write_text(ending(lines))
    resumed = list(train(quick_config(phantom_dataset), run_dir, resume=True))
    assert [e.step for e in resumed if isinstance(e, StepDone)] == [3, 4]
    logged = list(read_events(run_dir))
    assert _logged_steps(run_dir) == [1, 2, 3, 4]
    assert [e.start_epoch for e in logged if isinstance(e, RunStarted)] == [0, 1]
    assert [e.stopped for e in logged if isinstance(e, Finished)] == [False]


def test_a_resumed_run_says_the_recipe_it_was_started_with(tmp_path, phantom_dataset, stopped_run):
    run_dir = shutil.copytree(stopped_run, tmp_path / "run")
    started = next(e for e in read_events(run_dir) if isinstance(e, RunStarted))
    assert "schedule: constant (a run of set epochs keeps the network's own schedule" in started.recipe[0]
    resumed = next(e for e in train(quick_config(phantom_dataset), run_dir, resume=True) if isinstance(e, RunStarted))
    assert resumed.recipe == started.recipe  # not "your configuration" for every part its saved configuration gives

    older = load_checkpoint(run_dir / "checkpoint_last.pt")
    del older["recipe"]  # a checkpoint from before the recipe was kept: every part is its configuration's
    torch.save(older, run_dir / "checkpoint_last.pt")
    resumed = next(e for e in train(quick_config(phantom_dataset), run_dir, resume=True) if isinstance(e, RunStarted))
    assert resumed.recipe[0] == "schedule: constant (your configuration)"


# -- a checkpoint write cut off ------------------------------------------------------------------------------------
def _train_args(tmp_path, phantom_dataset, run_dir):
    config = tmp_path / "quick.yaml"
    if not config.exists():
        quick_config(phantom_dataset, epochs=2, iterations=2).save(config)
    return ["train", "--config", str(config), "--out", str(run_dir), "--quiet"]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, phantom_dataset):
    """The run the faulted ones are compared with, uninterrupted."""
    folder = tmp_path_factory.mktemp("straight")
    assert main(_train_args(folder, phantom_dataset, folder / "run")) == 0
    return folder / "run"


@pytest.mark.parametrize("fault", ["full disk", "killed"])
def test_a_checkpoint_write_cut_off_keeps_the_last_one_and_the_run_resumes_to_the_same_weights(
        tmp_path, phantom_dataset, straight_run, monkeypatch, capsys, fault):
    run_dir = tmp_path / "run"
    save = torch.save

    def cut_off(payload, handle):  # epoch 2's checkpoint: half written, then the disk is full or the process ends
        if isinstance(payload, dict) and payload.get("epoch") == 2:
            handle.write(b"half a checkpoint")
            if fault == "full disk":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            raise SystemExit(143)  # as SIGTERM ends the command line
        save(payload, handle)

    monkeypatch.setattr(torch, "save", cut_off)
    if fault == "full disk":
        assert main(_train_args(tmp_path, phantom_dataset, run_dir)) == 2
        err = capsys.readouterr().err
        assert err.splitlines() == [f"napari-pgps train: error: cannot write {run_dir / 'checkpoint_last.pt'}: "
                                    f"{os.strerror(errno.ENOSPC)}; free space or choose another folder."]
    else:
        with pytest.raises(SystemExit):
            main(_train_args(tmp_path, phantom_dataset, run_dir))
    monkeypatch.undo()
    assert load_checkpoint(run_dir / "checkpoint_last.pt")["epoch"] == 1  # the last good one, loadable
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint_best.pt", "checkpoint_last.pt", "config.yaml",
                                                         "metrics.jsonl", "splits.json"]  # no half file, no lock

    assert main(["train", "--out", str(run_dir), "--resume", "--quiet"]) == 0
    resumed = load_checkpoint(run_dir / "checkpoint_final.pt")
    straight = load_checkpoint(straight_run / "checkpoint_final.pt")
    assert resumed["step"] == straight["step"] == 4 and _logged_steps(run_dir) == [1, 2, 3, 4]
    for name, weights in straight["model"].items():
        torch.testing.assert_close(resumed["model"][name], weights, rtol=1e-4, atol=1e-5)


def test_a_run_killed_while_writing_leaves_no_partial_file_for_the_next_one(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    leftover = run_dir / ".checkpoint_last.pt.k3j9x.tmp"  # what atomic_path leaves when killed mid-write
    leftover.write_bytes(b"half a checkpoint")
    kept = run_dir / "notes.txt"  # a user's file is not the run's to remove
    kept.write_text("mine")
    with claim(run_dir, resume=False):
        assert not leftover.exists()
    assert kept.read_text() == "mine"
