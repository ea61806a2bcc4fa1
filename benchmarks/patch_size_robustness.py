"""Draw mean Dice against the inference patch size for several models side by side, and print tables.

Reads the JSON files of ``napari-pgps evaluate --patch-sizes ... --json FILE`` (one per trained model):

    python benchmarks/patch_size_robustness.py --out dice_vs_patch_size.png FP=fp.json AP=ap.json HN=hn.json ...
    python benchmarks/patch_size_robustness.py --out fig.png FP=fp-s0.json,fp-s1.json,fp-s2.json AP=ap-s0.json,...

A ``LABEL=`` prefix names a line; without one the model kind stored in the file (FP, AP, HN, PGPS) is used.
Several comma-separated files under one label are seeds of the same model: the line is their mean, the band
their range, and the tables give the mean and the sample standard deviation over the seeds. The x axis is the
cube root of the window's voxels (the edge of an isotropic window); a dotted line marks each model's training
patch. Printed below: a Markdown table of mean Dice per size with, per model, the mean over the sizes smaller
than its training patch in every axis and the Dice at the training patch (when it was among the sizes
evaluated, e.g. ``--patch-sizes 16:64:8 40x56x40``); then each model against the first one, seed by seed (the
files' order pairs the seeds), in Dice points.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path


def load(spec: str) -> tuple[str, list[dict]]:
    """``LABEL=FILE[,FILE...]`` or ``FILE[,FILE...]`` -> (label, one report per seed)."""
    label, _, paths = spec.rpartition("=")
    reports = []
    for path in paths.split(","):
        report = json.loads(Path(path).read_text())
        if "patch_sizes" not in report:
            raise SystemExit(f"{path}: not the JSON of 'napari-pgps evaluate --patch-sizes'.")
        reports.append(report)
    return label or reports[0].get("kind", Path(paths.split(",")[0]).stem), reports


def edge(patch) -> float:
    return math.prod(patch) ** (1 / 3)


def summary(report: dict) -> tuple[float, float]:
    """(mean Dice over the sizes smaller than the training patch in every axis, Dice at the training patch)."""
    training = report["training_patch"]
    rows = report["patch_sizes"]
    below = [r["mean_dice"] for r in rows if all(p < t for p, t in zip(r["patch"], training))]
    at = [r["mean_dice"] for r in rows if r["patch"] == training]
    return (sum(below) / len(below) if below else float("nan")), (at[0] if at else float("nan"))


def spread(values: list[float], scale: float = 1.0, digits: int = 3, sign: str = "") -> str:
    """``mean`` of one value, ``mean (sd)`` of several (sample standard deviation), each times ``scale``."""
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{mean:{sign}.{digits}f}"
    return f"{mean:{sign}.{digits}f} ({statistics.stdev(values) * scale:.{digits}f})"


def dice_by_size(reports: list[dict]) -> dict[tuple[int, ...], list[float]]:
    """Inference patch -> mean Dice of each seed."""
    sizes: dict[tuple[int, ...], list[float]] = {}
    for report in reports:
        for row in report["patch_sizes"]:
            sizes.setdefault(tuple(row["patch"]), []).append(row["mean_dice"])
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", metavar="[LABEL=]FILE.json[,FILE.json...]")
    parser.add_argument("--out", default="dice_vs_patch_size.png", help="the figure (PNG)")
    args = parser.parse_args()
    models = [load(spec) for spec in args.reports]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for label, reports in models:
        sizes = sorted(dice_by_size(reports).items(), key=lambda item: edge(item[0]))
        x = [edge(patch) for patch, _ in sizes]
        seeds = f" ({len(reports)} seeds)" if len(reports) > 1 else ""
        line, = axes.plot(x, [statistics.fmean(v) for _, v in sizes], marker="o", label=label + seeds)
        if len(reports) > 1:
            axes.fill_between(x, [min(v) for _, v in sizes], [max(v) for _, v in sizes], color=line.get_color(), alpha=0.2)
        axes.axvline(edge(reports[0]["training_patch"]), color=line.get_color(), linestyle=":", linewidth=1)
    axes.set_xlabel("inference patch (cube root of its voxels)")
    axes.set_ylabel("mean Dice" + (" (band: the seeds' range)" if any(len(r) > 1 for _, r in models) else ""))
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.legend(title="model (dotted: training patch)")
    figure.tight_layout()
    figure.savefig(args.out, dpi=120)
    print(f"figure: {args.out}")

    sizes = ["x".join(map(str, r["patch"])) for r in models[0][1][0]["patch_sizes"]]
    print("| model | seeds | " + " | ".join(sizes) + " | mean below training patch | at training patch |")
    print("|---" * (len(sizes) + 4) + "|")
    for label, reports in models:
        by_size = dice_by_size(reports)
        cells = [spread(by_size[tuple(r["patch"])]) for r in reports[0]["patch_sizes"]]
        below, at = zip(*(summary(r) for r in reports))
        print(f"| {label} | {len(reports)} | " + " | ".join(cells) + f" | {spread(list(below))} | {spread(list(at))} |")

    reference_label, reference = models[0]
    if len(models) > 1:
        print(f"\nAgainst {reference_label}, seed by seed (Dice points; mean (sd) over the seeds, then each seed):\n")
        print("| model | below the training patch | at the training patch |")
        print("|---|---|---|")
        for label, reports in models[1:]:
            pairs = list(zip(reports, reference))
            below = [summary(r)[0] - summary(f)[0] for r, f in pairs]
            at = [summary(r)[1] - summary(f)[1] for r, f in pairs]
            each = lambda values: ", ".join(f"{100 * v:+.2f}" for v in values)  # noqa: E731
            print(f"| {label} | {spread(below, 100, 1, '+')}: {each(below)} | {spread(at, 100, 2, '+')}: {each(at)} |")


if __name__ == "__main__":
    main()
