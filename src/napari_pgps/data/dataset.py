"""Datasets of labelled volumes: the Decathlon and nnU-Net v2 raw layouts.

Decathlon: ``dataset.json`` with ``labels`` and ``training`` entries,
``imagesTr/CASE.nii.gz`` and ``labelsTr/CASE.nii.gz``.
nnU-Net v2: ``dataset.json`` with ``channel_names``, ``labels`` (name -> value)
and ``file_ending``; ``imagesTr/CASE_0000.nii.gz`` and ``labelsTr/CASE.nii.gz``.

Cases are validated as they load (see :func:`check_case`) so a problem is
reported with the file it comes from before anything is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..errors import InputError
from .volume import Volume, case_name, is_volume_file, read_volume

AFFINE_TOLERANCE = 1e-3


@dataclass
class Case:
    """One labelled (or unlabelled) volume of a dataset.

    Attributes:
        name: the case identifier (file name without suffix and channel tag).
        image: the intensities, array (Z, Y, X) float32.
        labels: the label map, array (Z, Y, X) integer, or ``None``.
    """

    name: str
    image: Volume
    labels: Optional[Volume] = None


@dataclass
class CaseFiles:
    name: str
    image: Path
    labels: Optional[Path]


@dataclass
class DatasetInfo:
    """What ``dataset.json`` says: label names and modality."""

    root: Path
    labels: dict[int, str]
    modality: str
    files: list[CaseFiles]


def read_dataset_info(root: str | Path) -> DatasetInfo:
    """Read ``dataset.json`` and list the case files of a dataset folder.

    Raises:
        InputError: missing folder or ``dataset.json``, unreadable JSON, or no case.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: dataset folder not found.")
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise InputError(
            f"{meta_path}: not found. A dataset folder needs dataset.json, imagesTr/ and labelsTr/ "
            "(Medical Segmentation Decathlon or nnU-Net v2 raw layout)."
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{meta_path}: not valid JSON ({exc}).") from None
    if not isinstance(meta, dict):
        raise InputError(f"{meta_path}: expected a JSON object.")
    labels = _parse_labels(meta.get("labels"), meta_path)
    modality = _parse_modality(meta)
    if "channel_names" in meta or "file_ending" in meta:
        files = _nnunet_files(root, meta, meta_path)
    else:
        files = _decathlon_files(root, meta)
    if not files:
        raise InputError(f"{root}: the dataset holds no training case (imagesTr/ is empty or missing).")
    return DatasetInfo(root=root, labels=labels, modality=modality, files=files)


def _parse_labels(raw: object, where: Path) -> dict[int, str]:
    if not isinstance(raw, dict) or not raw:
        raise InputError(f"{where}: 'labels' is missing; it must map label values to names.")
    labels: dict[int, str] = {}
    for key, value in raw.items():
        # Decathlon: {"0": "background"}; nnU-Net v2: {"background": 0}
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number, name = value, key
        else:
            number, name = key, value
        try:
            labels[int(number)] = str(name)
        except (TypeError, ValueError):
            raise InputError(f"{where}: label entry {key!r}: {value!r} is not a value and a name.") from None
    if 0 not in labels:
        labels[0] = "background"
    return dict(sorted(labels.items()))


def _parse_modality(meta: dict) -> str:
    channels = meta.get("channel_names") or meta.get("modality") or {}
    if isinstance(channels, dict) and channels:
        return str(next(iter(channels.values())))
    return "unknown"


def _decathlon_files(root: Path, meta: dict) -> list[CaseFiles]:
    files = []
    entries = meta.get("training")
    if isinstance(entries, list) and entries:
        for entry in entries:
            if not isinstance(entry, dict) or "image" not in entry:
                raise InputError(f"{root / 'dataset.json'}: training entry {entry!r} has no 'image'.")
            image = _resolve(root, str(entry["image"]))
            label = entry.get("label")
            files.append(CaseFiles(case_name(image), image, _resolve(root, str(label)) if label else None))
        return sorted(files, key=lambda f: f.name)
    for image in sorted(p for p in (root / "imagesTr").glob("*") if is_volume_file(p)):
        label = root / "labelsTr" / image.name
        files.append(CaseFiles(case_name(image), image, label if label.exists() else None))
    return files


def _resolve(root: Path, relative: str) -> Path:
    return root / (relative[2:] if relative.startswith("./") else relative)


def _nnunet_files(root: Path, meta: dict, where: Path) -> list[CaseFiles]:
    ending = str(meta.get("file_ending", ".nii.gz"))
    channels = meta.get("channel_names") or {"0": "image"}
    if len(channels) != 1:
        raise InputError(f"{where}: {len(channels)} input channels are declared; napari-pgps trains on one channel.")
    files = []
    for image in sorted((root / "imagesTr").glob(f"*_0000{ending}")):
        name = image.name[: -len(f"_0000{ending}")]
        label = root / "labelsTr" / f"{name}{ending}"
        files.append(CaseFiles(name, image, label if label.exists() else None))
    return files


def check_case(image: Volume, labels: Optional[Volume], declared: Optional[dict[int, str]] = None) -> None:
    """Check that an image and its label map belong together.

    Raises:
        InputError: shapes or affines differ, or labels hold undeclared values.
    """
    if labels is None:
        return
    if image.shape != labels.shape:
        raise InputError(
            f"{labels.path}: label shape {labels.shape} (Z, Y, X) differs from the image's {image.shape} "
            f"({image.path}); image and labels must cover the same voxels."
        )
    if not np.allclose(image.affine, labels.affine, atol=AFFINE_TOLERANCE):
        raise InputError(
            f"{labels.path}: its affine differs from the image's ({image.path}); image and labels must share "
            f"their geometry. Image affine:\n{np.round(image.affine, 4)}\nlabel affine:\n{np.round(labels.affine, 4)}"
        )
    if declared is not None:
        present = np.unique(labels.array)
        unknown = sorted(int(v) for v in present if int(v) not in declared)
        if unknown:
            raise InputError(
                f"{labels.path}: label value(s) {unknown} are not declared in dataset.json "
                f"(declared: {sorted(declared)}); declare them or fix the label map."
            )


def load_cases(
    info: DatasetInfo,
    *,
    require_labels: bool = True,
    max_cases: Optional[int] = None,
    names: Optional[Sequence[str]] = None,
    progress: Optional[Callable[[int, int], None]] = None,
) -> list[Case]:
    """Read and check the cases of a dataset.

    Args:
        info: from :func:`read_dataset_info`.
        require_labels: a case without a label file is an error when true, skipped otherwise.
        max_cases: keep the first N cases (sorted by name).
        names: keep only these cases.
        progress: called as ``progress(done, total)`` after each case.
    """
    files = [f for f in info.files if names is None or f.name in set(names)]
    if max_cases is not None:
        files = files[:max_cases]
    cases = []
    for index, entry in enumerate(files):
        if entry.labels is None:
            if require_labels:
                raise InputError(f"{entry.image}: no label file for case '{entry.name}' in {info.root / 'labelsTr'}.")
            continue
        image = read_volume(entry.image, kind="image")
        labels = read_volume(entry.labels, kind="labels")
        check_case(image, labels, info.labels)
        cases.append(Case(entry.name, image, labels))
        if progress is not None:
            progress(index + 1, len(files))
    if not cases:
        raise InputError(f"{info.root}: the dataset holds no labelled case.")
    return cases


@dataclass
class TrainingSet:
    """Labelled cases with the dataset's label names (value -> name) and modality."""

    cases: list[Case]
    labels: dict[int, str]
    modality: str = "unknown"


def load_training_set(
    root: str | Path, max_cases: Optional[int] = None, progress: Optional[Callable[[int, int], None]] = None
) -> TrainingSet:
    """Read and check every labelled case of a dataset folder."""
    info = read_dataset_info(root)
    cases = load_cases(info, require_labels=True, max_cases=max_cases, progress=progress)
    return TrainingSet(cases=cases, labels=info.labels, modality=info.modality)


def label_index_lookup(labels: dict[int, str]) -> np.ndarray:
    """An array mapping each declared label value to its index 0..K-1 (sorted by value): ``lookup[label_map]``."""
    values = sorted(labels)
    lookup = np.zeros(max(values) + 1, dtype=np.int64)
    lookup[values] = np.arange(len(values))
    return lookup


def split_cases(names: Sequence[str], validation_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A reproducible train/validation split of case names.

    The names are sorted, shuffled with ``seed`` and the first
    ``round(n * validation_fraction)`` (at least 1 when there are 2 or more
    cases and the fraction is positive) become the validation cases.

    Returns:
        (training names, validation names), each sorted.
    """
    ordered = sorted(names)
    if not 0.0 <= validation_fraction < 1.0:
        raise InputError(f"validation fraction {validation_fraction} must be in [0, 1).")
    n_val = int(round(len(ordered) * validation_fraction))
    if validation_fraction > 0 and len(ordered) >= 2:
        n_val = min(max(n_val, 1), len(ordered) - 1)
    order = np.random.default_rng(seed).permutation(len(ordered))
    validation = sorted(ordered[i] for i in order[:n_val])
    training = sorted(ordered[i] for i in order[n_val:])
    return training, validation
