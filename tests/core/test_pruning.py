"""PSP-Seg's PRM network and progressive pruning, and Torch-Pruning channel pruning."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import first_run_event, quick_config

from napari_pgps.config import ModelConfig, PruningConfig, RunConfig
from napari_pgps.models import build_network
from napari_pgps.models.prm import ALL_KERNELS, VARIANTS, ParallelRedundantModule, Upsample
from napari_pgps.pruning.channels import prune_channels
from napari_pgps.pruning.progressive import ProgressivePruner, branch_scores, choose_branches


def _prm_config(levels: int = 4) -> ModelConfig:
    from napari_pgps.models.prm import resolve_prm

    model = ModelConfig(architecture="prm", patch_size=(16, 32, 32), out_channels=3)
    model.strides = [(1, 1, 1)] + [(2, 2, 2)] * (levels - 1)
    model.kernel_sizes = [(3, 3, 3)] * levels
    resolve_prm(model)
    return model


def _trained_like(module: torch.nn.Module) -> torch.nn.Module:
    """Non-zero branch scales (a fresh PRM is the identity: every scale starts at 0)."""
    torch.manual_seed(0)
    for name, p in module.named_parameters():
        if name.endswith("scale"):
            p.data.uniform_(0.5, 1.5)
    return module.eval()


def test_masking_a_branch_removes_exactly_its_contribution_and_unmasking_restores_the_output():
    torch.manual_seed(0)
    prm = _trained_like(ParallelRedundantModule(8, 4, ALL_KERNELS[:4]))
    x = torch.randn(2, 8, 6, 8, 8)
    full = prm(x)
    parts = [b(x) for b in prm.branches]
    prm.set_mask([1, 3])
    masked = prm(x)
    assert torch.allclose(masked, F.leaky_relu(x + parts[0] + parts[2], 0.01), atol=1e-6)
    assert not torch.allclose(masked, full, atol=1e-3)
    prm.set_mask([])
    assert torch.equal(prm(x), full)


def test_s_variant_starts_with_the_point_and_planar_kernels_and_upsampling_is_conv_then_nearest():
    assert VARIANTS["S"].kernels == ((1, 1, 1), (1, 3, 3), (3, 1, 3), (3, 3, 1))
    torch.manual_seed(0)
    up = Upsample(8, 4, (1, 2, 2))
    x = torch.randn(2, 8, 3, 4, 5)
    upsampled_first = F.conv3d(F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest"), up.conv.weight)
    assert up(x).shape == (2, 4, 3, 8, 10)
    assert torch.allclose(up(x), upsampled_first, atol=1e-6)


def test_physical_removal_keeps_the_masked_networks_output_and_the_config_rebuilds_it():
    model = _prm_config()
    network = _trained_like(build_network(model))
    x = torch.randn(1, 1, 16, 32, 32)
    prms = network.prms()
    prms[0].set_mask([0, 2])
    prms[-2].set_mask([1])
    masked = network(x)
    before = sum(p.numel() for p in network.parameters())
    removed = [p for prm in prms for p in prm.remove_masked()]
    after = sum(p.numel() for p in network.parameters())
    assert after == before - sum(p.numel() for p in removed) and after < before
    assert torch.allclose(network(x), masked, atol=1e-6)
    assert [len(k) for k in network.branch_kernels()] == [2, 4, 4, 3, 4]

    model.prm_branches = network.branch_kernels()
    rebuilt = build_network(model, network.state_dict()).eval()
    assert torch.allclose(rebuilt(x), masked, atol=1e-6)


def test_calibration_picks_the_branches_that_change_the_output_least_and_keeps_a_minimum():
    network = _trained_like(build_network(_prm_config(levels=3)))
    for prm in network.prms():
        prm.branches[1].scale.data.fill_(1e-4)  # almost no contribution
    scores = branch_scores(network, [torch.randn(1, 1, 16, 32, 32)])
    chosen = choose_branches(scores, network, count=len(network.prms()), min_branches=1)
    assert sorted(chosen) == [(p, 1) for p in range(len(network.prms()))]
    everything = choose_branches(scores, network, count=100, min_branches=3)
    assert all(sum(1 for p, _ in everything if p == i) == 1 for i in range(len(network.prms())))


OUR_EARLIER_CHOICES = dict(selection="global", judge="next-epoch", rollback="halve", min_branches=1)
"""The options that give the pruning of before the reference's behaviour became the default."""


