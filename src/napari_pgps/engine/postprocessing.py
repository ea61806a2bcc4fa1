"""Post-processing: keeping the largest connected component, where the validation predictions say it helps.

nnU-Net's rule, re-stated: on a model's validation predictions (or the pooled
predictions of a cross-validation's folds), first try keeping only the largest
connected component of the foreground (all labels together); keep that step if
the mean Dice over labels and cases rises. Then, for each label, try keeping
only that label's largest component; keep it for the labels whose mean Dice
rises. The choice is stored with the model (``postprocessing.json`` beside its
checkpoints) and applied by ``segment``, ``evaluate`` and the Segment widget
unless switched off. Components are 26-connected.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..files import write_text_atomically
from .file_names import POSTPROCESSING_FILE
from .metrics import class_indices, dice_per_label


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a bool mask (Z, Y, X); the empty mask stays empty."""
    from scipy.ndimage import label

    components, count = label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if count <= 1:
        return mask.copy()
    sizes = np.bincount(components.ravel())[1:]
    return components == 1 + int(np.argmax(sizes))


@dataclass
class Postprocessing:
    """Which largest-component steps a model's segmentations get (none by default)."""

    foreground: bool = False
    """Keep only the largest component of all foreground labels together."""
    labels: list[int] = field(default_factory=list)
    """Label values whose largest component alone is kept."""

    def apply(self, label_map: np.ndarray) -> np.ndarray:
        """A copy of a label map (values, Z, Y, X) with the chosen steps applied."""
        out = np.array(label_map, copy=True)
        if self.foreground:
            out[(out > 0) & ~largest_component(out > 0)] = 0
        for value in self.labels:
            present = out == value
            out[present & ~largest_component(present)] = 0
        return out

    def describe(self, names: dict[int, str]) -> str:
        steps = (["largest foreground component"] if self.foreground else []) + [
            f"largest {names.get(v, v)} component" for v in self.labels]
        return ", ".join(steps) if steps else "none"

    def save(self, folder: str | Path, evidence: dict) -> Path:
        """Write ``postprocessing.json`` (the choice and the Dice that decided it) into a run folder."""
        path = Path(folder) / POSTPROCESSING_FILE
        write_text_atomically(path, json.dumps({**asdict(self), "evidence": evidence}, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> Optional["Postprocessing"]:
        """The choice kept in a run folder, or ``None``."""
        path = Path(folder) / POSTPROCESSING_FILE
        if not path.is_file():
            return None
        values = json.loads(path.read_text())
        return cls(bool(values.get("foreground", False)), [int(v) for v in values.get("labels", [])])


def choose_postprocessing(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]], labels: dict[int, str], ignore_label: Optional[int] = None,
) -> tuple[Postprocessing, dict]:
    """Decide the steps on (prediction, reference) label maps (values, Z, Y, X) of validation cases.

    Args:
        labels: the classes, value -> name, background (0) included.
        ignore_label: the value of nnU-Net v2's ``ignore`` label in the references: those voxels are left out.

    Returns:
        (the choice, the evidence: mean Dice per label before and after each step tried).
    """
    values = sorted(labels)

    def case_dice(prediction: np.ndarray, reference: np.ndarray) -> np.ndarray:
        truth, ignored = class_indices(reference, labels, ignore_label)
        return dice_per_label(class_indices(prediction, labels)[0], truth, len(values), ignored)

    def mean_dice(predictions) -> np.ndarray:
        per_case = np.vstack([case_dice(p, r) for p, (_, r) in zip(predictions, pairs)])
        with np.errstate(all="ignore"):
            return np.nanmean(per_case, axis=0)

    predictions = [p for p, _ in pairs]
    before = mean_dice(predictions)
    chosen = Postprocessing()
    evidence = {"before": _named(before, values, labels)}
    trial = [Postprocessing(foreground=True).apply(p) for p in predictions]
    after = mean_dice(trial)
    evidence["foreground"] = _named(after, values, labels)
    if np.nanmean(after) > np.nanmean(before):
        chosen.foreground, predictions, before = True, trial, after
    for index, value in enumerate(values[1:]):
        trial = [Postprocessing(labels=[value]).apply(p) for p in predictions]
        after = mean_dice(trial)
        evidence[labels[value]] = _named(after, values, labels)
        if after[index] > before[index]:
            chosen.labels.append(value)
            predictions, before = trial, after
    return chosen, evidence


def _named(dice: np.ndarray, values: list[int], labels: dict[int, str]) -> dict[str, Optional[float]]:
    return {labels[v]: (float(d) if np.isfinite(d) else None) for v, d in zip(values[1:], dice)}
