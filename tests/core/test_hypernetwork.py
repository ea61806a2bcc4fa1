"""The patch-size hypernetwork (HN), patch-size augmentation (AP) as a model kind, and memory estimates."""

import io
import json

import pytest
import torch
from helpers import first_run_event, quick_config

from napari_pgps.cli import main
from napari_pgps.config import ModelConfig, RunConfig
from napari_pgps.engine.checkpoint import load_checkpoint
from napari_pgps.engine.file_names import FINAL
from napari_pgps.errors import InputError
from napari_pgps.models import build_network, count_parameters, model_kind, plan_unet, segmenting_config
from napari_pgps.models.hypernetwork import PatchSizeHypernetwork


def tiny_model(architecture: str = "hypernet") -> ModelConfig:
    """A resolved config of a 3-level DynUNet with 4..16 channels for (8, 16, 16) patches."""
    plan = plan_unet((8, 16, 16), (2.0, 1.0, 1.0))
    return ModelConfig(architecture=architecture, patch_size=(8, 16, 16), base_channels=4, spacing=(2.0, 1.0, 1.0),
                       kernel_sizes=plan.kernel_sizes, strides=plan.strides, channels=[4, 8, 16][: len(plan.strides)],
                       out_channels=3, hypernet_hidden=6)


def randomised(network: PatchSizeHypernetwork) -> PatchSizeHypernetwork:
    """Heads start at zero (the same weights for every size); give them values so the patch size matters."""
    torch.manual_seed(0)
    with torch.no_grad():
        for head in network.heads:
            head.weight.normal_(0, 0.5)
    return network


@pytest.fixture
def hypernet():
    return randomised(build_network(tiny_model()))


def test_generated_weights_in_a_plain_dynunet_give_the_same_output(hypernet):
    plain = build_network(segmenting_config(tiny_model()))
    assert type(plain).__name__ == "DynUNet"
    x = torch.randn(2, 1, 8, 32, 16)
    for training in (False, True):  # eval: logits; training: with the deep-supervision heads
        hypernet.train(training), plain.train(training)
        generated = hypernet.generate(x.shape[2:])
        assert set(generated) == {name for name, _ in plain.named_parameters()}
        with torch.no_grad():
            for name, parameter in plain.named_parameters():
                parameter.copy_(generated[name])
            assert torch.equal(hypernet(x), plain(x))


def test_baking_gives_the_hypernetwork_output_and_depends_on_the_size(hypernet):
    hypernet.eval()
    x = torch.randn(1, 1, 16, 16, 32)
    baked = hypernet.bake((16, 16, 32))
    with torch.no_grad():
        assert torch.equal(baked(x), hypernet(x))
        assert not torch.equal(hypernet.bake((8, 16, 16))(x), baked(x))
    assert not baked.training and not any(p.requires_grad for p in baked.parameters())


def test_state_dict_holds_only_the_mlp_and_heads_and_loads_safely(hypernet):
    keys = set(hypernet.state_dict())
    assert keys and all(k.startswith(("mlp.", "heads.")) for k in keys)
    plain = count_parameters(build_network(segmenting_config(tiny_model())))
    assert count_parameters(hypernet) == plain * (6 + 1) + (3 * 6 + 6) + 2 * (6 * 6 + 6)
    buffer = io.BytesIO()
    torch.save(hypernet.state_dict(), buffer)
    buffer.seek(0)
    again = build_network(tiny_model())
    again.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(1, 1, 8, 16, 16)
    hypernet.eval(), again.eval()
    with torch.no_grad():
        assert torch.equal(again(x), hypernet(x))


def test_training_starts_from_the_plain_networks_initialisation():
    torch.manual_seed(3)
    hypernet = build_network(tiny_model())
    small, large = hypernet.generate((8, 16, 16)), hypernet.generate((16, 32, 32))
    assert all(torch.equal(small[k], large[k]) for k in small)
    assert 0.05 < float(small["input_block.conv1.conv.weight"].detach().std()) < 1.0  # Kaiming scale, not the tanh bound


