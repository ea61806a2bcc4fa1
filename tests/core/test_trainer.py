import json
import threading
import time

import numpy as np
import pytest
import torch
from helpers import first_run_event, quick_config, run_events

from napari_pgps import train
from napari_pgps.engine import TrainingControl, TrainingDiverged, load_checkpoint
from napari_pgps.errors import InputError
from napari_pgps.events import CheckpointSaved, Finished, Paused, Preparing, Resumed, RunStarted, StageStarted, StepDone, Validated


def test_events_files_and_checkpoint_contents(tmp_path, phantom_dataset, monkeypatch):
    monkeypatch.setenv("NAPARI_PGPS_CACHE", str(tmp_path / "cache"))  # a fresh cache: the data is prepared here
    run_dir = tmp_path / "run"
    everything = list(train(quick_config(phantom_dataset, epochs=2, iterations=3), run_dir))
    preparing = [e for e in everything if isinstance(e, Preparing)]
    assert [(e.task, e.done) for e in preparing] == [("fingerprint", i) for i in range(1, 7)] + [
        ("preprocessing", i) for i in range(1, 7)]
    events = run_events(everything)
    kinds = [type(e) for e in events]
    assert kinds[0] is RunStarted and kinds[1] is StageStarted and kinds[-1] is Finished
    assert kinds.count(StepDone) == 6 and kinds.count(Validated) == 2
    steps = [e for e in events if isinstance(e, StepDone)]
    assert [s.step for s in steps] == list(range(1, 7))
    assert all(s.patch == (8, 32, 32) and s.batch == 2 and s.seconds > 0 for s in steps)
    assert all(len(s.class_fractions) == 3 and sum(s.class_fractions) == pytest.approx(1) for s in steps)
    validated = [e for e in events if isinstance(e, Validated)]
    assert set(validated[-1].dice_per_label) == {"lesion", "vessel"}
    assert events[-1].stopped is False and events[-1].checkpoint.endswith("checkpoint_final.pt")

    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["event"] for line in lines] == [k.__name__ for k in kinds]
    assert (run_dir / "config.yaml").is_file()
    payload = load_checkpoint(run_dir / "checkpoint_final.pt")
    assert payload["epoch"] == 2 and payload["step"] == 6
    assert payload["config"]["labels"] == {0: "background", 1: "lesion", 2: "vessel"}
    assert payload["config"]["model"]["spacing"] == pytest.approx([2.5, 0.8, 0.8])
    assert [n["scheme"] for n in payload["config"]["normalization"]] == ["zscore"]
    assert {"optimizer", "scheduler", "rng"} <= set(payload)


def test_loss_falls(phantom_dataset):
    config = quick_config(phantom_dataset, epochs=4, iterations=8)
    config.training.validate_every = 10
    losses = [e.loss for e in train(config) if isinstance(e, StepDone)]
    assert np.mean(losses[-6:]) < 0.8 * np.mean(losses[:6])


def test_stop_lands_within_one_step_and_keeps_the_last_checkpoint(tmp_path, phantom_dataset):
    run_dir = tmp_path / "run"
    control = TrainingControl()
    after_stop = []
    for event in train(quick_config(phantom_dataset, epochs=3, iterations=3), run_dir, control=control):
        if control.stop_requested:
            after_stop.append(event)
        if isinstance(event, StepDone) and event.step == 4:
            control.stop()
    assert len(after_stop) == 1 and isinstance(after_stop[0], Finished)
    assert after_stop[0].stopped and after_stop[0].epochs_completed == 1
    assert not (run_dir / "checkpoint_final.pt").exists()
    assert load_checkpoint(run_dir / "checkpoint_last.pt")["epoch"] == 1

    resumed = list(train(quick_config(phantom_dataset), run_dir, resume=True))
    assert resumed[0].start_epoch == 1
    steps = [e.step for e in resumed if isinstance(e, StepDone)]
    assert steps == list(range(4, 10))
    assert resumed[-1].stopped is False and resumed[-1].epochs_completed == 3


def test_resumed_run_matches_an_uninterrupted_one(tmp_path, phantom_dataset):
    config = quick_config(phantom_dataset, epochs=2, iterations=3)
    for _ in train(config, tmp_path / "straight"):
        pass
    control = TrainingControl()
    for event in train(config, tmp_path / "split", control=control):
        if isinstance(event, CheckpointSaved) and event.epoch == 1:
            control.stop()
    for _ in train(config, tmp_path / "split", resume=True):
        pass
    straight = load_checkpoint(tmp_path / "straight" / "checkpoint_final.pt")["model"]
    split = load_checkpoint(tmp_path / "split" / "checkpoint_final.pt")["model"]
    for name in straight:
        torch.testing.assert_close(split[name], straight[name], rtol=1e-4, atol=1e-5)


