"""Peak memory and time of one large evaluation: a 384 x 384 x 200 volume with 14 labels (13 structures).

    python benchmarks/evaluation_memory.py
    python benchmarks/evaluation_memory.py --shape 300 512 512 --labels 14

What is measured: ``napari_pgps.tasks.evaluation.evaluate_folder`` (``napari-pgps evaluate --predictions``) on a
generated dataset of one case, its reference and prediction written as NIfTI into a temporary folder: reading
both files (twice: the grid and label values are checked for every case before any is scored), and Dice, HD95,
surface Dice, precision and recall of every label. It runs twice, each time in a fresh Python process:

* plain: the wall time, and the peak resident memory of the process (``resource.getrusage``'s ``ru_maxrss``),
  with what the process held before the evaluation (Python, numpy, scipy, torch imported) for scale;
* traced: the peak of the memory that Python and numpy allocate during the evaluation (``tracemalloc``; numpy
  reports its arrays to it), which leaves out the import baseline.

The structures are ellipsoids of 10 to 120 voxels across (about the range of the organs of an abdominal CT at
0.8 x 0.8 x 1.5 mm), placed at random; the prediction is the reference with each structure moved by up to two
voxels along each axis, so every label has a surface to measure.

Scores were computed before (issue 31) on two dense float32 one-hot maps of all labels,
2 x labels x voxels x 4 bytes (3.3 GB here) before any further copy (8.3 GB measured in issue 31); the table
prints that figure beside the measured peak. Target: a peak under 3 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TARGET_BYTES = 3e9
"""3 GB (decimal, as issue 31 counts: 8.3 GB)."""


def make_case(shape: tuple[int, int, int], labels: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A reference and a prediction label map (uint8, Z, Y, X) of ``labels - 1`` ellipsoids (see the docstring)."""
    rng = np.random.default_rng(seed)
    reference = np.zeros(shape, dtype=np.uint8)
    prediction = np.zeros(shape, dtype=np.uint8)
    for value in range(1, labels):
        size = np.minimum(rng.integers(10, 121, 3), np.asarray(shape) - 4)
        start = [int(rng.integers(2, s - z - 1)) for s, z in zip(shape, size)]
        axes = np.ogrid[tuple(slice(0, z) for z in size)]
        inside = sum(((a - (z - 1) / 2) / (z / 2)) ** 2 for a, z in zip(axes, size)) <= 1.0
        moved = [int(np.clip(a + rng.integers(-2, 3), 0, s - z)) for a, s, z in zip(start, shape, size)]
        for target, corner in ((reference, start), (prediction, moved)):
            box = tuple(slice(c, c + z) for c, z in zip(corner, size))
            target[box][inside] = value
    return reference, prediction


def write_dataset(folder: Path, shape: tuple[int, int, int], labels: int,
                  spacing: tuple[float, float, float]) -> tuple[Path, Path]:
    """A Decathlon-layout dataset of one case and a predictions folder; returns (dataset, predictions)."""
    from napari_pgps.data.volume import Volume, affine_from_spacing, write_volume

    reference, prediction = make_case(shape, labels)
    affine = affine_from_spacing(spacing)
    data, predictions = folder / "data", folder / "predictions"
    write_volume(Volume(reference, affine), data / "labelsTr" / "case_000.nii.gz")
    write_volume(Volume(np.zeros(shape, dtype=np.uint8), affine), data / "imagesTr" / "case_000.nii.gz")
    write_volume(Volume(prediction, affine), predictions / "case_000.nii.gz")
    names = {str(v): ("background" if v == 0 else f"structure {v}") for v in range(labels)}
    (data / "dataset.json").write_text(json.dumps({
        "labels": names, "modality": {"0": "CT"},
        "training": [{"image": "./imagesTr/case_000.nii.gz", "label": "./labelsTr/case_000.nii.gz"}]}))
    return data, predictions


def child(data: str, predictions: str, traced: bool) -> None:
    """Evaluate once in this process and print the measures as one JSON line."""
    import tracemalloc

    from napari_pgps.tasks.evaluation import evaluate_folder

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if traced:
        tracemalloc.start()
    start = time.perf_counter()
    report = evaluate_folder(predictions, data)
    seconds = time.perf_counter() - start
    traced_peak = tracemalloc.get_traced_memory()[1] if traced else None
    print(json.dumps({"seconds": seconds, "rss_before": baseline,
                      "rss_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "traced_peak": traced_peak, "mean_dice": report["mean_dice"],
                      "mean_hd95": report["means"]["hd95"]}))


def machine() -> str:
    """The CPU model, core count and memory of this machine, in words."""
    model = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    return f"{model}, {os.cpu_count()} cores, {memory:.0f} GB, Python {platform.python_version()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=(200, 384, 384), metavar=("Z", "Y", "X"))
    parser.add_argument("--labels", type=int, default=14, help="label values, background included (default 14)")
    parser.add_argument("--spacing", type=float, nargs=3, default=(1.5, 0.8, 0.8), metavar=("SZ", "SY", "SX"))
    parser.add_argument("--child", nargs=2, metavar=("DATA", "PREDICTIONS"), help=argparse.SUPPRESS)
    parser.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, traced=args.traced)
        return 0
    shape, voxels = tuple(args.shape), int(np.prod(args.shape))
    with tempfile.TemporaryDirectory() as folder:
        data, predictions = write_dataset(Path(folder), shape, args.labels, tuple(args.spacing))
        runs = {}
        for mode in ("plain", "traced"):
            command = [sys.executable, __file__, "--child", str(data), str(predictions)] + (
                ["--traced"] if mode == "traced" else [])
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            runs[mode] = json.loads(out.strip().splitlines()[-1])
    plain, traced = runs["plain"], runs["traced"]
    old = 2 * args.labels * voxels * 4
    gb = 1e9
    print(f"machine: {machine()}")
    print(f"volume: {' x '.join(map(str, shape))} (Z, Y, X) = {voxels / 1e6:.1f} M voxels, {args.labels} labels; "
          f"mean Dice {plain['mean_dice']:.4f}, mean HD95 {plain['mean_hd95']:.2f} mm")
    print(f"wall time of the evaluation: {plain['seconds']:.1f} s (reading both files twice and scoring)")
    print(f"peak resident memory: {plain['rss_peak'] / gb:.2f} GB (of which {plain['rss_before'] / gb:.2f} GB "
          f"held before the evaluation: Python and its libraries)")
    print(f"peak of the arrays allocated by the evaluation (tracemalloc): {traced['traced_peak'] / gb:.2f} GB "
          f"= {traced['traced_peak'] / voxels:.1f} bytes a voxel")
    print(f"before (one-hot): two float32 one-hot maps alone, {old / gb:.2f} GB; 8.3 GB measured in issue 31")
    print(f"target: under {TARGET_BYTES / gb:.0f} GB peak: {'met' if plain['rss_peak'] < TARGET_BYTES else 'MISSED'}")
    return 0 if plain["rss_peak"] < TARGET_BYTES else 1


if __name__ == "__main__":
    sys.exit(main())