def test_model_kinds_and_the_hypernetwork_needs_varying_patches(phantom_dataset):
    from napari_pgps import train

    config = RunConfig()
    assert model_kind(config) == "FP"
    config.curriculum.schedule = "augment"
    assert model_kind(config) == "AP"
    config.curriculum.schedule = "pgps-performance"
    assert model_kind(config) == "PGPS"
    config.model.architecture = "hypernet"
    assert model_kind(config) == "HN"
    # the engine's rule, for every face: with no schedule named the hypernetwork trains with augment ...
    config = quick_config(phantom_dataset, epochs=1, iterations=1)
    config.model.architecture = "hypernet"
    started = first_run_event(train(config))
    assert (started.kind, started.schedule) == ("HN", "augment")
    # ... and the constant schedule, named, is refused
    config.curriculum.schedule = "constant"
    with pytest.raises(InputError, match="--schedule augment"):
        first_run_event(train(config))


def test_augment_range_follows_the_paper():
    from napari_pgps.curriculum import build_schedule

    schedule = build_schedule("augment", (40, 56, 40), (3, 3, 3), 10, 2)
    assert schedule.axis_sizes == (tuple(range(16, 57, 8)), tuple(range(16, 81, 8)), tuple(range(16, 57, 8)))


def test_hn_checkpoint_trains_segments_and_sweeps_through_the_cli(tmp_path, phantom_dataset, capsys):
    config = quick_config(phantom_dataset, epochs=1, iterations=2)
    config.model.hypernet_hidden = 8
    config.save(tmp_path / "quick.yaml")
    run = tmp_path / "hn"
    assert main(["train", "--config", str(tmp_path / "quick.yaml"), "--architecture", "hypernet", "--out", str(run),
                 "--quiet"]) == 0
    assert "training HN model (hypernet network)" in capsys.readouterr().out
    payload = load_checkpoint(run / FINAL)
    assert payload["kind"] == "HN" and payload["config"]["curriculum"]["schedule"] == "augment"
    assert all(k.startswith(("mlp.", "heads.")) for k in payload["model"])

    source = sorted((phantom_dataset / "imagesTr").iterdir())[0]
    assert main(["segment", "--model", str(run), "--input", str(source), "--output", str(tmp_path / "seg.nii.gz"),
                 "--patch-size", "8", "16", "16"]) == 0
    assert (tmp_path / "seg.nii.gz").is_file()
    out = tmp_path / "sweep.json"
    assert main(["evaluate", "--model", str(run), "--data", str(phantom_dataset), "--split", "validation",
                 "--patch-sizes", "8x16x16", "16x32x32", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["kind"] == "HN" and [row["patch"] for row in report["patch_sizes"]] == [[8, 16, 16], [16, 32, 32]]


def test_memory_estimates_grow_with_the_patch():
    from napari_pgps.engine.memory import candidate_patches, estimate_memory
    from napari_pgps.models import patch_divisor

    model = tiny_model()
    sizes = candidate_patches(model)
    assert (8, 16, 16) in sizes and all(s % d == 0 for size in sizes for s, d in zip(size, patch_divisor(model)))
    estimates = [estimate_memory(model, size, torch.device("cpu")) for size in sizes]
    assert all(e.method == "computed" for e in estimates)
    assert [e.megabytes for e in estimates] == sorted(e.megabytes for e in estimates)
    one = estimate_memory(model, (16, 32, 32), torch.device("cpu"), batch=1)
    assert one.weights == 4 * count_parameters(build_network(segmenting_config(model)))
    # at least one 4-channel full-resolution map and the 3-label output are alive at once
    assert one.activations >= 4 * 16 * 32 * 32 * (4 + 3)


def test_one_memory_measure_for_the_chooser_and_the_pruning_report():
    """The chooser's shape-only count (meta device) and a real CPU forward pass give the same activations."""
    from napari_pgps.engine.memory import estimate_memory
    from napari_pgps.tasks.pruning_report import forward_cost

    model = tiny_model()
    computed = estimate_memory(model, (16, 32, 32), torch.device("cpu"), batch=1)
    network = build_network(segmenting_config(model))
    _, measured_mb = forward_cost(network, (16, 32, 32), torch.device("cpu"))
    assert measured_mb * 1e6 == pytest.approx(computed.activations, rel=0.02)