def test_a_resumed_run_follows_its_stages_as_last_laid_out(tmp_path, phantom_dataset):
    """A run re-planned to its budget lays its stages out again (not by the rule for its epochs); the checkpoint
    keeps that layout and a resumed run follows it."""
    from napari_pgps.engine.checkpoint import save_checkpoint

    config = quick_config(phantom_dataset, epochs=4, iterations=1)
    config.curriculum.schedule = "pgps-efficiency"
    control = TrainingControl()
    first = []
    for event in train(config, tmp_path / "run", control=control):
        first.append(event)
        if isinstance(event, CheckpointSaved) and event.epoch == 1:
            control.stop()
    state = load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")
    assert state["epoch"] == 1 and {e.epoch for e in first if isinstance(e, StepDone)} == {0}
    final = state["stages"][-1]
    state["stages"] = [state["stages"][0], [*final[:4], 3]]  # as a re-plan lays them out: the final patch from epoch 1
    save_checkpoint(state, tmp_path / "run" / "checkpoint_last.pt")
    resumed = [e for e in train(config, tmp_path / "run", resume=True) if isinstance(e, StepDone)]
    assert [e.patch for e in resumed] == [tuple(final[:3])] * 3


def test_pause_holds_training_until_resumed(phantom_dataset):
    control = TrainingControl()
    seen = []
    paused_at = None
    for event in train(quick_config(phantom_dataset, epochs=1, iterations=3), control=control):
        seen.append(type(event))
        if isinstance(event, StepDone) and event.step == 1:
            control.pause()
            threading.Timer(0.4, control.resume).start()
        if isinstance(event, Paused):
            paused_at = time.perf_counter()
        if isinstance(event, Resumed):
            assert time.perf_counter() - paused_at >= 0.35
    i = seen.index(Paused)
    assert seen[i + 1] is Resumed and seen[i - 1] is StepDone and seen[i + 2] is StepDone


def test_divergence_is_reported(phantom_dataset):
    config = quick_config(phantom_dataset, epochs=1, iterations=6)
    config.training.optimizer = "sgd"
    config.training.learning_rate = 1e30
    config.training.gradient_clip = 1e30
    with pytest.raises(TrainingDiverged, match="diverged at step .* lower learning rate"):
        for _ in train(config):
            pass


def test_a_patch_the_network_cannot_take_is_refused_before_writing(tmp_path, phantom_dataset):
    config = quick_config(phantom_dataset)
    config.model.patch_size = (9, 32, 32)
    with pytest.raises(InputError, match="cannot be taken.*Try 10 32 32"):
        first_run_event(train(config, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_monai_unet_is_selectable_end_to_end(tmp_path, phantom_dataset):
    from napari_pgps.engine import load_model

    config = quick_config(phantom_dataset, epochs=1, iterations=2)
    config.model.architecture = "unet"
    events = list(train(config, tmp_path / "run"))
    assert events[-1].stopped is False
    model = load_model(tmp_path / "run", "cpu")
    assert type(model.network).__name__ == "UNet"


@pytest.mark.parametrize("native_bf16, arithmetic", [(True, "bf16 autocast"), (False, "fp32")])
def test_a_cpu_run_names_the_arithmetic_of_its_steps(phantom_dataset, monkeypatch, native_bf16, arithmetic):
    """The same command is about twice as fast where the CPU has native bf16: the run says which it got."""
    from napari_pgps.engine import device

    monkeypatch.setattr(device, "native_bf16", lambda: native_bf16)
    config = quick_config(phantom_dataset, epochs=1, iterations=1)
    config.training.device = "cpu"
    assert first_run_event(train(config)).device == f"CPU ({torch.get_num_threads()} threads, {arithmetic})"
    config.training.mixed_precision = False
    assert first_run_event(train(config)).device.endswith(", fp32)")


def test_fp32_cpu_steps_run_channels_last_with_the_losses_of_contiguous_steps(phantom_dataset, monkeypatch):
    from napari_pgps.engine import trainer

    config = quick_config(phantom_dataset, epochs=1, iterations=3)
    config.training.device, config.training.mixed_precision = "cpu", False
    chosen, original = [], trainer.training_memory_format
    monkeypatch.setattr(trainer, "training_memory_format", lambda *args: chosen.append(original(*args)) or chosen[-1])
    channels_last = [e.loss for e in train(config) if isinstance(e, StepDone)]
    monkeypatch.setattr(trainer, "training_memory_format", lambda *args: torch.contiguous_format)
    contiguous = [e.loss for e in train(config) if isinstance(e, StepDone)]
    assert chosen == [torch.channels_last_3d]
    assert len(channels_last) == 3 and channels_last == pytest.approx(contiguous, rel=1e-4)
