"""A patch-size hypernetwork (HN): an MLP that turns the patch size into the weights of a U-Net.

After Balle Sanchez et al., "Why is patch size important? Dealing with context
variability in segmentation networks" (MIDL 2025): an MLP (3 -> 50 -> 50 -> 50,
ReLU) reads the patch size (z, y, x) and one linear head per layer predicts
the parameters of every convolution, transposed convolution and normalisation
layer of the U-Net, bounded by ``tanh * 5``. Trained with patch-size
augmentation, it gives a network tuned to whatever window it segments with;
for deployment :meth:`PatchSizeHypernetwork.bake` writes the weights for one
size into the plain DynUNet of :func:`napari_pgps.models.dynunet.build_dynunet`,
which then segments at full speed.

Choices of this implementation (see docs/benchmarks.md):

* The patch size is divided by the final training patch, so the input is
  (1, 1, 1) at the training size.
* A head computes ``5 * tanh((b + A @ code / hidden) / 5)``: the bound of
  the paper, with unit slope at 0 and the code scaled by ``1 / hidden``, so
  that an optimiser step moves the generated weights about as far as it would
  move the plain network's weights (one Adam step changes every entry of
  ``A`` and ``b`` by about the learning rate).
* ``A`` starts at zero and ``b`` at the template's initial weights, so
  training starts from MONAI's initialisation of the plain network for every
  patch size.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..config import ModelConfig
from .dynunet import build_dynunet

OUTPUT_BOUND = 5.0
"""Generated parameters lie in (-5, 5) (the paper's ``tanh * 5``)."""


class PatchSizeHypernetwork(nn.Module):
    """A DynUNet whose parameters are generated from the patch size of its input.

    ``forward(x)`` takes x (B, in_channels, Z, Y, X), generates the parameters
    for the window (Z, Y, X) = ``x.shape[2:]`` and runs the template DynUNet
    with them, so training and sliding-window inference need no change: the
    window size is the patch size. The output is that of the plain DynUNet:
    logits (B, out_channels, Z, Y, X), or (B, 1 + heads, out_channels, Z, Y, X)
    in training mode with deep supervision.

    Its ``state_dict`` holds only the MLP and the heads; the template is
    rebuilt from the config.
    """

    def __init__(self, model: ModelConfig) -> None:
        super().__init__()
        if model.patch_size is None:
            raise ValueError("the model config is not resolved (patch_size missing)")
        self.hidden = int(model.hypernet_hidden)
        self.model = model
        self.template = build_dynunet(model)
        self.register_buffer("reference", torch.tensor(model.patch_size, dtype=torch.float32), persistent=False)
        self.mlp = nn.Sequential(
            nn.Linear(3, self.hidden), nn.ReLU(),
            nn.Linear(self.hidden, self.hidden), nn.ReLU(),
            nn.Linear(self.hidden, self.hidden), nn.ReLU(),
        )
        self.layers: list[tuple[str, list[tuple[str, torch.Size]]]] = []
        heads = []
        for module_name, module in self.template.named_modules():
            own = [(name, p) for name, p in module._parameters.items() if p is not None]
            if not own:
                continue
            head = nn.Linear(self.hidden, sum(p.numel() for _, p in own))
            with torch.no_grad():
                head.weight.zero_()
                initial = torch.cat([p.detach().reshape(-1) for _, p in own]).clamp(-0.99 * OUTPUT_BOUND, 0.99 * OUTPUT_BOUND)
                head.bias.copy_(OUTPUT_BOUND * torch.atanh(initial / OUTPUT_BOUND))
            heads.append(head)
            self.layers.append((module_name, [(name, p.shape) for name, p in own]))
            for name, _ in own:  # the template keeps its structure; its parameters are generated
                del module._parameters[name]
        self.heads = nn.ModuleList(heads)

    def generate(self, patch_size: Sequence[int]) -> dict[str, torch.Tensor]:
        """The template's parameters for windows of ``patch_size`` (Z, Y, X), by their state-dict names."""
        size = torch.as_tensor([float(p) for p in patch_size], device=self.reference.device) / self.reference
        code = self.mlp(size) / self.hidden
        params = {}
        for (module_name, shapes), head in zip(self.layers, self.heads):
            flat = OUTPUT_BOUND * torch.tanh(head(code) / OUTPUT_BOUND)
            prefix = f"{module_name}." if module_name else ""
            for (name, shape), chunk in zip(shapes, torch.split(flat, [math.prod(s) for _, s in shapes])):
                params[prefix + name] = chunk.reshape(shape)
        return params

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.func import functional_call

        self.template.train(self.training)
        return functional_call(self.template, self.generate(tuple(x.shape[2:])), (x,))

    def bake(self, patch_size: Sequence[int]) -> nn.Module:
        """A plain DynUNet (:func:`build_dynunet` of the same config) holding the weights for ``patch_size`` (Z, Y, X).

        It is on this hypernetwork's device, in eval mode, without gradients.
        """
        network = build_dynunet(self.model)
        generated = self.generate(patch_size)
        with torch.no_grad():
            for name, parameter in network.named_parameters():  # each parameter once (DynUNet aliases its skip layers)
                parameter.copy_(generated.pop(name))
        if generated:
            raise RuntimeError(f"generated parameters the plain network lacks: {sorted(generated)}")
        return network.to(self.reference.device).eval().requires_grad_(False)
