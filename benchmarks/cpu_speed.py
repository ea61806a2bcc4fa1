"""Training-step time of the default CPU network under each speed-up, side by side in one run.

    python benchmarks/cpu_speed.py [--patch 40 56 40] [--crop Z Y X] [--batch 2] [--rounds 5] [--steps 5] [--threads 2]
        [--variants fp32,channels-last,...] [--next-crop Z Y X]

The default CPU network (16-channel DynUNet planned for the hippocampus patch) takes full training steps
(forward, Dice + cross-entropy with deep supervision, backward, AdamW) on random crops under each variant; the
variants run in turn, ``--steps`` steps each, for ``--rounds`` rounds, so load falls on all alike, and the
median step of each is reported with its speed-up over fp32 and the share of the machine's peak it reaches (the
step's convolution FLOPs, counted once with ``FlopCounterMode``, over its time, against a large matmul timed in
the same run, fp32 and bf16). ``--crop`` feeds crops of another size to the network planned for ``--patch``, as a
PGPS stage does (e.g. ``--crop 16 8 8 --batch 175``: Performance's first stage). Variants:

* ``fp32``: training before the time-budget issue;
* ``channels-last``: network and crops in ``torch.channels_last_3d`` (training now on a CPU without native bf16);
* ``bf16``: ``torch.autocast("cpu", dtype=torch.bfloat16)`` (training now on CPUs with AVX512-BF16 or AMX);
* ``bf16-channels-last``: both;
* ``onednn``: every 3D convolution forced through oneDNN (``torch.mkldnn_convolution``), as CPU inference does;
* ``compile``: ``torch.compile`` (inductor), compile time reported apart;
* ``compile-channels-last``: ``torch.compile`` of the channels-last network (what compiling would add to training
  on a CPU without native bf16).

``--next-crop Z Y X`` times, after the others, each variant's first step at another crop size (a PGPS stage's next
shape): what a compiled network pays again at every new shape (torch recompiles, from the second shape with
dynamic sizes), against the eager variants' first step there.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from napari_pgps.config import ModelConfig
from napari_pgps.engine.device import native_bf16
from napari_pgps.engine.device import cpu_convolutions
from napari_pgps.models import build_network, level_channels, plan_unet, split_outputs


def network(patch, channels_last: bool):
    plan = plan_unet(patch, (1.0, 1.0, 1.0))
    model = ModelConfig(architecture="dynunet", patch_size=tuple(patch), spacing=(1.0, 1.0, 1.0),
                        kernel_sizes=plan.kernel_sizes, strides=plan.strides, base_channels=16, out_channels=3,
                        channels=level_channels(len(plan.strides), 16, 320))
    torch.manual_seed(0)
    net = build_network(model).train()
    return net.to(memory_format=torch.channels_last_3d) if channels_last else net


def make_step(patch, crops, batch, variant):
    """A training step of ``variant`` on random crops: ``step(crop)`` takes one at ``crop`` (one of ``crops``, Z, Y,
    X) and returns its seconds."""
    from napari_pgps.engine.losses import training_loss

    channels_last = "channels-last" in variant
    net = network(patch, channels_last)
    if variant.startswith("compile"):
        net = torch.compile(net)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loss_fn = training_loss(deep_supervision=True)
    generator = torch.Generator().manual_seed(0)
    batches = {}
    for crop in crops:
        images = torch.randn(batch, 1, *crop, generator=generator)
        labels = torch.randint(0, 3, (batch, 1, *crop), generator=generator)
        if channels_last:
            images = images.to(memory_format=torch.channels_last_3d)
        batches[tuple(crop)] = images, labels
    bf16 = variant.startswith("bf16")
    convolutions = cpu_convolutions(torch.device("cpu")) if variant == "onednn" else contextlib.nullcontext()

    def step(crop) -> float:
        images, labels = batches[tuple(crop)]
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), convolutions:
            loss = loss_fn(split_outputs(net(images).float(), images), labels)
        loss.backward()
        optimizer.step()
        float(loss.detach())
        return time.perf_counter() - start

    return step


def step_flops(patch, crop, batch) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    net = network(patch, False)
    images = torch.randn(batch, 1, *crop)
    counter = FlopCounterMode(display=False)
    with counter:
        outputs = split_outputs(net(images), images)
        sum(o.float().mean() for o in outputs).backward()
    return float(counter.get_total_flops())


def matmul_peak(dtype, size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a large matmul in ``dtype``: the machine's practical peak."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patch", type=int, nargs=3, default=(40, 56, 40))
    parser.add_argument("--crop", type=int, nargs=3, help="crop size of the steps (default: the patch)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default="fp32,channels-last,bf16,bf16-channels-last,onednn,compile")
    parser.add_argument("--next-crop", type=int, nargs=3, help="time each variant's first step at this crop too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    crop = tuple(args.crop or args.patch)
    crops = [crop] + ([tuple(args.next_crop)] if args.next_crop else [])
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    steps, warm = {}, {}
    for variant in variants:
        start = time.perf_counter()
        steps[variant] = make_step(tuple(args.patch), crops, args.batch, variant)
        steps[variant](crop)  # first step: allocation, or compilation
        warm[variant] = time.perf_counter() - start
    times = {v: [] for v in variants}
    for _ in range(args.rounds):
        for variant in variants:
            times[variant] += [steps[variant](crop) for _ in range(args.steps)]
    next_first = {v: steps[v](crops[-1]) for v in variants} if args.next_crop else {}
    flops = step_flops(tuple(args.patch), crop, args.batch)
    peaks = {"fp32": matmul_peak(torch.float32)}
    if any(v.startswith("bf16") for v in variants):  # emulated where not native: minutes for one matmul
        peaks["bf16"] = matmul_peak(torch.bfloat16, repeats=5 if native_bf16() else 1)
    base = statistics.median(times[variants[0]])
    print(f"patch {tuple(args.patch)}, crop {crop}, batch {args.batch}, {args.threads} threads, torch {torch.__version__}, "
          f"native bf16: {'yes' if native_bf16() else 'no'}; {flops / 1e9:.1f} GFLOP per step; matmul peak "
          + ", ".join(f"{name} {peak / 1e9:.0f} GFLOP/s" for name, peak in peaks.items()))
    next_head = f" first step at {crops[-1]} (s) |" if next_first else ""
    print(f"| variant | median step (s) | speed-up | share of peak | first step (s) |{next_head}")
    print("|---|---|---|---|---|" + ("---|" if next_first else ""))
    for variant in variants:
        median = statistics.median(times[variant])
        peak = peaks["bf16" if variant.startswith("bf16") else "fp32"]
        print(f"| {variant} | {median:.3f} | {base / median:.2f}x | {100 * flops / median / peak:.1f}% | "
              f"{warm[variant]:.1f} |" + (f" {next_first[variant]:.1f} |" if next_first else ""))


if __name__ == "__main__":
    main()
