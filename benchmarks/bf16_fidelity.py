"""How far a CPU bf16 training step's gradient is from fp32's, per patch size along a real training run, and what
each costs.

    python benchmarks/bf16_fidelity.py --data ../shared/data/Task04_Hippocampus --out runs/bf16-fidelity \
        [--schedule pgps-efficiency] [--epochs 34] [--every 10] [--plain-autocast]

Part 1, one convolution: the bf16 weight gradient of a 3D convolution (kernel 3, 32 channels, batch 2) against
fp32's on the same bf16-rounded numbers, per input depth, as a plain ``nn.Conv3d`` and as the
:class:`~napari_pgps.models.shallow_convolutions.ShallowSafeConv3d` every built network has.

Part 2, a training run (the CPU profile, ``--schedule`` and ``--epochs``, seed 0): every ``--every``-th step, on
that step's batch and weights, the gradient is computed in bf16 and in fp32 (twice each, alternating, the faster
kept as the time); the table gives, per patch, the median and lowest cosine between the two, and the forward +
backward seconds of each; ``--plain-autocast`` measures bf16 with the network's convolutions as plain
``nn.Conv3d``, as training did before the guard. The run trains as usual meanwhile (in the training step's own
precision). Needs a CPU with native bf16 (AVX512-BF16 or AMX).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from napari_pgps.config import RunConfig
from napari_pgps.engine.device import native_bf16
from napari_pgps.engine.losses import training_loss
from napari_pgps.models import split_outputs
from napari_pgps.models.shallow_convolutions import ShallowSafeConv3d, guard_shallow_convolutions
from napari_pgps.plugins import TrainingPlugin
from napari_pgps.tasks.training import train


def convolution_table(trials: int = 20) -> list[dict]:
    rows = []
    for depth in range(1, 7):
        torch.manual_seed(0)
        x = torch.randn(2, 32, depth, 8, 8).bfloat16().float()
        plain = torch.nn.Conv3d(32, 32, 3, padding=1, bias=False)
        plain.weight.data = plain.weight.data.bfloat16().float()
        guarded = guard_shallow_convolutions(copy.deepcopy(plain))
        grad = torch.randn(2, 32, depth, 8, 8).bfloat16()

        def weight_gradient(conv, bf16: bool) -> torch.Tensor:
            conv = copy.deepcopy(conv)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                y = conv(x)
            y.backward(grad.to(y.dtype))
            return conv.weight.grad

        exact = weight_gradient(plain, bf16=False)
        row = {"depth": depth}
        for name, conv in (("autocast", plain), ("guarded", guarded)):
            errors = [float((weight_gradient(conv, bf16=True) - exact).norm() / exact.norm()) for _ in range(trials)]
            row[name] = max(e if e == e else float("inf") for e in errors)
        rows.append(row)
    return rows


@contextlib.contextmanager
def unguarded(network: torch.nn.Module):
    """The network's convolutions as plain ``nn.Conv3d`` (what training ran before the guard) inside."""
    guarded = [m for m in network.modules() if type(m) is ShallowSafeConv3d]
    for module in guarded:
        module.__class__ = torch.nn.Conv3d
    try:
        yield
    finally:
        for module in guarded:
            module.__class__ = ShallowSafeConv3d


class GradientFidelity(TrainingPlugin):
    """Every ``every``-th step: the gradient in bf16 and in fp32 on the step's batch and weights (no loss term)."""

    def __init__(self, every: int, plain_autocast: bool):
        self.every, self.plain_autocast, self.calls = every, plain_autocast, 0
        self.rows: dict[tuple[int, ...], list[tuple[float, float, float]]] = collections.defaultdict(list)
        self.loss = training_loss(deep_supervision=True)

    def _gradient(self, run, images, labels, bf16: bool):
        run.network.zero_grad(set_to_none=True)
        context = contextlib.ExitStack()
        context.enter_context(torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16))
        if bf16 and self.plain_autocast:
            context.enter_context(unguarded(run.network))
        start = time.perf_counter()
        with context:
            loss = self.loss(split_outputs(run.network(images).float(), images), labels)
        loss.backward()
        seconds = time.perf_counter() - start
        vector = torch.cat([p.grad.flatten() for p in run.network.parameters() if p.grad is not None])
        return vector, seconds

    def loss_terms(self, run, images, labels):
        self.calls += 1
        if self.calls % self.every == 0:
            seconds = {True: [], False: []}
            vectors = {}
            for bf16 in (True, False, True, False):
                vectors[bf16], s = self._gradient(run, images, labels, bf16)
                seconds[bf16].append(s)
            cosine = F.cosine_similarity(vectors[True], vectors[False], dim=0) if torch.isfinite(vectors[True]).all() else None
            self.rows[tuple(images.shape[2:])].append(
                (float(cosine) if cosine is not None else float("nan"), min(seconds[True]), min(seconds[False])))
            run.network.zero_grad(set_to_none=True)
        return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--schedule", default="pgps-efficiency")
    parser.add_argument("--epochs", type=int, default=34)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--plain-autocast", action="store_true")
    args = parser.parse_args()
    if not native_bf16():
        raise SystemExit("this CPU has no native bf16 (AVX512-BF16 or AMX): training runs in fp32 here")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"convolution": convolution_table()}
    print("depth  nn.Conv3d  ShallowSafeConv3d  (bf16 autocast: worst relative error of the weight gradient, 20 trials)")
    for row in report["convolution"]:
        print(f"{row['depth']:5d}  {row['autocast']:9.3g}  {row['guarded']:17.3g}")

    config = RunConfig()  # the defaults `napari-pgps train` uses (the CPU profile on a CPU)
    config.data.path = args.data
    config.curriculum.schedule = args.schedule
    config.training.epochs = args.epochs
    probe = GradientFidelity(args.every, args.plain_autocast)
    for _ in train(config, out / "run", plugins=[probe]):
        pass
    report["stages"] = []
    print("patch        steps  non-finite  cosine median         lowest  bf16 s  fp32 s  (cosines of the finite ones)")
    for patch, rows in probe.rows.items():
        finite = [r[0] for r in rows if r[0] == r[0]]
        row = {"patch": list(patch), "steps": len(rows), "non_finite": len(rows) - len(finite),
               "cosine_median": statistics.median(finite) if finite else None, "cosine_lowest": min(finite, default=None),
               "bf16_seconds": statistics.median(r[1] for r in rows), "fp32_seconds": statistics.median(r[2] for r in rows)}
        report["stages"].append(row)
        cosines = "".join(f"  {c:13.3f}" if c is not None else "  " + "-" * 13 for c in (row["cosine_median"], row["cosine_lowest"]))
        print(f"{'x'.join(map(str, patch)):12s} {row['steps']:5d}  {row['non_finite']:10d}{cosines}"
              f"  {row['bf16_seconds']:6.3f}  {row['fp32_seconds']:6.3f}")
    (out / "bf16_fidelity.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
