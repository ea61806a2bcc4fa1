"""The same held-out cases stored three ways, segmented by one model: does the answer stay in world space?

    python benchmarks/geometry_robustness.py --model RUN --data DIR --out DIR [--split validation]

The model's held-out cases (``--split``, as saved with it) are written three ways, each with a truthful affine
(every voxel at the same place in the world):

* ``original``: as stored;
* ``permuted``: the file axes (i, j, k) become (k, i, j) and the new first axis is flipped;
* ``resampled``: the third file axis (k) resampled to 2.5 mm (image: cubic spline, labels: each label's mask
  linearly, kept at 0.5).

Each set is scored by ``napari-pgps evaluate``'s code (mean Dice over the labels and cases, on that set's own
grid). For ``permuted`` the script also checks that every case's segmentation, moved back to the original
grid, is identical to the original's. Writes ``results.json`` and ``report.md`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from napari_pgps.data.geometry import resample, resample_labels
from napari_pgps.data.volume import read_volume
from napari_pgps.engine import load_model, segment_volume
from napari_pgps.tasks.evaluation import evaluate_model, labelled_cases

THICK_MM = 2.5


def permuted(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """File array (x, y, z) and affine with axes (k, i, j), the first flipped; voxels keep their world place."""
    out = np.flip(np.transpose(data, (2, 0, 1)), 0)
    # new index (a, b, c) = old (i, j, k) with i = b, j = c, k = n_k - 1 - a
    n_k = data.shape[2]
    to_old = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [-1, 0, 0, n_k - 1], [0, 0, 0, 1]], dtype=float)
    return np.ascontiguousarray(out), affine @ to_old


def thickened(data: np.ndarray, affine: np.ndarray, labels: bool) -> tuple[np.ndarray, np.ndarray]:
    """File array (x, y, z) with its z axis resampled to 2.5 mm, and the matching affine."""
    spacing = float(np.linalg.norm(affine[:3, 2]))
    n = data.shape[2]
    new_n = max(1, int(round(n * spacing / THICK_MM)))
    zyx = np.transpose(data, (2, 1, 0))
    shape = (new_n,) + zyx.shape[1:]
    if labels:
        out = resample_labels(zyx, shape, separate_axis=0)
    else:
        out = resample(zyx[None].astype(np.float32), shape, order=3, separate_axis=0, separate_order=3)[0]
    new_affine = affine.copy()
    step = n / new_n  # old voxels per new voxel; the first voxel's centre moves by half a step less half an old voxel
    new_affine[:3, 2] = affine[:3, 2] * step
    new_affine[:3, 3] = affine[:3, 3] + affine[:3, 2] * (step - 1) / 2
    return np.ascontiguousarray(np.transpose(out, (2, 1, 0))), new_affine


def write_variant(cases, root: Path, labels: dict[int, str], change) -> Path:
    """A Decathlon-layout folder of the cases changed by ``change(data, affine, is_labels)``."""
    entries = []
    for case in cases:
        for folder, volume, is_labels in (("imagesTr", case.image, False), ("labelsTr", case.labels, True)):
            data = np.transpose(volume.array, (2, 1, 0))
            data, affine = change(data, volume.affine, is_labels)
            (root / folder).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(data.astype(np.uint8 if is_labels else np.float32), affine),
                     str(root / folder / f"{case.name}.nii.gz"))
        entries.append({"image": f"./imagesTr/{case.name}.nii.gz", "label": f"./labelsTr/{case.name}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"labels": {str(k): v for k, v in labels.items()},
                                                   "modality": {"0": "MRI"}, "training": entries}))
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--split", default="validation", choices=("validation", "training", "all"))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    out = Path(args.out)
    model = load_model(args.model, args.device)
    cases = labelled_cases(model, args.data, args.split)
    variants = {
        "original": lambda d, a, _: (d, a),
        "permuted": lambda d, a, _: permuted(d, a),
        "resampled": lambda d, a, is_labels: thickened(d, a, is_labels),
    }
    results = {}
    for name, change in variants.items():
        folder = write_variant(cases, out / name, model.config.labels, change)
        report = evaluate_model(model, folder)
        results[name] = {"mean_dice": report["mean_dice"], "dice_per_label": report["dice_per_label"],
                         "cases": len(report["cases"])}
        print(f"{name}: mean Dice {report['mean_dice']:.4f} over {len(report['cases'])} cases", flush=True)
    same = 0
    for case in cases:
        original = segment_volume(model, case.image).labels.array
        moved = read_volume(out / "permuted" / "imagesTr" / f"{case.name}.nii.gz")
        back = segment_volume(model, moved).labels.array
        back_xyz = np.flip(np.transpose(back, (2, 1, 0)), 0)  # (a, b, c) file order, first axis flipped back
        same += int(np.array_equal(np.transpose(back_xyz, (1, 2, 0)), np.transpose(original, (2, 1, 0))))
    results["permuted_identical_in_world"] = f"{same}/{len(cases)}"
    (out / "results.json").write_text(json.dumps(results, indent=2))
    lines = [f"Model `{args.model}`, {len(cases)} {args.split} cases of `{args.data}`.", "",
             "| the same cases, stored | mean Dice | " + " | ".join(results["original"]["dice_per_label"]) + " |",
             "|---|---|" + "---|" * len(results["original"]["dice_per_label"])]
    for name in variants:
        per_label = " | ".join(f"{v:.4f}" for v in results[name]["dice_per_label"].values())
        lines.append(f"| {name} | {results[name]['mean_dice']:.4f} | {per_label} |")
    lines += ["", f"Permuted cases whose segmentation is identical to the original's in world space: {results['permuted_identical_in_world']}."]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print((out / "report.md").read_text())


if __name__ == "__main__":
    main()
