"""Evaluating a trained model on the labelled cases of a dataset folder."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..data.dataset import label_index_lookup, load_cases, read_dataset_info
from ..engine import SegmentationModel, segment_volume
from ..engine.metrics import dice_per_label, mean_of, summarize_dice
from ..errors import InputError
from ..models import check_inference_patch, model_kind


def evaluate_model(
    model: SegmentationModel,
    data: str | Path,
    *,
    split: str = "all",
    patch_size: Optional[Sequence[int]] = None,
    mirror: bool = False,
    progress: Optional[Callable[[str, dict[str, float]], None]] = None,
) -> dict:
    """Segment every labelled case of ``data`` and compute Dice per label.

    Args:
        split: ``"all"`` cases, or the model's ``"validation"`` / ``"training"``
            cases, as saved with it (``splits.json`` and the checkpoint).
        progress: called with each case's name and Dice per label name.

    Returns:
        ``{"mean_dice": float, "dice_per_label": {name: float},
        "cases": [{"case": str, "dice_per_label": {name: float}}]}``; a label
        absent from both prediction and truth of a case is left out of that
        case and of the mean.
    """
    return _score(model, labelled_cases(model, data, split), patch_size, mirror, progress)


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
        report = _score(model, cases, size, mirror, None)
        row = {"patch": list(size), "mean_dice": report["mean_dice"], "dice_per_label": report["dice_per_label"]}
        rows.append(row)
        if progress is not None:
            progress(size, row)
    return {"patch_sizes": rows, "training_patch": list(model.patch_size), "kind": model_kind(model.config),
            "model": model.checkpoint}


def labelled_cases(model: SegmentationModel, data: str | Path, split: str = "all") -> list:
    """The labelled cases of ``data`` (all, or the model's validation / training split), checked against its labels."""
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
        names = model.split["validation" if split == "validation" else "training"]
        missing = sorted(set(names) - {f.name for f in info.files})
        if missing:
            raise InputError(f"{info.root}: the model's {split} cases {', '.join(missing[:5])} are not in this "
                             "dataset; evaluate it on the dataset it was trained on, or with --split all.")
    return load_cases(info, require_labels=False, names=names)


def _score(model: SegmentationModel, cases: list, patch_size, mirror: bool, progress) -> dict:
    values = sorted(model.config.labels)
    label_names = [model.config.labels[v] for v in values][1:]
    lookup = label_index_lookup(model.config.labels)
    per_case, rows = [], []
    for case in cases:
        result = segment_volume(model, case.image, patch_size=patch_size, mirror=mirror)
        dice = dice_per_label(lookup[result.labels.array], lookup[case.labels.array], len(values))
        per_case.append(dice)
        case_dice = {n: float(d) for n, d in zip(label_names, dice) if np.isfinite(d)}
        rows.append({"case": case.name, "dice_per_label": case_dice})
        if progress is not None:
            progress(case.name, case_dice)
    summary = summarize_dice(per_case, label_names)
    return {"mean_dice": mean_of(summary), "dice_per_label": summary, "cases": rows}
