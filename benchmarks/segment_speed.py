"""Time to segment one volume with two models, interleaved, with and without oneDNN convolutions.

    python benchmarks/segment_speed.py --data DIR MODEL_A MODEL_B [--repeats 15] [--threads 2]

Both models segment the first validation case of MODEL_A's split (sliding window at each model's
training patch, as ``napari-pgps segment``); the runs alternate A, B, A, B... so both see the same
machine load. "pytorch" is PyTorch's own choice of CPU convolution kernel, "onednn" forces oneDNN
(what ``predict_probabilities`` does on the CPU). Prints medians and ratios as a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("models", nargs=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from napari_pgps.data.normalization import normalize
    from napari_pgps.engine import inference, load_model
    from napari_pgps.tasks.evaluation import labelled_cases

    torch.set_num_threads(args.threads)
    models = [load_model(m, "cpu") for m in args.models]
    case = labelled_cases(models[0], args.data, "validation")[0]
    images = [normalize(case.image.array, m.config.normalization) for m in models]
    kernels = {"pytorch": lambda device: contextlib.nullcontext(), "onednn": inference.cpu_convolutions}
    times = {(k, i): [] for k in kernels for i in range(2)}
    original = inference.cpu_convolutions
    try:
        for _ in range(args.repeats + 2):  # the first two rounds warm up
            for kernel, choose in kernels.items():
                inference.cpu_convolutions = choose
                for i, (model, image) in enumerate(zip(models, images)):
                    start = time.perf_counter()
                    inference.predict_probabilities(model.network, image, model.patch_size, model.device)
                    times[(kernel, i)].append(time.perf_counter() - start)
    finally:
        inference.cpu_convolutions = original
    median = {key: statistics.median(values[2:]) for key, values in times.items()}
    print(f"case {case.name}, shape {case.image.shape}, {args.threads} threads, median of {args.repeats}\n")
    print(f"| kernels | {args.models[0]} (s) | {args.models[1]} (s) | A / B |\n|---|---|---|---|")
    for kernel in kernels:
        a, b = median[(kernel, 0)], median[(kernel, 1)]
        print(f"| {kernel} | {a:.3f} | {b:.3f} | {a / b:.2f} |")
    for i, name in enumerate(args.models):
        print(f"\n{name}: oneDNN is {median[('pytorch', i)] / median[('onednn', i)]:.2f}x as fast as PyTorch's choice")


if __name__ == "__main__":
    main()
