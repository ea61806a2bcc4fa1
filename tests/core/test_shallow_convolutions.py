"""CPU bf16 autocast with the network's shallow convolutions computed in fp32 (models.shallow_convolutions)."""

from __future__ import annotations

import copy

import torch

from napari_pgps.config import ModelConfig
from napari_pgps.models import build_network, split_outputs
from napari_pgps.models.shallow_convolutions import ShallowSafeConv3d, guard_shallow_convolutions


def _weight_gradient(conv: torch.nn.Conv3d, x: torch.Tensor, grad: torch.Tensor, bf16: bool) -> torch.Tensor:
    conv = copy.deepcopy(conv)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = conv(x)
    y.backward(grad.to(y.dtype))
    return conv.weight.grad


def test_a_shallow_convolution_gets_its_fp32_weight_gradient_under_bf16():
    """A 2-slice-deep input under a 3-deep kernel: PyTorch's bf16 CPU kernel returned a wrong weight gradient
    (relative error 0.1-1, now and then ~1e38) in every trial on this project's CPU; guarded, it is fp32's."""
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(16, 16, 3, padding=1, bias=False)
    conv.weight.data = conv.weight.data.bfloat16().float()
    x = torch.randn(2, 16, 2, 4, 4).bfloat16().float()
    grad = torch.randn(2, 16, 2, 4, 4).bfloat16().float()
    exact = _weight_gradient(conv, x, grad, bf16=False)
    guard_shallow_convolutions(conv)
    assert isinstance(conv, ShallowSafeConv3d)
    for _ in range(20):
        guarded = _weight_gradient(conv, x, grad, bf16=True)
        assert torch.isfinite(guarded).all()
        assert float((guarded - exact).norm() / exact.norm()) < 1e-5


def test_the_guard_changes_no_output_type_and_leaves_deeper_inputs_to_autocast():
    torch.manual_seed(0)
    cube = guard_shallow_convolutions(torch.nn.Conv3d(4, 4, 3, padding=1))
    flat = guard_shallow_convolutions(torch.nn.Conv3d(4, 4, (1, 3, 3), padding=(0, 1, 1)))
    deep, shallow = torch.randn(1, 4, 4, 4, 4), torch.randn(1, 4, 2, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert cube(deep).dtype == cube(shallow).dtype == flat(shallow).dtype == torch.bfloat16
        with torch.autocast("cpu", enabled=False):
            exact = torch.nn.functional.conv3d(shallow, cube.weight, cube.bias, padding=1)
        assert torch.equal(cube(shallow), exact.to(torch.bfloat16))  # fp32, rounded as autocast returns it
    assert cube(shallow).dtype == torch.float32  # fp32 outside autocast


def test_built_networks_carry_the_guard_with_an_unchanged_state_dict():
    model = ModelConfig(architecture="dynunet", patch_size=(16, 16, 16), spacing=(1.0, 1.0, 1.0),
                        kernel_sizes=[[3, 3, 3]] * 4, strides=[[1, 1, 1]] + [[2, 2, 2]] * 3,
                        channels=[8, 16, 32, 64], out_channels=3)
    network = build_network(model)
    convolutions = [m for m in network.modules() if isinstance(m, torch.nn.Conv3d)]
    assert convolutions and all(type(m) is ShallowSafeConv3d for m in convolutions)
    again = build_network(model, network.state_dict())
    assert again.state_dict().keys() == network.state_dict().keys()
    images = torch.randn(2, 1, 16, 8, 8)  # the bottleneck is 2 x 1 x 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = sum(o.float().square().mean() for o in split_outputs(network.train()(images), images))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in network.parameters() if p.grad is not None)
