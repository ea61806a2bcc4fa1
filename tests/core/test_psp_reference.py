"""PSP-Seg pruning and network as the reference code does them (the defaults), and the old choices as options."""

from __future__ import annotations

import dataclasses
import types
from typing import Optional

import pytest
import torch
import torch.nn.functional as F
from helpers import quick_config

from napari_pgps.config import ModelConfig, PruningConfig, RunConfig
from napari_pgps.models import build_network
from napari_pgps.models.prm import ParallelRedundantModule, ResidualDownsample, resolve_prm
from napari_pgps.pruning import progressive
from napari_pgps.pruning.progressive import (
    ProgressivePruner,
    branch_scores,
    choose_branches,
    choose_combinations,
    combination_scores,
)

X = (1, 1, 16, 32, 32)


def _model(levels: int = 3, **layout) -> ModelConfig:
    model = ModelConfig(architecture="prm", patch_size=X[2:], out_channels=3, **layout)
    model.strides = [(1, 1, 1)] + [(2, 2, 2)] * (levels - 1)
    model.kernel_sizes = [(3, 3, 3)] * levels
    resolve_prm(model)
    return model


def _pruner(network, epochs: int = 100, **options) -> ProgressivePruner:
    return ProgressivePruner(network, PruningConfig(enabled=True, **options), epochs=epochs)


def _losses(total: float, foreground: Optional[float] = None) -> dict[str, float]:
    """An epoch's losses as the plug-in reports them: the feature loss as the total, the foreground one too unless given."""
    return {"segmentation": total, "total": total, "feature": total, "foreground": total if foreground is None else foreground}


def test_the_defaults_are_the_reference_s():
    config = PruningConfig()
    assert (config.selection, config.judge, config.rollback, config.min_branches, config.patience, config.retrain) == (
        "per-prm", "convergence", "decrement", 0, 10, False)
    model = _model()
    assert (model.prm_downsampling, model.prm_skips) == ("residual", "add")


# -- selection ---------------------------------------------------------------------
def _cancelling_network():
    """Every PRM: branches 0 and 1 cancel each other exactly, branches 2 and 3 are weak alone."""
    model = _model()
    model.prm_branches = [[(1, 1, 1), (1, 1, 1), (1, 3, 3), (3, 1, 3)] for _ in model.prm_branches]
    network = build_network(model).eval()
    torch.manual_seed(0)
    for prm in network.prms():
        a, b, c, d = prm.branches
        b.load_state_dict(a.state_dict())
        a.scale.data.fill_(1.0)
        b.scale.data.fill_(-1.0)
        c.scale.data.fill_(0.05)
        d.scale.data.fill_(0.05)
    return network


def test_joint_selection_masks_the_combination_that_matters_least_together_in_every_prm():
    network = _cancelling_network()
    batches = [torch.randn(*X)]
    scores = combination_scores(network, batches, size=2, min_branches=0)
    assert sorted(scores) == list(range(len(network.prms())))
    assert choose_combinations(scores) == [(p, b) for p in range(len(network.prms())) for b in (0, 1)]
    # scored alone, the same branches matter most: the global choice takes the weak ones
    single = branch_scores(network, batches)
    count = 2 * len(network.prms())
    assert choose_branches(single, network, count, min_branches=0) == [(p, b) for p in range(len(network.prms())) for b in (2, 3)]


def test_the_pruner_masks_prune_step_branches_of_every_prm_from_the_scores(monkeypatch):
    network = build_network(_model())
    prms = network.prms()
    given = {p: {(0, 1): 3.0, (0, 2): 1.0 + 2 * p, (1, 3): 2.0, (2, 3): 2.5} for p in range(len(prms))}  # stub: known scores
    asked = []
    monkeypatch.setattr(progressive, "combination_scores", lambda net, batches, size, least: asked.append((size, least)) or given)
    pruner = _pruner(network, patience=0)
    pruner.end_epoch(0, _losses(1.0))
    actions = pruner.start_epoch(1, lambda: [], torch.optim.SGD(network.parameters(), lr=0.1))
    assert [a.action for a in actions] == ["masked"] and asked == [(2, 0)]
    expected = [[0, 1, 0, 1] if p == 0 else [1, 0, 1, 0] for p in range(len(prms))]  # PRM 0: (0, 2) at 1.0; others: (1, 3) at 2.0
    assert [prm.mask.tolist() for prm in prms] == expected


def test_a_prm_with_fewer_than_prune_step_branches_is_left_alone_and_min_branches_holds():
    network = build_network(_model())
    first = network.prms()[0]
    first.set_mask([0, 1, 2])
    first.remove_masked()
    scores = combination_scores(network, [torch.randn(*X)], size=2, min_branches=0)
    assert 0 not in scores and len(scores) == len(network.prms()) - 1
    assert combination_scores(network, [torch.randn(*X)], size=2, min_branches=3) == {}