def test_a_prune_that_degrades_the_loss_is_rolled_back_and_the_step_halves():
    network = _trained_like(build_network(_prm_config(levels=3)))
    optimizer = torch.optim.AdamW(network.parameters())
    pruner = ProgressivePruner(network, PruningConfig(enabled=True, prune_step=2, patience=0, **OUR_EARLIER_CHOICES),
                               epochs=10)
    batches = lambda: [torch.randn(1, 1, 16, 32, 32)]  # noqa: E731
    pruner.end_epoch(0, {"segmentation": 1.0})
    actions = pruner.start_epoch(1, batches, optimizer)
    assert [a.action for a in actions] == ["masked"] and len(actions[0].branches) == 2
    pruner.end_epoch(1, {"segmentation": 1.5})  # worse than the minimum before the mask
    actions = pruner.start_epoch(2, batches, optimizer)
    assert [a.action for a in actions] == ["restored", "masked"]
    assert pruner.prune_step == 1 and len(actions[1].branches) == 1
    assert sum(len(prm.branches) - int(prm.mask.sum()) for prm in network.prms()) == 1
    parameters = sum(p.numel() for p in network.parameters())
    pruner.end_epoch(2, {"segmentation": 0.9})  # better: the cut is kept
    actions = pruner.start_epoch(3, batches, optimizer)
    assert actions[0].action == "removed" and actions[0].parameters < parameters
    kept = {id(p) for p in network.parameters()}
    assert all(id(p) in kept for group in optimizer.param_groups for p in group["params"])
    assert pruner.start_epoch(4, batches, optimizer)[0].action in ("removed", "restored")


def test_no_pruning_after_the_stop_fraction():
    network = build_network(_prm_config(levels=3))
    pruner = ProgressivePruner(network, PruningConfig(enabled=True, patience=0, stop_fraction=0.4), epochs=10)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    assert pruner.last_epoch == 4
    for epoch in range(4):
        pruner.end_epoch(epoch, {"segmentation": 1.0, "total": 1.0})
    assert pruner.start_epoch(4, lambda: [torch.randn(1, 1, 16, 32, 32)], optimizer) == []


@pytest.mark.parametrize("schedule", ["constant", "pgps-efficiency"])
def test_progressive_training_prunes_and_its_checkpoint_segments(phantom_dataset, tmp_path, schedule):
    from napari_pgps import train
    from napari_pgps.cli import main
    from napari_pgps.engine import load_model
    from napari_pgps.events import PruningStep

    config = quick_config(phantom_dataset, epochs=6, iterations=2)
    config.curriculum.schedule = schedule
    config.model.architecture = "prm"
    config.pruning.enabled = True
    config.pruning.patience = 0  # a convergence event at every epoch start
    config.pruning.tolerance = 1e9  # every cut holds: two branches of every PRM go at each event, until none is left
    config.pruning.stop_fraction = 0.9
    config.pruning.calibration_batches = 2
    steps = [e for e in train(config, tmp_path / "run") if isinstance(e, PruningStep)]
    assert steps[0].action == "masked" and any(s.action == "removed" for s in steps)
    model = load_model(tmp_path / "run")
    assert model.config.model.prm_downsampling == "residual" and model.config.model.prm_skips == "add"
    assert model.config.model.prm_branches == [[]] * len(model.config.model.prm_branches)
    written = RunConfig.load(tmp_path / "run" / "config.yaml")  # the folder's config says what the checkpoint holds
    assert written.model.prm_branches == model.config.model.prm_branches and written.to_dict() == model.config.to_dict()
    assert sum(p.numel() for p in model.network.parameters()) == [s for s in steps if s.action == "removed"][-1].parameters
    image = phantom_dataset / "imagesTr" / "case_000.nii.gz"
    assert main(["segment", "--model", str(tmp_path / "run"), "--input", str(image), "--output", str(tmp_path / "seg.nii.gz")]) == 0
    assert (tmp_path / "seg.nii.gz").is_file()


