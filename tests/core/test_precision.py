"""The training step's number format: CPU bf16 autocast with its shallow convolutions kept in fp32."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from napari_pgps.engine.precision import step_precision

CPU = torch.device("cpu")


def _weight_gradient(x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor, dtype) -> torch.Tensor:
    w = weight.clone().requires_grad_(True)
    with step_precision(CPU, dtype):
        y = F.conv3d(x, w, padding=1)
    y.backward(grad.to(y.dtype))
    return w.grad


def test_a_shallow_convolution_gets_its_fp32_weight_gradient_under_bf16():
    """A 2-slice-deep input under a 3-deep kernel: PyTorch's bf16 CPU kernel returned a wrong weight gradient
    (relative error 0.1-1, now and then ~1e38) in every trial on this project's CPU; guarded, it is fp32's."""
    torch.manual_seed(0)
    x = torch.randn(2, 16, 2, 4, 4).bfloat16().float()
    weight = (torch.randn(16, 16, 3, 3, 3) * 0.05).bfloat16().float()
    grad = torch.randn(2, 16, 2, 4, 4).bfloat16().float()
    exact = _weight_gradient(x, weight, grad, None)
    for _ in range(20):
        guarded = _weight_gradient(x, weight, grad, torch.bfloat16)
        assert torch.isfinite(guarded).all()
        assert float((guarded - exact).norm() / exact.norm()) < 1e-5


def test_other_convolutions_stay_in_bf16():
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(4, 4, 3, padding=1)
    with step_precision(CPU, torch.bfloat16):
        deep = conv(torch.randn(1, 4, 4, 4, 4))
        shallow = conv(torch.randn(1, 4, 2, 4, 4))
        flat = torch.nn.Conv3d(4, 4, (1, 3, 3), padding=(0, 1, 1))(torch.randn(1, 4, 2, 4, 4))
    assert deep.dtype == torch.bfloat16 and flat.dtype == torch.bfloat16
    assert shallow.dtype == torch.float32


def test_fp32_and_cuda_precisions_are_plain_autocast():
    with step_precision(CPU, None):
        assert not torch.is_autocast_enabled("cpu")
    with step_precision(CPU, torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