# -- judgement at convergence events -------------------------------------------------
def test_masks_wait_for_a_convergence_event_and_are_judged_there_on_all_three_losses():
    network = build_network(_model())
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    pruner = _pruner(network)  # patience 10, as the reference
    batches = lambda: [torch.randn(*X)]  # noqa: E731
    pruner.end_epoch(0, _losses(1.0))
    for epoch in range(1, 11):  # no new minimum after epoch 0, but not yet 10 epochs without one
        assert pruner.start_epoch(epoch, batches, optimizer) == []
        pruner.end_epoch(epoch, _losses(1.1))
    actions = pruner.start_epoch(11, batches, optimizer)
    assert [a.action for a in actions] == ["masked"] and len(actions[0].branches) == 2 * len(network.prms())
    masks = [prm.mask.tolist() for prm in network.prms()]
    # the segmentation and total losses get better, the foreground loss worse: no decision before the next event
    for epoch in range(11, 22):
        pruner.end_epoch(epoch, _losses(0.5 + 0.01 * epoch, foreground=1.5 + 0.01 * epoch))
        if epoch < 21:
            assert pruner.start_epoch(epoch + 1, batches, optimizer) == []
            assert [prm.mask.tolist() for prm in network.prms()] == masks
    actions = pruner.start_epoch(22, batches, optimizer)
    assert [a.action for a in actions] == ["restored"]  # one judged loss got worse; no new mask at a rollback
    assert all(prm.mask.tolist() == [1.0] * 4 for prm in network.prms()) and pruner.prune_step == 1


def test_a_kept_cut_is_removed_at_the_event_and_the_next_mask_placed_there():
    network = build_network(_model())
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    pruner = _pruner(network, patience=2)
    batches = lambda: [torch.randn(*X)]  # noqa: E731
    losses = [1.0, 1.1, 1.1, 0.9, 1.0, 1.0]  # an event at epoch 3 (masks), the cut holds (0.9 < 1.0), event at 6
    actions = []
    for epoch, loss in enumerate(losses):
        actions.append([a.action for a in pruner.start_epoch(epoch, batches, optimizer)])
        pruner.end_epoch(epoch, _losses(loss))
    actions.append([a.action for a in pruner.start_epoch(len(losses), batches, optimizer)])
    assert actions == [[], [], [], ["masked"], [], [], ["removed", "masked"]]
    assert [len(prm.branches) for prm in network.prms()] == [2] * len(network.prms())


def test_decrement_stops_pruning_at_zero_and_halve_keeps_one():
    def rolled_back(rollback: str, step: int) -> ProgressivePruner:
        network = build_network(_model())
        pruner = _pruner(network, prune_step=step, patience=0, rollback=rollback)
        optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
        pruner.end_epoch(0, _losses(1.0))
        assert pruner.start_epoch(1, lambda: [torch.randn(*X)], optimizer)[0].action == "masked"
        pruner.end_epoch(1, _losses(2.0))
        assert pruner.start_epoch(2, lambda: [torch.randn(*X)], optimizer)[0].action == "restored"
        pruner.end_epoch(2, _losses(0.5))
        return pruner, pruner.start_epoch(3, lambda: [torch.randn(*X)], optimizer)

    pruner, actions = rolled_back("decrement", 1)
    assert pruner.prune_step == 0 and actions == []
    pruner, actions = rolled_back("halve", 1)
    assert pruner.prune_step == 1 and [a.action for a in actions] == ["masked"]


def test_a_pruner_state_from_before_the_options_resumes_with_the_old_choices():
    network = build_network(_model())
    config = PruningConfig(enabled=True)
    pruner = ProgressivePruner(network, config, epochs=10)
    pruner.load_state_dict({"prune_step": 1, "best_losses": {"segmentation": 0.5}, "last_improvement": 3,
                            "pending": {"branches": [[0, 1]], "loss_before": 0.5, "loss_since": 0.7}})
    assert (config.selection, config.judge, config.rollback) == ("global", "next-epoch", "halve")
    assert pruner.pending.before == {"segmentation": 0.5} and pruner.pending.since == {"segmentation": 0.7}
    again = ProgressivePruner(network, PruningConfig(enabled=True), epochs=10)
    again.load_state_dict(pruner.state_dict())
    assert again.config.judge == "convergence" and again.pending.branches == [(0, 1)]


def test_unknown_options_are_refused():
    from napari_pgps.errors import InputError

    with pytest.raises(InputError, match="pruning.judge"):
        _pruner(build_network(_model()), judge="sometimes")


