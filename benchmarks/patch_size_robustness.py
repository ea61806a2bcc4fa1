"""Draw mean Dice against the inference patch size for several models side by side, and print a table.

Reads the JSON files of ``napari-pgps evaluate --patch-sizes ... --json FILE`` (one per model):

    python benchmarks/patch_size_robustness.py --out dice_vs_patch_size.png FP=fp.json AP=ap.json HN=hn.json ...

A ``LABEL=`` prefix names a line; without one the model kind stored in the file (FP, AP, HN, PGPS) is used.
The x axis is the cube root of the window's voxels (the edge of an isotropic window); a dotted line marks each
model's training patch. Printed below: a Markdown table of mean Dice per size with, per model, the mean over
the sizes smaller than its training patch in every axis and the Dice at the training patch (when it was
among the sizes evaluated, e.g. ``--patch-sizes 16:64:8 40x56x40``).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def load(spec: str) -> tuple[str, dict]:
    """``LABEL=FILE`` or ``FILE`` -> (label, report)."""
    label, _, path = spec.rpartition("=")
    report = json.loads(Path(path).read_text())
    if "patch_sizes" not in report:
        raise SystemExit(f"{path}: not the JSON of 'napari-pgps evaluate --patch-sizes'.")
    return label or report.get("kind", Path(path).stem), report


def edge(patch) -> float:
    return math.prod(patch) ** (1 / 3)


def summary(report: dict) -> tuple[float, float]:
    """(mean Dice over the sizes smaller than the training patch in every axis, Dice at the training patch)."""
    training = report["training_patch"]
    rows = report["patch_sizes"]
    below = [r["mean_dice"] for r in rows if all(p < t for p, t in zip(r["patch"], training))]
    at = [r["mean_dice"] for r in rows if r["patch"] == training]
    return (sum(below) / len(below) if below else float("nan")), (at[0] if at else float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", metavar="[LABEL=]FILE.json")
    parser.add_argument("--out", default="dice_vs_patch_size.png", help="the figure (PNG)")
    args = parser.parse_args()
    models = [load(spec) for spec in args.reports]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for label, report in models:
        rows = sorted(report["patch_sizes"], key=lambda r: edge(r["patch"]))
        line, = axes.plot([edge(r["patch"]) for r in rows], [r["mean_dice"] for r in rows], marker="o", label=label)
        axes.axvline(edge(report["training_patch"]), color=line.get_color(), linestyle=":", linewidth=1)
    axes.set_xlabel("inference patch (cube root of its voxels)")
    axes.set_ylabel("mean Dice")
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.legend(title="model (dotted: training patch)")
    figure.tight_layout()
    figure.savefig(args.out, dpi=120)
    print(f"figure: {args.out}")

    sizes = ["x".join(map(str, r["patch"])) for r in models[0][1]["patch_sizes"]]
    print("| model | " + " | ".join(sizes) + " | mean below training patch | at training patch |")
    print("|---" * (len(sizes) + 3) + "|")
    for label, report in models:
        below, at = summary(report)
        cells = [f"{r['mean_dice']:.3f}" for r in report["patch_sizes"]]
        print(f"| {label} | " + " | ".join(cells) + f" | {below:.3f} | {at:.3f} |")


if __name__ == "__main__":
    main()
