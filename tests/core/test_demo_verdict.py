"""The demo says plainly whether its model segments, and why not when it does not (issue 33)."""

from __future__ import annotations

import types
from pathlib import Path

from napari_pgps.demo import WORKING_DICE, demo_verdict
from napari_pgps.engine.budget import MIN_STEPS


def _progress(steps, seconds_a_step):
    return types.SimpleNamespace(steps_done=steps, training_seconds=steps * seconds_a_step)


def test_a_demo_model_that_learnt_says_so():
    working, line = demo_verdict(0.83, _progress(400, 0.25), Path("demo/data"), load=(0.5, 2))
    assert working and line.startswith("the model segments the unseen phantom (mean Dice 0.83")


def test_a_starved_demo_model_says_it_did_not_learn_why_and_what_to_do():
    working, line = demo_verdict(0.006, _progress(1, 6.0), Path("demo/data"), load=(3.9, 2))  # the run
    assert not working
    assert "did NOT learn to segment in the 2 minutes it had (mean Dice 0.01" in line and f"under {WORKING_DICE}" in line
    assert f"trained 1 step at 6.00 s a step, fewer than the {MIN_STEPS} a model needs" in line
    assert "the machine was busy (load 3.9 on 2 CPU cores" in line
    assert "when the machine is not busy" in line and "--data demo/data" in line and "--time-budget" in line

    working, line = demo_verdict(0.7, _progress(MIN_STEPS - 1, 0.5), Path("d"), load=(1.0, 2))  # lucky, but too few
    assert not working and "too few steps to be relied on" in line and "busy" not in line.split("Run the demo")[0]
    working, line = demo_verdict(0.3, _progress(2 * MIN_STEPS, 0.5), Path("d"))  # enough steps, no load known
    assert not working and "fewer than" not in line and "under 0.5" in line
