"""Pruning benchmark: the default network against PSP-Seg progressive pruning (PRM S), side by side.

Both trainings start at once, each pinned to its own CPU cores (``taskset``)
with the same number of threads, so they see the same machine load. For each
run: training time (the trainer's, without validation) and wall time, peak
resident memory of the training process (``os.wait4``), parameters, FLOPs and
forward memory at the final patch, time to segment one validation volume on
one core set, and mean Dice on the held-out cases.

    python benchmarks/pruning.py --data DIR --out DIR [--threads 2] [--device cpu]

Writes ``results.json`` and ``report.md`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RUNS = {
    "default": [],
    "prm-s-progressive": ["--progressive-pruning", "--prm-variant", "S"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=2, help="threads (and cores) per training")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--extra", default="", help="extra train flags for both runs (quick checks)")
    parser.add_argument("--measure-only", action="store_true",
                        help="measure the runs already trained in --out (their wall time and peak RSS are then unknown)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    processes = {}
    results = {name: {"wall_seconds": None, "peak_rss_mb": None, "exit_code": None} for name in RUNS}
    for index, (name, flags) in enumerate(RUNS.items()):
        cores = ",".join(str(index * args.threads + c) for c in range(args.threads))
        command = [sys.executable, "-m", "napari_pgps", "train", "--data", args.data, "--out", str(out / name),
                   "--device", args.device, *flags, *args.extra.split()]
        if len(os.sched_getaffinity(0)) >= len(RUNS) * args.threads:
            command = ["taskset", "-c", cores, *command]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        log = open(out / f"{name}.log", "w")
        if args.measure_only:
            continue
        processes[name] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), time.perf_counter(), log)

    while processes:
        pid, status, usage = os.wait4(-1, 0)
        name = next(n for n, (p, _, _) in processes.items() if p.pid == pid)
        process, started, log = processes.pop(name)
        process.returncode = os.waitstatus_to_exitcode(status)
        log.close()
        results[name] = {"wall_seconds": time.perf_counter() - started, "peak_rss_mb": usage.ru_maxrss / 1024,
                         "exit_code": process.returncode}
        print(f"{name}: exit {process.returncode}, {results[name]['wall_seconds']:.0f} s", flush=True)

    for name in RUNS:
        results[name].update(measure(out / name, args.data, args.threads))
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "report.md").write_text(report(results, args))
    print((out / "report.md").read_text())


def measure(run_dir: Path, data: str, threads: int) -> dict:
    """Training time from the run's log, and the trained network's profile and held-out Dice."""
    import torch

    from napari_pgps.data.normalization import normalize
    from napari_pgps.engine import fold, load_model, read_events
    from napari_pgps.tasks.evaluation import evaluate_model, labelled_cases
    from napari_pgps.tasks.pruning_report import profile_network

    torch.set_num_threads(threads)
    finished = fold(read_events(run_dir)).finished
    model = load_model(run_dir, "cpu")
    case = labelled_cases(model, data, "validation")[0]
    image = normalize(case.image.channel_first(), model.config.normalization)
    profile = profile_network(model.network, model.patch_size, model.device, image)
    profile.mean_dice = evaluate_model(model, data, split="validation")["mean_dice"]
    return {"training_seconds": finished.training_seconds, **step_memory(model), **profile.to_dict()}


def step_memory(model) -> dict:
    """Peak tensor memory of one training step (batch 2, final patch) at the start and at the end of training."""
    import copy

    from napari_pgps.models import architecture, build_network
    from napari_pgps.tasks.pruning_report import training_step_memory

    spec = architecture(model.config.model)
    prm = spec.branch_prunable
    start = copy.deepcopy(model.config.model)
    if prm:
        start.prm_branches = None
        spec.resolve(start)
    first = training_step_memory(build_network(start), model.patch_size, decoupling=prm)
    last = training_step_memory(model.network, model.patch_size, decoupling=prm)
    return {"step_memory_start_mb": first, "step_memory_end_mb": last}


def report(results: dict, args) -> str:
    base, pruned = results["default"], results["prm-s-progressive"]
    rows = [
        ("parameters", "parameters", "{:,.0f}"),
        ("training time (s, without validation)", "training_seconds", "{:.0f}"),
        ("wall time (s)", "wall_seconds", "{:.0f}"),
        ("peak training RSS (MB)", "peak_rss_mb", "{:.0f}"),
        ("peak tensor memory of a training step, first epoch (MB)", "step_memory_start_mb", "{:.0f}"),
        ("peak tensor memory of a training step, last epoch (MB)", "step_memory_end_mb", "{:.0f}"),
        ("GFLOPs per patch", "gflops", "{:.2f}"),
        ("peak forward memory (MB)", "forward_memory_mb", "{:.1f}"),
        ("segment one volume (s)", "segment_seconds", "{:.2f}"),
        ("mean Dice (validation)", "mean_dice", "{:.4f}"),
    ]
    lines = [f"Data: {args.data}; {args.threads} threads per run on {args.device}, side by side.", "",
             "| | default | PRM S progressive | PRM / default |", "|---|---|---|---|"]
    for label, key, fmt in rows:
        if base[key] is None or pruned[key] is None:  # --measure-only: not measured
            lines.append(f"| {label} | - | - | - |")
            continue
        lines.append(f"| {label} | {fmt.format(base[key])} | {fmt.format(pruned[key])} | {pruned[key] / base[key]:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
