"""Seconds to segment a volume with torch and with ONNX Runtime, side by side, on the CPU.

    python benchmarks/onnx_speed.py --data ../shared/data/Task04_Hippocampus ../shared/data/LA_heart \\
        --model runs/hippocampus runs/la [--cases 3] [--repeats 5] [--threads 2]

Each dataset folder is segmented with its model (one --model per --data, or one for all): a run folder,
checkpoint or package is exported with --onnx into a temporary folder (the ONNX network checked against
torch there), then the first K cases of its validation split (else cases it was not trained on, else
any) are segmented with ``segment_volume`` (what ``napari-pgps segment`` runs: preprocessing, the
sliding window at the training patch, restoring, post-processing) once with the torch network (the
default CPU path, oneDNN convolutions) and once with ONNX Runtime (``--runtime onnx``). Runs are
interleaved (each case: torch then ONNX, the order swapped every repeat) after one untimed warm-up
round, so both see the same machine load. Prints medians per case and per dataset as a Markdown table,
with the machine and the versions, and how many voxels' labels differ between the two runtimes.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pick_cases(model, data: str, count: int):
    """The first ``count`` cases of ``data`` the model was not trained on (its validation cases first)."""
    from napari_pgps.data.dataset import case_files, read_case, read_dataset_info

    info = read_dataset_info(data)
    files = case_files(info, require_labels=False)
    split = model.split or {}
    validation, training = set(split.get("validation", [])), set(split.get("training", []))
    ranked = ([f for f in files if f.name in validation] + [f for f in files if f.name not in validation | training]
              + [f for f in files if f.name in training])
    return [(f.name, read_case(info, f).image) for f in ranked[:count]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, nargs="+", metavar="DIR", help="dataset folder(s)")
    parser.add_argument("--model", required=True, nargs="+", metavar="RUN_OR_PACKAGE",
                        help="one model per dataset folder, or one for all")
    parser.add_argument("--cases", type=int, default=3, metavar="K", help="cases per dataset (default 3)")
    parser.add_argument("--repeats", type=int, default=5, metavar="N", help="timed repeats per case (default 5)")
    parser.add_argument("--threads", type=int, default=2, metavar="T", help="threads for torch and ONNX Runtime")
    args = parser.parse_args()
    if len(args.model) not in (1, len(args.data)):
        parser.error("give one --model for all datasets, or one per --data folder")

    import onnxruntime

    from napari_pgps.engine import load_model, segment_volume
    from napari_pgps.tasks.export import export_model

    torch.set_num_threads(args.threads)  # ONNX Runtime takes torch's thread count (OnnxNetwork)
    models = args.model * len(args.data) if len(args.model) == 1 else args.model
    load_before = os.getloadavg()
    rows, summary = [], []
    with tempfile.TemporaryDirectory() as folder:
        for index, (data, source) in enumerate(zip(args.data, models)):
            package = export_model(source, Path(folder) / f"model{index}.zip", onnx=True)
            runtimes = {"torch": load_model(package, "cpu"), "onnx": load_model(package, "cpu", runtime="onnx")}
            cases = pick_cases(runtimes["torch"], data, args.cases)
            times = {(name, runtime): [] for name, _ in cases for runtime in runtimes}
            labels = {}
            for repeat in range(args.repeats + 1):  # round 0 warms up
                for name, image in cases:
                    order = list(runtimes) if repeat % 2 == 0 else list(runtimes)[::-1]
                    for runtime in order:
                        start = time.perf_counter()
                        result = segment_volume(runtimes[runtime], image)
                        elapsed = time.perf_counter() - start
                        if repeat > 0:
                            times[(name, runtime)].append(elapsed)
                        labels[(name, runtime)] = result.labels.array
            medians = {key: statistics.median(values) for key, values in times.items()}
            for name, image in cases:
                a, b = medians[(name, "torch")], medians[(name, "onnx")]
                differ = int(np.count_nonzero(labels[(name, "torch")] != labels[(name, "onnx")]))
                rows.append((Path(data).name, name, "x".join(map(str, image.shape)), a, b, differ))
            a = statistics.median(medians[(n, "torch")] for n, _ in cases)
            b = statistics.median(medians[(n, "onnx")] for n, _ in cases)
            summary.append((Path(data).name, Path(source).name, "x".join(map(str, runtimes["torch"].patch_size)),
                            len(cases), a, b))
    load_after = os.getloadavg()

    print(f"{cpu_model()}, {os.cpu_count()} logical cores, {args.threads} threads; torch {torch.__version__}, "
          f"onnxruntime {onnxruntime.__version__}, Python {platform.python_version()}; median of {args.repeats} "
          f"interleaved repeats after a warm-up; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after\n")
    print("| dataset | model | patch | cases | torch (s/volume) | ONNX Runtime (s/volume) | torch / ONNX |")
    print("|---|---|---|---|---|---|---|")
    for dataset, model, patch, count, a, b in summary:
        print(f"| {dataset} | {model} | {patch} | {count} | {a:.3f} | {b:.3f} | {a / b:.2f} |")
    print("\n| dataset | case | shape | torch (s) | ONNX Runtime (s) | torch / ONNX | voxels labelled differently |")
    print("|---|---|---|---|---|---|---|")
    for dataset, case, shape, a, b, differ in rows:
        print(f"| {dataset} | {case} | {shape} | {a:.3f} | {b:.3f} | {a / b:.2f} | {differ} |")


if __name__ == "__main__":
    main()