def test_channel_pruned_network_rebuilds_from_its_state_dict_alone():
    model = ModelConfig(patch_size=(16, 32, 32), out_channels=3, kernel_sizes=[(3, 3, 3)] * 3,
                        strides=[(1, 1, 1), (2, 2, 2), (2, 2, 2)], channels=[8, 16, 32])
    network = build_network(model).train()
    before = sum(p.numel() for p in network.parameters())
    assert list(prune_channels(network, torch.randn(1, 1, 16, 32, 32), ratio=0.5, steps=2)) == [1, 2]
    assert sum(p.numel() for p in network.parameters()) < 0.35 * before
    assert network.training
    x = torch.randn(1, 1, 16, 32, 32)
    expected = network.eval()(x)
    model.channels_pruned = True
    rebuilt = build_network(model, network.state_dict()).eval()
    assert torch.allclose(rebuilt(x), expected, atol=1e-5)
    with pytest.raises(RuntimeError):
        build_network(ModelConfig(**{**model.__dict__, "channels_pruned": False}), network.state_dict())


def test_channel_pruning_keeps_dice_after_fine_tune(phantom_dataset, tmp_path):
    from napari_pgps import train
    from napari_pgps.events import ChannelPruningStep, PruningReport
    from napari_pgps.tasks.pruning import prune_trained_model

    config = quick_config(phantom_dataset, epochs=8, iterations=6)
    config.model.base_channels = 16
    for _ in train(config, tmp_path / "run"):
        pass
    events = list(prune_trained_model(tmp_path / "run", phantom_dataset, tmp_path / "pruned", ratio=0.5, steps=2,
                                      fine_tune_epochs=6, device="cpu"))
    steps = [e for e in events if isinstance(e, ChannelPruningStep)]
    assert [s.step for s in steps] == [1, 2] and steps[-1].parameters < steps[0].parameters
    report = events[-1]
    assert isinstance(report, PruningReport)
    before, after = report.before, report.after
    assert after["parameters"] < 0.35 * before["parameters"] and after["gflops"] < 0.5 * before["gflops"]
    assert before["mean_dice"] > 0.3, "the source model should have learned the phantoms"
    assert after["mean_dice"] >= before["mean_dice"] - 0.1
    assert math.isfinite(after["segment_seconds"]) and (tmp_path / "pruned" / "pruning_report.md").is_file()


def test_prune_command_refuses_bad_input_with_a_clear_message(trained_phantom_run, phantom_dataset, tmp_path, capsys):
    from napari_pgps.cli import main

    common = ["--data", str(phantom_dataset), "--out", str(tmp_path / "out")]
    assert main(["prune", *common]) == 2
    assert "either --model" in capsys.readouterr().err
    assert main(["prune", "--model", str(trained_phantom_run), "--progressive", *common]) == 2
    capsys.readouterr()
    assert main(["prune", "--model", str(trained_phantom_run), "--ratio", "1.5", *common]) == 2
    assert "between 0 and 1" in capsys.readouterr().err
    assert main(["prune", "--model", str(tmp_path / "missing"), *common]) == 2
    assert "model not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_progressive_pruning_trains_the_prm_network_and_refuses_another(phantom_dataset):
    from napari_pgps import train
    from napari_pgps.errors import InputError

    config = quick_config(phantom_dataset)
    config.pruning.enabled = True
    started = first_run_event(train(config))
    assert started.architecture == "prm"
    config.model.architecture = "dynunet"
    with pytest.raises(InputError, match="--architecture prm"):
        first_run_event(train(config))


def test_the_decoupling_loss_counts_ignore_label_voxels_as_background():
    from napari_pgps.pruning.decoupling import decoupling_terms

    network = _trained_like(build_network(_prm_config()))  # 3 classes: indices 0, 1, 2; 3 is the ignore label
    torch.manual_seed(1)
    images = torch.randn(1, 1, 16, 32, 32)
    labels = torch.zeros(1, 1, 16, 32, 32, dtype=torch.long)
    labels[..., 4:10, 8:20, 8:20] = 1
    ignored = labels.clone()
    ignored[..., 10:14, :, :] = 3
    terms = [decoupling_terms(network, images, each, network.encode(images), network.decode(network.encode(images)))
             for each in (labels, ignored)]
    torch.testing.assert_close(terms[0], terms[1])
