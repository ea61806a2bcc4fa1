"""Scoring segmentations against references: a trained model on a dataset, or a folder of any tool's results.

Every score comes from :func:`napari_pgps.engine.metrics.scores_per_label`, so
napari-pgps and, say, nnU-Net predictions are scored by the same code. Cases
are read one at a time, and each is scored label by label (memory bounded by a
few copies of one volume, whatever the number of labels).

A label map holding a value that ``dataset.json`` does not declare is refused
(:class:`~napari_pgps.errors.InputError`), never read as background. Where the
dataset declares nnU-Net v2's ``ignore`` label, the reference's ignore voxels
are left out of every score (both maps count as background there), and the
ignore label is not scored as a class; a prediction holding it is refused.

Predictions and references may be in any volume format napari-pgps reads
(NIfTI, TIFF, NRRD, MetaImage; a dataset's references in its
``file_ending``), each in its own: a prediction must lie on its reference's
grid, the same shape and the same affine to world RAS mm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from ..data.dataset import Case, case_files, read_case, read_dataset_info
from ..data.geometry import AFFINE_TOLERANCE, geometry_difference
from ..data.volume import VOLUME_SUFFIXES, Volume, read_volume
from ..engine import SegmentationModel, segment_volume
from ..engine.metrics import (METRICS, SURFACE_TOLERANCE_MM, class_indices, mean_of, scores_per_label,
                              summarize_dice)
from ..errors import InputError
from ..models import check_inference_patch, model_kind


def evaluate_model(
    model: SegmentationModel | Sequence[SegmentationModel],
    data: str | Path,
    *,
    split: str = "all",
    patch_size: Optional[Sequence[int]] = None,
    mirror: bool = False,
    postprocess: bool = True,
    tolerance_mm: float = SURFACE_TOLERANCE_MM,
    progress: Optional[Callable[[str, dict[str, float]], None]] = None,
) -> dict:
    """Segment every labelled case of ``data`` with a model (or an ensemble) and score it.

    Args:
        split: ``"all"`` cases, or the (first) model's ``"validation"`` / ``"training"`` / ``"test"``
            cases, as saved with it (``splits.json`` and the checkpoint).
        postprocess: apply the post-processing chosen for the model.
        progress: called with each case's name and Dice per label name.

    Returns:
        the report of :func:`score_cases`.
    """
    models = [model] if isinstance(model, SegmentationModel) else list(model)
    cases = labelled_cases(models[0], data, split)
    pairs = ((case, segment_volume(models, case.image, patch_size=patch_size, mirror=mirror,
                                   postprocess=postprocess).labels) for case in cases)
    return score_cases(pairs, models[0].config.labels, ignore_label=cases.info.ignore_label, tolerance_mm=tolerance_mm,
                       progress=progress)


def evaluate_folds(
    models: Sequence[SegmentationModel],
    data: str | Path,
    *,
    mirror: bool = False,
    postprocess: bool = True,
    tolerance_mm: float = SURFACE_TOLERANCE_MM,
    progress: Optional[Callable[[str, dict[str, float]], None]] = None,
) -> dict:
    """A cross-validation: each fold's model on its own validation cases, and all of them pooled.

    Returns:
        ``{"folds": [{"fold": k, "model": checkpoint, **report}], "pooled": report}`` (reports of
        :func:`score_cases`; the pooled one over every fold's validation cases).

    Raises:
        InputError: a model has no saved split, or two folds share a validation case.
    """
    folds, rows, seen = [], [], set()
    for model in models:
        report = evaluate_model(model, data, split="validation", mirror=mirror, postprocess=postprocess,
                                tolerance_mm=tolerance_mm, progress=progress)
        names = {row["case"] for row in report["cases"]}
        if names & seen:
            raise InputError(f"{model.checkpoint}: its validation cases overlap another model's; give the folds of one "
                             "cross-validation (napari-pgps train --fold K).")
        seen |= names
        folds.append({"fold": (model.split or {}).get("fold"), "model": model.checkpoint, **report})
        rows += report["cases"]
    labels = models[0].config.labels
    return {"folds": folds, "pooled": summarize_rows(rows, labels, folds[0]["tolerance_mm"])}


def evaluate_folder(
    predictions: str | Path,
    data: str | Path,
    *,
    tolerance_mm: float = SURFACE_TOLERANCE_MM,
    progress: Optional[Callable[[str, dict[str, float]], None]] = None,
) -> dict:
    """Score a folder of segmentation files (``CASE.nii.gz``, any tool's) against the labelled cases of ``data``.

    Every labelled case needs its prediction, on the reference's grid (same
    shape and affine), holding only label values that ``dataset.json``
    declares; checked for all cases before any is scored. A prediction may be
    in any volume format read (:func:`prediction_file`), whatever the
    references' format: ``CASE.nrrd`` is scored against ``CASE.nii.gz``.

    Raises:
        InputError: a prediction is missing, lies on another grid than its reference, or it or its reference holds
            an undeclared label value.
    """
    info = read_dataset_info(data)
    folder = Path(predictions)
    if not folder.is_dir():
        raise InputError(f"{folder}: predictions folder not found.")
    files = case_files(info, require_labels=False)
    found = {entry.name: prediction_file(folder, entry.name, entry.labels.name[len(entry.name):], info.root)
             for entry in files}
    for entry in files:  # geometry and values first, so a fault is told before minutes of scoring
        prediction, reference = read_volume(found[entry.name], kind="labels"), read_volume(entry.labels, kind="labels")
        check_same_grid(prediction, reference, str(prediction.path), f"its reference {reference.path}",
                        "write the prediction on its image's own grid (or resample it onto the reference's) and "
                        "evaluate again")
        check_declared(reference, info.labels, info.ignore_label, str(reference.path), reference=True)
        check_declared(prediction, info.labels, info.ignore_label, str(prediction.path), reference=False)
    pairs = ((read_volume(entry.labels, kind="labels"), read_volume(found[entry.name], kind="labels")) for entry in files)
    return score_cases(pairs, info.labels, ignore_label=info.ignore_label, tolerance_mm=tolerance_mm,
                       progress=progress, references_given=True)


def prediction_file(folder: Path, case: str, ending: str, dataset: Path) -> Path:
    """The prediction of ``case`` in ``folder``: ``CASE`` with the references' ``ending`` where there is one, else
    ``CASE`` with the one other volume ending found (:func:`volume_files_of`).

    Raises:
        InputError: no such file, or several in other formats (which one is meant is unknown).
    """
    found = volume_files_of(folder, case, ending)
    if len(found) == 1:
        return found[0]
    own = folder / f"{case}{ending}"
    if found:
        raise InputError(f"{own}: no prediction for case '{case}' in the references' format, and {len(found)} in "
                         f"others ({', '.join(p.name for p in found)}); keep one of them.")
    raise InputError(f"{own}: no prediction for case '{case}'; a prediction folder holds one CASE{ending} (or CASE in "
                     f"another volume format) per labelled case of {dataset}.")


def volume_files_of(folder: Path, case: str, preferred: str = "") -> list[Path]:
    """The volume files of ``case`` in ``folder``: ``CASE`` + ``preferred`` alone where that file exists, else every
    ``CASE`` + a volume ending read (``.nii.gz``, ``.nii``, ``.tif``, ``.tiff``, ``.nrrd``, ``.nhdr``, ``.mha``,
    ``.mhd``) that exists."""
    if preferred and (folder / f"{case}{preferred}").is_file():
        return [folder / f"{case}{preferred}"]
    return [folder / f"{case}{suffix}" for suffix in VOLUME_SUFFIXES if (folder / f"{case}{suffix}").is_file()]


def evaluate_patch_sizes(
    model: SegmentationModel,
    data: str | Path,
    patch_sizes: Sequence[Sequence[int]],
    *,
    split: str = "all",
    mirror: bool = False,
    progress: Optional[Callable[[tuple[int, int, int], dict], None]] = None,
) -> dict:
    """Evaluate the model at each inference patch size (Z, Y, X) on the same cases.

    Returns:
        ``{"patch_sizes": [{"patch": [z, y, x], "mean_dice": float, "dice_per_label": {...}}],
        "training_patch": [z, y, x], "kind": "FP" | "AP" | "HN" | ..., "model": checkpoint path}``.
        A hypernetwork is baked once per size.
    """
    sizes = [tuple(int(v) for v in size) for size in patch_sizes]
    for size in sizes:
        check_inference_patch(model.config.model, size)
    cases = labelled_cases(model, data, split)
    rows = []
    for size in sizes:
        pairs = ((case, segment_volume(model, case.image, patch_size=size, mirror=mirror).labels) for case in cases)
        report = score_cases(pairs, model.config.labels, ignore_label=cases.info.ignore_label)
        row = {"patch": list(size), "mean_dice": report["mean_dice"], "dice_per_label": report["dice_per_label"]}
        rows.append(row)
        if progress is not None:
            progress(size, row)
    return {"patch_sizes": rows, "training_patch": list(model.patch_size), "kind": model_kind(model.config),
            "model": model.checkpoint}


def labelled_cases(model: SegmentationModel, data: str | Path, split: str = "all") -> "LabelledCases":
    """The labelled cases of ``data`` (all, or the model's validation / training / test split), checked against its
    labels, read one at a time as they are used."""
    info = read_dataset_info(data)
    if info.labels != model.config.labels:
        raise InputError(
            f"{info.root}: its labels {info.labels} differ from the model's {model.config.labels}; "
            "evaluate on a dataset with the same labels."
        )
    names = None
    if split != "all":
        if model.split is None:
            raise InputError(f"{model.checkpoint}: this model has no saved split (it was trained before napari-pgps "
                             "saved one); evaluate with --split all, or on a folder of its held-out cases.")
        if split == "test" and not model.split.get("test"):
            raise InputError(f"{model.checkpoint}: this model has no test split (no cases were set aside when it was "
                             "trained); train with --test-fraction F to set some aside, or evaluate it on a folder of "
                             "cases it never saw.")
        names = model.split[split]
        missing = sorted(set(names) - {f.name for f in info.files})
        if missing:
            raise InputError(f"{info.root}: the model's {split} cases {', '.join(missing[:5])} are not in this "
                             "dataset; evaluate it on the dataset it was trained on, or with --split all.")
    return LabelledCases(info, case_files(info, require_labels=False, names=names))


class LabelledCases(Sequence[Case]):
    """Cases of a dataset, each read when it is indexed."""

    def __init__(self, info, files) -> None:
        self.info, self.files = info, files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return read_case(self.info, self.files[index])

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.files]


def score_cases(
    pairs: Iterable[tuple[Case | Volume, Volume]],
    labels: dict[int, str],
    *,
    ignore_label: Optional[int] = None,
    tolerance_mm: float = SURFACE_TOLERANCE_MM,
    progress: Optional[Callable[[str, dict[str, float]], None]] = None,
    references_given: bool = False,
) -> dict:
    """Score (case, prediction) pairs, or (reference, prediction) label volumes with ``references_given``.

    Args:
        labels: the classes, value -> name, background (0) included.
        ignore_label: the value of nnU-Net v2's ``ignore`` label: the reference's voxels holding it are left out.

    Returns:
        ``{"mean_dice": float, "dice_per_label": {name: float}, "metrics": {metric: {name: float}},
        "means": {metric: float}, "tolerance_mm": float, "cases": [{"case": str, "dice_per_label": {...},
        metric: {name: float}, ...}]}`` with the metrics of
        :data:`napari_pgps.engine.metrics.METRICS`; NaN values (undefined, see
        there) are left out of the means and written as ``null``.

    Raises:
        InputError: a prediction or reference holds a value that is neither one of ``labels`` nor (in a reference)
            the ignore label.
    """
    values = sorted(labels)
    names = [labels[v] for v in values][1:]
    rows = []
    for first, prediction in pairs:
        reference = first if references_given else first.labels
        name = reference.name if references_given else first.name
        check_declared(prediction, labels, ignore_label, str(prediction.path) if references_given
                       else f"the prediction of case '{name}'", reference=False)
        check_declared(reference, labels, ignore_label, str(reference.path), reference=True)
        truth, ignored = class_indices(reference.array, labels, ignore_label)
        scores = scores_per_label(class_indices(prediction.array, labels)[0], truth, len(values), reference.spacing,
                                  tolerance_mm, ignored)
        row = {"case": name}
        for metric, per_label in scores.items():
            row[metric] = {n: (float(v) if np.isfinite(v) else None) for n, v in zip(names, per_label)}
        row["dice_per_label"] = {n: v for n, v in row["dice"].items() if v is not None}
        rows.append(row)
        if progress is not None:
            progress(name, row["dice_per_label"])
    return summarize_rows(rows, labels, tolerance_mm)


def summarize_rows(rows: list[dict], labels: dict[int, str], tolerance_mm: float) -> dict:
    """The report of :func:`score_cases` from its per-case rows (e.g. several folds' rows pooled)."""
    names = [labels[v] for v in sorted(labels)][1:]
    metrics = {}
    for metric in METRICS:
        per_case = [np.array([np.nan if row[metric][n] is None else row[metric][n] for n in names]) for row in rows]
        metrics[metric] = summarize_dice(per_case, names)
    return {"mean_dice": mean_of(metrics["dice"]), "dice_per_label": metrics["dice"], "metrics": metrics,
            "means": {metric: mean_of(metrics[metric]) for metric in METRICS}, "tolerance_mm": float(tolerance_mm),
            "cases": rows}


def check_declared(volume: Volume, labels: dict[int, str], ignore_label: Optional[int], what: str,
                   reference: bool) -> None:
    """Refuse a label map (``what`` names it; values 0 or more, as :func:`read_volume` and the engine give them)
    holding a value that is not a class of ``labels``, nor, in a ``reference``, the ignore label."""
    allowed = sorted(labels) + ([ignore_label] if reference and ignore_label is not None else [])
    is_allowed = np.zeros(max(int(volume.array.max(initial=0)), *allowed) + 1, dtype=bool)
    is_allowed[allowed] = True
    undeclared = ~is_allowed[volume.array]  # a table, not np.isin: 2 bytes a voxel instead of 12
    if undeclared.any():
        found = np.unique(volume.array[undeclared]).tolist()
        shown = ", ".join(map(str, found[:5])) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        declared = ", ".join(map(str, sorted(labels)))
        if ignore_label is not None:
            declared += f", and {ignore_label}, the ignore label of references"
        raise InputError(f"{what}: holds label value(s) {shown}, not declared in dataset.json for a "
                         f"{'reference' if reference else 'prediction'} (the dataset declares labels {declared}); map "
                         f"or remove value(s) {shown} in this label map, then evaluate again.")


def check_same_grid(volume: Volume, other: Volume, named: str, other_named: str, remedy: str) -> None:
    """Refuse, in one line, ``volume`` when its shape or affine is not ``other``'s:
    ``NAMED: shape A (Z, Y, X), spacing ... mm, but OTHER_NAMED has shape B ...[ (how the affines differ)]; REMEDY.``
    """
    same_affine = np.allclose(volume.affine, other.affine, atol=AFFINE_TOLERANCE)
    if volume.shape == other.shape and same_affine:
        return
    how = "" if same_affine else f" ({geometry_difference(volume.affine, other.affine)})"
    raise InputError(f"{named}: shape {_grid(volume)}, but {other_named} has shape {_grid(other)}{how}; {remedy}.")


def _grid(volume: Volume) -> str:
    """A volume's shape (Z, Y, X) and spacing in words."""
    return (f"{' x '.join(map(str, volume.shape))} (Z, Y, X), spacing "
            f"{' x '.join(f'{s:.4g}' for s in volume.spacing)} mm")
