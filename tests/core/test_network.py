import pytest
import torch

from napari_pgps.config import ModelConfig
from napari_pgps.errors import InputError
from napari_pgps.models import (
    ARCHITECTURES,
    architecture,
    build_network,
    check_inference_patch,
    deep_supervision_heads,
    level_channels,
    patch_divisor,
    plan_unet,
    training_outputs,
)


def _model(name, patch, base=8, deep_supervision=True):
    plan = plan_unet(patch, (1.0, 1.0, 1.0))
    model = ModelConfig(
        architecture=name,
        patch_size=patch,
        kernel_sizes=plan.kernel_sizes,
        strides=plan.strides,
        channels=level_channels(len(plan.strides), base, 64),
        out_channels=3,
        deep_supervision=deep_supervision,
    )
    spec = architecture(model)
    if spec.resolve is not None:
        model.channels = None
        spec.resolve(model)
    return model


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_every_registered_network_does_what_its_entry_says(name):
    """Build each network at its smallest patch (two divisor steps, at least its minimum) and check its entry:
    the patch it takes, its deep-supervision heads, and that its description is there for the help texts."""
    spec = ARCHITECTURES[name]
    probe = _model(name, (32, 32, 32))
    divisor = patch_divisor(probe)
    patch = tuple(max(2 * d, spec.minimum_patch) for d in divisor)
    model = _model(name, patch)
    network = build_network(model).train()
    outputs = training_outputs(network, torch.randn(2, 1, *patch))
    assert len(outputs) == 1 + deep_supervision_heads(model)
    assert all(o.shape == (2, 3, *patch) for o in outputs)
    assert (deep_supervision_heads(model) > 0) == spec.deep_supervision
    assert spec.description and spec.name == name
    if spec.minimum_patch > 1:
        with pytest.raises(InputError, match=f"at least {spec.minimum_patch}"):
            check_inference_patch(model, (divisor[0],) * 3)


@pytest.mark.parametrize("architecture, patch", [("dynunet", (16, 32, 24)), ("unet", (16, 32, 24)), ("unetr", (16, 16, 16)), ("swinunetr", (64, 64, 64))])
def test_each_architecture_maps_patch_to_logits(architecture, patch):
    network = build_network(_model(architecture, patch, base=12))
    network.eval()
    with torch.no_grad():
        out = network(torch.randn(1, 1, *patch))
    assert out.shape == (1, 3, *patch)


def test_dynunet_deep_supervision_outputs_in_training():
    network = build_network(_model("dynunet", (16, 32, 32)))
    network.train()
    outputs = training_outputs(network, torch.randn(2, 1, 16, 32, 32))
    assert len(outputs) == 3
    assert all(o.shape == (2, 3, 16, 32, 32) for o in outputs)
    network.eval()
    assert network(torch.randn(1, 1, 16, 32, 32)).shape == (1, 3, 16, 32, 32)


def test_inference_patch_checks():
    check_inference_patch(_model("dynunet", (16, 32, 32)), (24, 48, 64))
    with pytest.raises(InputError, match="cannot be taken"):
        check_inference_patch(_model("dynunet", (16, 32, 32)), (18, 48, 64))
    with pytest.raises(InputError, match="at least 64"):
        check_inference_patch(_model("swinunetr", (64, 64, 64)), (32, 64, 64))
    with pytest.raises(InputError, match="unetr takes its training patch"):
        check_inference_patch(_model("unetr", (16, 16, 16)), (32, 32, 32))
