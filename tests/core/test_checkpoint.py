import pickle

import pytest
import torch

from napari_pgps.engine.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from napari_pgps.errors import CheckpointError, InputError


class _Payload:
    """Pickling this object would run code on load if the loader were unsafe."""

    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_round_trip(tmp_path):
    path = save_checkpoint({"config": {"a": [1, 2]}, "model": {"w": torch.ones(2)}, "epoch": 3}, tmp_path / "c.pt")
    payload = load_checkpoint(path)
    assert payload["epoch"] == 3 and payload["config"] == {"a": [1, 2]}
    torch.testing.assert_close(payload["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint({"config": {}, "model": {}, "epoch": 1}, tmp_path / "c.pt")

    def broken_save(obj, handle):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint({"config": {}, "model": {}, "epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_foreign_damaged_and_malicious_files_are_refused(tmp_path):
    torch.save({"weights": torch.ones(1)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a napari-pgps checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")

    good = save_checkpoint({"config": {}, "model": {}}, tmp_path / "good.pt")
    (tmp_path / "truncated.pt").write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(tmp_path / "truncated.pt")

    _Payload.marker = tmp_path / "code-ran"
    with open(tmp_path / "evil.pt", "wb") as handle:
        pickle.dump({"format": "napari-pgps-checkpoint", "config": _Payload(), "model": {}}, handle)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.pt")
    assert not _Payload.marker.exists()


def test_find_checkpoint(tmp_path):
    with pytest.raises(InputError, match="not found"):
        find_checkpoint(tmp_path / "nope")
    with pytest.raises(InputError, match="run folder"):
        find_checkpoint(tmp_path)
    save_checkpoint({"config": {}, "model": {}}, tmp_path / "checkpoint_last.pt")
    assert find_checkpoint(tmp_path).name == "checkpoint_last.pt"
    save_checkpoint({"config": {}, "model": {}}, tmp_path / "checkpoint_final.pt")
    assert find_checkpoint(tmp_path).name == "checkpoint_final.pt"


def _run(seed):
    """A stand-in for a training run (:class:`napari_pgps.engine.checkpoint.CheckpointedRun`): a tiny network with
    its optimiser, scheduler and scaler, a plug-in, progress, stages and random generators."""
    from types import SimpleNamespace

    import numpy as np

    from napari_pgps.config import RunConfig
    from napari_pgps.curriculum import Stage
    from napari_pgps.engine import distributed
    from napari_pgps.engine.averaging import WeightAverage
    from napari_pgps.engine.recipe import Choice
    from napari_pgps.plugins import TrainingPlugin

    class Counter(TrainingPlugin):
        name = "counter"

        def __init__(self):
            self.count = 0

        def state_dict(self):
            return {"count": self.count}

        def load_state_dict(self, state):
            self.count = state["count"]

    torch.manual_seed(seed)
    network = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(seed)
    config = RunConfig()
    return SimpleNamespace(
        config=config, network=network, weight_average=WeightAverage(network, config.training), optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=10),
        scaler=torch.amp.GradScaler("cuda", enabled=False), plugins=[Counter()], split={"training": ["a"], "validation": ["b"]},
        epoch=0, step=0, stages=(Stage((8, 8, 8), 2, 10),), training_seconds=0.0, best_mean_dice=-1.0, last_mean_dice=None,
        rng=rng, draw_rng=rng, context=distributed.SINGLE,
        recipe_choices=[Choice("schedule", "pgps-efficiency", "why"), Choice("length", "3 epochs", "", by_user=True)],
    )


def test_a_runs_checkpoint_round_trip_puts_back_its_states_progress_and_random_streams(tmp_path):
    from napari_pgps.curriculum import Stage
    from napari_pgps.engine.checkpoint import checkpoint_payload, restore

    run = _run(0)
    for _ in range(3):  # a few steps: the optimiser's momentum and the scheduler move
        run.optimizer.zero_grad()
        run.network(torch.randn(4, 3)).square().sum().backward()
        run.optimizer.step()
        run.scheduler.step()
        run.rng.random(5)
    run.plugins[0].count = 7
    run.epoch, run.step, run.training_seconds, run.best_mean_dice, run.last_mean_dice = 3, 12, 4.5, 0.6, 0.5
    run.stages = (Stage((8, 8, 8), 2, 3), Stage((16, 16, 16), 2, 4))  # as re-planned to a budget
    path = save_checkpoint(checkpoint_payload(run), tmp_path / "c.pt")
    then_torch, then_numpy = torch.rand(3), run.rng.random(3)  # the draws that follow the checkpoint

    back = _run(1)  # built as the checkpoint's run was, from other seeds
    payload = load_checkpoint(path)
    restore(back, payload)
    assert (back.epoch, back.step, back.training_seconds, back.best_mean_dice, back.last_mean_dice) == (3, 12, 4.5, 0.6, 0.5)
    assert back.stages == run.stages and back.plugins[0].count == 7 and payload["split"] == run.split
    assert payload["recipe"] == [{"part": "schedule", "value": "pgps-efficiency", "reason": "why", "by_user": False},
                                 {"part": "length", "value": "3 epochs", "reason": "", "by_user": True}]
    assert back.scheduler.state_dict() == run.scheduler.state_dict()
    momentum, saved = back.optimizer.state_dict()["state"], run.optimizer.state_dict()["state"]
    assert all(torch.equal(momentum[k]["momentum_buffer"], saved[k]["momentum_buffer"]) for k in saved)
    torch.testing.assert_close(payload["model"]["weight"], run.network.weight.detach())
    assert torch.equal(torch.rand(3), then_torch) and (back.rng.random(3) == then_numpy).all()  # the same streams on


def test_a_checkpoint_of_several_processes_is_refused_by_another_number():
    from napari_pgps.engine.checkpoint import restore_rng_states, rng_states

    run = _run(0)
    states = rng_states(run.rng, run.draw_rng)
    assert set(states) == {"torch", "cuda", "numpy"}  # one process: no per-rank states
    states["numpy_ranks"] = [states["numpy"]] * 2
    with pytest.raises(InputError, match="trained by 2 process"):
        restore_rng_states(states, run.rng, run.draw_rng)
