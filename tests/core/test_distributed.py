"""The pieces of DDP training that run in one process: torchrun's environment, batch split, random streams, loss.

Two real ranks under torchrun are in tests/integration/test_ddp_torchrun.py.
"""

import numpy as np
import pytest
import torch

from napari_pgps.cli import main
from napari_pgps.engine import distributed
from napari_pgps.engine.distributed import DistributedContext
from napari_pgps.engine.losses import training_loss
from napari_pgps.errors import InputError


def test_the_context_comes_from_torchrun_environment():
    alone = distributed.context_from_env({})
    assert alone == distributed.SINGLE and not alone.enabled and alone.is_main
    context = distributed.context_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert context == DistributedContext(3, 4, 1, 2, launched=True) and context.enabled and not context.is_main
    assert distributed.context_from_env({"RANK": "0", "WORLD_SIZE": "1"}).enabled  # torchrun with one process: DDP all the same
    with pytest.raises(InputError, match="not understood"):
        distributed.context_from_env({"RANK": "zero", "WORLD_SIZE": "2"})
    with pytest.raises(InputError, match="inconsistent"):
        distributed.context_from_env({"RANK": "2", "WORLD_SIZE": "2"})


def test_one_process_joins_no_group_and_keeps_its_device(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    with distributed.process_group(torch.device("cpu")) as (context, device):
        assert context == distributed.SINGLE and device == torch.device("cpu")
        assert not torch.distributed.is_initialized()


def test_the_global_batch_is_split_as_evenly_as_possible():
    shares = [distributed.split_batch(7, DistributedContext(r, 3)) for r in range(3)]
    assert shares == [3, 2, 2]
    assert distributed.split_batch(5, distributed.SINGLE) == 5
    assert [distributed.batch_share(7, DistributedContext(r, 3)) for r in range(3)] == [range(0, 3), range(3, 5),
                                                                                         range(5, 7)]
    assert distributed.batch_share(5, distributed.SINGLE) == range(5)
    distributed.check_batch(3, DistributedContext(0, 3))
    with pytest.raises(InputError, match=r"smaller than the number of processes \(4\).*--batch-size 4"):
        distributed.check_batch(2, DistributedContext(0, 4))


def test_validation_shards_come_back_in_case_order(monkeypatch):
    cases = list("abcdefg")
    shards = [distributed.shard(cases, DistributedContext(r, 3)) for r in range(3)]
    assert shards == [["a", "d", "g"], ["b", "e"], ["c", "f"]]
    monkeypatch.setattr(distributed, "gather_objects", lambda local, context: shards)
    assert distributed.unshard(shards[1], DistributedContext(1, 3)) == cases


def test_one_process_keeps_one_random_stream_and_ranks_get_their_own_sampler_stream():
    sampler, schedule = distributed.generators(5, distributed.SINGLE)
    assert sampler is schedule
    assert sampler.integers(1 << 30) == np.random.default_rng(5).integers(1 << 30)
    pairs = [distributed.generators(5, DistributedContext(r, 2)) for r in range(2)]
    assert pairs[0][0].integers(1 << 30, size=4).tolist() != pairs[1][0].integers(1 << 30, size=4).tolist()
    assert pairs[0][1].integers(1 << 30, size=4).tolist() == pairs[1][1].integers(1 << 30, size=4).tolist()


@pytest.mark.parametrize("deep_supervision", [True, False])
def test_the_loss_is_monai_dice_ce_bit_for_bit_in_one_process(deep_supervision):
    from monai.losses import DeepSupervisionLoss, DiceCELoss

    monai = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)
    generator = torch.Generator().manual_seed(0)
    heads = [torch.randn((3, 3, 8, 12, 12), generator=generator, requires_grad=True) for _ in range(3 if deep_supervision else 1)]
    target = torch.randint(0, 3, (3, 1, 8, 12, 12), generator=generator)
    expected = DeepSupervisionLoss(monai, weight_mode="exp")(heads, target) if deep_supervision else monai(heads[0], target)
    ours = training_loss(deep_supervision)(heads, target)
    assert torch.equal(ours, expected)
    for mine, theirs in zip(torch.autograd.grad(ours, heads), torch.autograd.grad(expected, heads)):
        assert torch.equal(mine, theirs)


def test_the_command_line_prints_nothing_on_ranks_other_than_zero(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("RANK", "1")
    assert main(["schedule", "--final-patch", "16", "16", "16", "--poolings", "2", "2", "2", "--epochs", "4",
                 "--batch-size", "2", "--mode", "pgps-efficiency"]) == 0
    assert main(["train", "--out", str(tmp_path / "run")]) == 2  # no --data: an input error, reported by rank 0 only
    assert capsys.readouterr() == ("", "")
    monkeypatch.setenv("RANK", "0")
    assert main(["train", "--out", str(tmp_path / "run")]) == 2
    assert "no training data" in capsys.readouterr().err