# -- empty PRMs ----------------------------------------------------------------------
def test_an_empty_prm_passes_its_input_on_and_the_network_trains_and_rebuilds_from_its_config():
    empty = ParallelRedundantModule(4, 2, [])
    x = torch.randn(2, 4, 3, 4, 4)
    assert torch.equal(empty(x), x)  # the identity, as the reference: no activation

    model = _model()
    network = build_network(model)
    for prm in network.prms()[::2]:
        prm.set_mask(range(len(prm.branches)))
        prm.remove_masked()
    model.prm_branches = network.branch_kernels()
    assert model.prm_branches[0] == [] and model.prm_branches[1] != []
    network.train()
    network(torch.randn(*X)).sum().backward()
    network.eval()
    x = torch.randn(*X)
    saved = RunConfig(model=model).to_dict()
    rebuilt = build_network(RunConfig.from_dict(saved).model, network.state_dict()).eval()
    assert torch.allclose(rebuilt(x), network(x), atol=1e-6)


def test_joint_selection_can_empty_a_prm():
    network = build_network(_model())
    for prm in network.prms():
        prm.set_mask([0, 1])
        prm.remove_masked()
    scores = combination_scores(network, [torch.randn(*X)], size=2, min_branches=0)
    assert choose_combinations(scores) == [(p, b) for p in range(len(network.prms())) for b in (0, 1)]


# -- network layout ------------------------------------------------------------------
def test_residual_downsampling_is_two_3x3x3_convs_with_a_strided_1x1x1_bypass():
    torch.manual_seed(0)
    down = ResidualDownsample(8, 16, (1, 2, 2)).eval()
    x = torch.randn(2, 8, 5, 8, 9)
    y = down(x)
    assert y.shape == (2, 16, 5, 4, 5)
    assert [tuple(c.kernel_size) for c in down.body if isinstance(c, torch.nn.Conv3d)] == [(3, 3, 3), (3, 3, 3)]
    assert down.bypass.kernel_size == (1, 1, 1) and down.bypass.stride == (1, 2, 2)
    assert torch.allclose(y, F.leaky_relu(down.bypass(x) + down.body(x), 0.01), atol=1e-6)


def test_skips_are_added_by_default_and_concatenated_as_an_option():
    levels = 4
    model = _model(levels, prm_downsampling="strided-conv", prm_skips="concat")
    added, joined = build_network(_model(levels)), build_network(model)
    assert all(isinstance(f, torch.nn.Identity) for f in list(added.fuse)[:-1])  # levels >= 1: nothing between join and PRM
    assert [f[0].in_channels for f in list(joined.fuse)[:-1]] == [2 * model.channels[level] for level in range(levels - 2, 0, -1)]
    x = torch.randn(*X)
    for network in (added, joined):
        features = network.encode(x)
        assert [f.shape[1:] for f in network.decode(features)] == [f.shape[1:] for f in reversed(features[:-1])]
    # additive: the input of the first decoder PRM is upsampled + skip
    seen = []
    added.decoder[0].register_forward_hook(lambda m, inputs, out: seen.append(inputs[0]))
    features = added.encode(x)
    added.decode(features)
    assert torch.allclose(seen[0], added.up[0](features[-1]) + features[-2], atol=1e-6)
    assert all(isinstance(d, torch.nn.Sequential) for d in joined.down)
    assert all(isinstance(d, ResidualDownsample) for d in added.down)


def test_residual_downsampling_holds_about_two_thirds_of_the_s_network():
    network = build_network(_model(levels=5))
    share = sum(p.numel() for p in network.down.parameters()) / sum(p.numel() for p in network.parameters())
    assert 0.6 < share < 0.7


def test_a_saved_config_without_the_layout_fields_rebuilds_the_old_layout():
    model = _model(prm_downsampling="strided-conv", prm_skips="concat")
    weights = build_network(model).state_dict()
    saved = RunConfig(model=model).to_dict()
    del saved["model"]["prm_downsampling"], saved["model"]["prm_skips"]
    old = RunConfig.from_dict(saved).model
    resolve_prm(old)  # a resumed run resolves its config again: an existing network keeps its layout
    assert old.prm_downsampling is None and old.prm_skips is None
    build_network(old, weights)  # strict load: the old layout's every weight
    with pytest.raises(RuntimeError):
        build_network(_model(), weights)


# -- retraining ----------------------------------------------------------------------
def test_the_retraining_config_takes_the_unmasked_branches_and_no_weights():
    from napari_pgps.tasks.pruning import retraining_config

    model = _model()
    network = build_network(model)
    network.prms()[0].set_mask([1, 3])  # a mask still pending when the run ended
    config = RunConfig(model=model)
    config.pruning.enabled = True
    config.training.init_from = "runs/somewhere"
    retrain = retraining_config(types.SimpleNamespace(config=config, network=network))
    assert retrain.model.prm_branches[0] == [model.prm_branches[0][0], model.prm_branches[0][2]]
    assert retrain.model.prm_branches[1:] == model.prm_branches[1:]
    assert not retrain.pruning.enabled and retrain.training.init_from is None and config.pruning.enabled


