import pytest
import torch

from napari_pgps.config import ModelConfig
from napari_pgps.errors import InputError
from napari_pgps.models import build_network, check_inference_patch, plan_unet, training_outputs
from napari_pgps.models.factory import level_channels


def _model(architecture, patch, base=8, deep_supervision=True):
    plan = plan_unet(patch, (1.0, 1.0, 1.0))
    return ModelConfig(
        architecture=architecture,
        patch_size=patch,
        kernel_sizes=plan.kernel_sizes,
        strides=plan.strides,
        channels=level_channels(len(plan.strides), base, 64),
        out_channels=3,
        deep_supervision=deep_supervision,
    )


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
    with pytest.raises(InputError, match="UNETR"):
        check_inference_patch(_model("unetr", (16, 16, 16)), (32, 32, 32))
