"""The volume report of segmented cases: per case and label, its volume and, against a reference, Dice and HD95.

``napari-pgps segment --report report.csv`` and the Segment widget's export write it: one row per case and
foreground label, in the columns of :data:`REPORT_COLUMNS`:

* ``case``, ``label`` (its name), ``value`` (its value in the label map);
* ``voxels``, the voxels holding it, and ``volume_ml``, voxels x voxel volume (sz x sy x sx mm^3) / 1000;
* with a reference label map on the same grid, ``dice`` and ``hd95`` (mm), computed as ``napari-pgps evaluate``
  computes them (:func:`napari_pgps.tasks.evaluation.score_cases`, on
  :mod:`napari_pgps.engine.metrics`): empty where undefined (the label in neither map) or without a reference;
  an HD95 of a label in only one of the maps is the image's diagonal (a miss scores worse than any hit).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Iterable, Optional

from ..data.volume import Volume
from ..engine.metrics import label_volumes
from ..files import atomic_write
from .evaluation import check_declared, check_same_grid, score_cases

REPORT_COLUMNS = ("case", "label", "value", "voxels", "volume_ml", "dice", "hd95")


def volume_report(cases: Iterable[tuple[str, Volume, Optional[Volume]]], labels: dict[int, str], *,
                  ignore_label: Optional[int] = None) -> list[dict]:
    """The report's rows: for each case, one per foreground label (see the module docstring).

    Args:
        cases: (case name, its label map (Z, Y, X), its reference label map on the same grid or ``None``).
        labels: the classes, value -> name, background (0) included.
        ignore_label: nnU-Net v2's ``ignore`` label of the references: its voxels are left out of Dice and HD95.

    Returns:
        one dict per row with the keys of :data:`REPORT_COLUMNS`; ``dice`` and ``hd95`` are ``None`` where
        undefined or without a reference.

    Raises:
        InputError: a reference lies on another grid than its label map, or a map holds an undeclared value
            (:func:`check_reference`).
    """
    rows = []
    for case, segmentation, reference in cases:
        scores = {}
        if reference is not None:
            check_reference(case, segmentation, reference, labels, ignore_label)
            scores = score_cases([(reference, segmentation)], labels, ignore_label=ignore_label,
                                 references_given=True)["cases"][0]
        volumes = label_volumes(segmentation.array, segmentation.spacing, labels)
        for value in sorted(labels):
            if value == 0:
                continue
            name = labels[value]
            rows.append({"case": case, "label": name, "value": value, "voxels": volumes[name]["voxels"],
                         "volume_ml": volumes[name]["ml"], "dice": scores["dice"][name] if scores else None,
                         "hd95": scores["hd95"][name] if scores else None})
    return rows


def write_volume_report(rows: list[dict], path: str | os.PathLike) -> Path:
    """Write the rows of :func:`volume_report` as CSV, atomically: a header of :data:`REPORT_COLUMNS`, numbers to 6
    significant digits, an empty cell for ``None``."""
    with atomic_write(path) as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(REPORT_COLUMNS)
        for row in rows:
            writer.writerow([_cell(row[column]) for column in REPORT_COLUMNS])
    return Path(path)


def _cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def check_reference(case: str, image: Volume, reference: Volume, labels: dict[int, str],
                    ignore_label: Optional[int] = None) -> None:
    """Refuse, in one line, a reference that cannot score the segmentation of ``case``: one on another grid (shape
    or affine) than ``image`` (the case's image or its label map), or holding a value ``labels`` does not declare
    (besides ``ignore_label``). ``segment --report`` calls it on every case before segmenting any."""
    check_same_grid(reference, image, f"{reference.path or 'the reference'}", f"the segmentation of case '{case}'",
                    "give a reference on the image's own grid")
    check_declared(reference, labels, ignore_label, str(reference.path or f"the reference of case '{case}'"),
                   reference=True)