def test_retraining_trains_the_pruned_architecture_from_fresh_weights(phantom_dataset, tmp_path, monkeypatch):
    from napari_pgps.engine import load_model
    from napari_pgps.events import PruningReport, PruningStep, RunStarted
    from napari_pgps.tasks import pruning as task
    from napari_pgps.tasks.pruning import PRUNING_RUN, train_progressively_pruned

    calls, real = [], task.train
    monkeypatch.setattr(task, "train", lambda config, out, **options: calls.append((config, options)) or real(config, out, **options))

    config = quick_config(phantom_dataset, epochs=3, iterations=2)
    config.pruning.patience = 0
    config.pruning.tolerance = 1e9
    config.pruning.calibration_batches = 1
    config.pruning.stop_fraction = 0.5
    config.pruning.retrain = True
    events = list(train_progressively_pruned(config, tmp_path / "psp"))
    starts = [i for i, e in enumerate(events) if isinstance(e, RunStarted)]
    assert len(starts) == 2
    assert any(isinstance(e, PruningStep) for e in events[: starts[1]])
    assert not any(isinstance(e, PruningStep) for e in events[starts[1]:])
    assert isinstance(events[-1], PruningReport) and (tmp_path / "psp" / "pruning_report.md").is_file()
    pruned, retrained = load_model(tmp_path / "psp" / PRUNING_RUN), load_model(tmp_path / "psp")
    assert retrained.config.model.prm_branches == pruned.network.unmasked_kernels()
    assert sum(map(len, retrained.config.model.prm_branches)) < 4 * len(retrained.config.model.prm_branches)
    assert not retrained.config.pruning.enabled
    assert [options["initial_weights"] for _, options in calls] == [None, None]  # fresh weights, not the pruned ones
    assert calls[1][0].model.prm_branches == retrained.config.model.prm_branches
    assert events[-1].after["parameters"] == sum(p.numel() for p in retrained.network.parameters())


# -- the rule as a set, and the warning for a short run ------------------------------------
def test_the_short_run_rule_sets_our_earlier_choices_and_the_reference_rule_sets_them_back():
    from napari_pgps.cli import _parser
    from napari_pgps.cli.train import apply_train_flags
    from napari_pgps.config import use_pruning_rule
    from napari_pgps.errors import InputError

    config = RunConfig()
    args = _parser().parse_args(["train", "--out", "x", "--progressive-pruning", "--pruning-rule", "short-run"])
    apply_train_flags(config, args)
    p, m = config.pruning, config.model
    assert p.enabled and (p.selection, p.judge, p.rollback, p.patience, p.min_branches) == (
        "global", "next-epoch", "halve", None, 1)
    assert (m.prm_downsampling, m.prm_skips) == ("strided-conv", "concat")
    use_pruning_rule(config, "reference")
    reference = RunConfig()
    assert dataclasses.replace(config.pruning, enabled=False) == reference.pruning
    assert (config.model.prm_downsampling, config.model.prm_skips) == ("residual", "add")
    assert _model(prm_downsampling="residual", prm_skips="add") == _model()  # "reference" is what None resolves to
    with pytest.raises(InputError, match="short-run"):
        use_pruning_rule(config, "fast")


def test_a_pruning_window_too_short_for_convergence_events_is_told_before_the_run(phantom_dataset, tmp_path):
    from napari_pgps.engine import describe_event
    from napari_pgps.engine.progress import TrainingProgress
    from napari_pgps.events import RunStarted
    from napari_pgps.tasks.training import train

    network = build_network(_model())
    assert "--pruning-rule short-run" in _pruner(network, epochs=25).short_run_note()  # the CPU profile's run
    assert _pruner(network, epochs=1000).short_run_note() is None  # the reference's 1,000 epochs
    assert _pruner(network, epochs=25, patience=1).short_run_note() is not None  # measured: nothing pruned
    assert _pruner(network, epochs=25, patience=0).short_run_note() is None  # an event at any epoch without a minimum
    assert _pruner(network, epochs=25, judge="next-epoch").short_run_note() is None

    def started(config) -> RunStarted:
        events = train(config, tmp_path / f"run-{len(list(tmp_path.iterdir()))}")
        event = next(e for e in events if isinstance(e, RunStarted))
        events.close()
        return event

    config = quick_config(phantom_dataset, epochs=2, iterations=1)
    config.pruning.enabled = True
    event = started(config)
    assert len(event.notes) == 1 and "unpruned" in event.notes[0]
    text = describe_event(event, TrainingProgress())
    assert text.splitlines()[1] == f"note: {event.notes[0]}"
    config.pruning.judge = "next-epoch"
    assert started(config).notes == ()
